"""Sample data: a few small, varied images with region masks and a manifest that lists them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["make_sample_images"]


def make_sample_images(directory: str | os.PathLike[str], n: int = 8, seed: int = 0) -> Path:
    """Write ``n`` small, varied images, region masks and a CSV manifest; return the CSV path.

    The images cycle through: RGB PNG, RGB JPEG stored rotated with EXIF orientation 6, L
    PNG, P PNG with a transparent palette entry, RGBA PNG, 16-bit (I;16) PNG, CMYK JPEG and
    LA PNG. Each shows a red circle or square (``label``) on a light or dark background
    (group ``background``) from one of two sites (group ``site``); ``mask`` is the shape's
    region. Load it with ``load_manifest(path, columns=SAMPLE_COLUMNS)``.

    Args:
        directory: output directory (created if missing).
        n: number of images (>= 1).
        seed: random seed for shape positions and sizes and site assignment.
    """
    from PIL import Image, ImageDraw

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = Path(directory)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = 40, 32
    backgrounds = {"light": (220, 220, 200), "dark": (40, 40, 60)}
    rows = []
    for i in range(n):
        label = ("circle", "square")[i % 2]
        bg = ("light", "dark")[(i // 2) % 2]
        site = ("a", "b")[int(rng.integers(0, 2))]
        r = int(rng.integers(6, 10))
        cx, cy = int(rng.integers(r + 1, w - r - 1)), int(rng.integers(r + 1, h - r - 1))
        img = Image.new("RGB", (w, h), backgrounds[bg])
        mask = Image.new("L", (w, h), 0)
        box = (cx - r, cy - r, cx + r, cy + r)
        for canvas, fill in ((ImageDraw.Draw(img), (200, 30, 30)), (ImageDraw.Draw(mask), 255)):
            if label == "circle":
                canvas.ellipse(box, fill=fill)
            else:
                canvas.rectangle(box, fill=fill)
        variant = i % 8
        stem = f"img_{i:03d}"
        if variant == 0:
            name = f"{stem}.png"
            img.save(out / "images" / name)
        elif variant == 1:
            name = f"{stem}.jpg"
            exif = Image.Exif()
            exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
            img.transpose(Image.Transpose.ROTATE_90).save(out / "images" / name, quality=95, exif=exif.tobytes())
        elif variant == 2:
            name = f"{stem}.png"
            img.convert("L").save(out / "images" / name)
        elif variant == 3:
            name = f"{stem}.png"
            pal = img.quantize(colors=8, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            corner = pal.getpixel((0, 0))
            pal.save(out / "images" / name, transparency=int(corner))
        elif variant == 4:
            name = f"{stem}.png"
            rgba = img.convert("RGBA")
            rgba.putalpha(Image.new("L", (w, h), 255 if bg == "light" else 230))
            rgba.save(out / "images" / name)
        elif variant == 5:
            name = f"{stem}.png"
            g16 = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
            Image.fromarray(g16).save(out / "images" / name)
        elif variant == 6:
            name = f"{stem}.jpg"
            img.convert("CMYK").save(out / "images" / name, quality=95)
        else:
            name = f"{stem}.png"
            la = img.convert("LA")
            la.putalpha(Image.new("L", (w, h), 255))
            la.save(out / "images" / name)
        mask_name = f"{stem}_mask.png"
        mask.save(out / "masks" / mask_name)
        rows.append({"path": f"images/{name}", "label": label, "background": bg, "site": site,
                     "mask": f"masks/{mask_name}"})
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest

