"""Small, fast image rendering for the dashboard: thumbnails and map overlays as PNG bytes.

Maps are drawn as everywhere else (:mod:`audit.viz.maps`): one colour map (``MAP_CMAP``), on the
patch grid as it is (one block per patch, boundaries drawn; ``smooth=True`` interpolates instead),
over the image in grey, with a colour bar under the map that names its scale. Maps are stored raw
on the patch grid; they are normalised here for display only. Two display scales: ``"image"``
(each map's own min..max, shows where a map puts its mass) and ``"run"`` (one fixed range per
method, the 1st..99th percentile over every stored map of the run, so that maps of different
images and groups stay comparable).
"""

from __future__ import annotations

import functools
import io
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from audit.viz.maps import MAP_ALPHA, colour, display_range, fmt_value, scale_label
from audit.viz.maps import overlay as _overlay_rgb

DisplayScale = Literal["image", "run"]
BAR_H = 8  # px, height of the colour gradient under a map


def png_bytes(img: Image.Image) -> bytes:
    """Encode a PIL image as PNG (fast settings: small images, compress level 1)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def fit(img: Image.Image, size: int) -> Image.Image:
    """Resize so that the longer side is ``size`` pixels (bilinear), keeping the aspect ratio."""
    w, h = img.size
    s = size / max(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)


def normalise_for_display(m: np.ndarray, *, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """``(gh, gw)`` raw map -> values in [0, 1]; ``lo``/``hi`` default to the map's own range.

    A constant map (``hi <= lo``) becomes all zeros.
    """
    from audit.viz.maps import display_normalise

    return display_normalise(m, lo=lo, hi=hi)


@functools.cache
def _font(size: int) -> Any:
    return ImageFont.load_default(size=size)


def colourbar(img: Image.Image, lo: float, hi: float, label: str | None) -> Image.Image:
    """``img`` with a colour bar under it: the gradient from ``lo`` to ``hi`` (raw map units), the two
    values at its ends and, on a line of its own, ``label`` (what the scale is)."""
    w = img.width
    font = _font(11 if w >= 150 else 9)
    line = 14 if w >= 150 else 11
    ramp = (colour(np.linspace(0, 1, w))[None, :, :] * 255).astype(np.uint8).repeat(BAR_H, 0)  # (BAR_H, w, 3)
    out = Image.new("RGB", (w, img.height + 3 + BAR_H + line * (2 if label else 1) + 2), (255, 255, 255))
    out.paste(img, (0, 0))
    out.paste(Image.fromarray(ramp), (0, img.height + 3))
    draw = ImageDraw.Draw(out)
    y = img.height + 3 + BAR_H + 1
    right = fmt_value(hi)
    draw.text((0, y), fmt_value(lo), fill=(40, 40, 40), font=font)
    draw.text((w - draw.textlength(right, font=font), y), right, fill=(40, 40, 40), font=font)
    if label:
        label = label.replace("\u2013", "-")  # the built-in font has no en dash
        while label and draw.textlength(label, font=font) > w:  # a narrow thumbnail: cut, never overflow
            label = label[:-2] + "…"
        draw.text(((w - draw.textlength(label, font=font)) / 2, y + line), label, fill=(90, 90, 90), font=font)
    return out


def overlay(img: Image.Image, grid_map: np.ndarray, *, size: int, alpha: float = MAP_ALPHA,
            lo: float | None = None, hi: float | None = None, smooth: bool = False,
            scale: DisplayScale | None = None, method: str | None = None) -> Image.Image:
    """A patch-grid map ``(gh, gw)`` over ``img`` (grey) at ``size`` pixels (longer side).

    The map is normalised to [0, 1] over ``lo``..``hi`` (default: its own range), drawn on its
    patch grid (``smooth``: bilinear) in ``MAP_CMAP``. With ``scale`` a colour bar is added under
    it, labelled with that scale (:func:`audit.viz.maps.scale_label`).
    """
    lo_, hi_ = display_range(grid_map, lo=lo, hi=hi)
    base = np.asarray(img.convert("RGB"))
    rgb = _overlay_rgb(base, grid_map, alpha=alpha, lo=lo_, hi=hi_, smooth=smooth, size=size)
    out = Image.fromarray((rgb * 255).round().astype(np.uint8))
    return colourbar(out, lo_, hi_, scale_label(scale, method)) if scale else out


def heat_only(grid_map: np.ndarray, *, size: int, lo: float | None = None, hi: float | None = None,
              smooth: bool = False, scale: DisplayScale | None = None, method: str | None = None) -> Image.Image:
    """A map ``(gh, gw)`` alone as a coloured image of ``size`` pixels (patch grid; ``smooth``: bilinear)."""
    lo_, hi_ = display_range(grid_map, lo=lo, hi=hi)
    rgb = _overlay_rgb(None, grid_map, lo=lo_, hi=hi_, smooth=smooth, size=size)
    out = Image.fromarray((rgb * 255).round().astype(np.uint8))
    return colourbar(out, lo_, hi_, scale_label(scale, method)) if scale else out


def placeholder(size: int, text_colour: tuple[int, int, int] = (200, 60, 60)) -> Image.Image:
    """A grey square with a red cross, shown where an image cannot be decoded."""
    a = np.full((size, size, 3), 235, dtype=np.uint8)
    idx = np.arange(size)
    for d in (-1, 0, 1):
        j = np.clip(idx + d, 0, size - 1)
        a[idx, j] = text_colour
        a[idx, size - 1 - j] = text_colour
    return Image.fromarray(a)
