"""Small, fast image rendering for the dashboard: thumbnails and map overlays as PNG bytes.

Maps are stored raw on the patch grid; they are normalised here for display only. Two display
scales: ``"image"`` (each map's own min..max, shows where a map puts its mass) and ``"run"``
(one fixed range per method, the 1st..99th percentile over every stored map of the run, so that
maps of different images and groups stay comparable).
"""

from __future__ import annotations

import functools
import io
from typing import Any, Literal

import numpy as np
from PIL import Image

DisplayScale = Literal["image", "run"]


@functools.cache
def _cmap() -> Any:
    """The jet colour map (matplotlib imported on first use: the first page does not need it)."""
    from matplotlib import colormaps

    return colormaps["jet"]


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
    m = np.asarray(m, dtype=np.float32)
    lo = float(np.nanmin(m)) if lo is None else float(lo)
    hi = float(np.nanmax(m)) if hi is None else float(hi)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros_like(m)
    return np.clip((m - lo) / (hi - lo), 0.0, 1.0)


def overlay(img: Image.Image, grid_map: np.ndarray, *, size: int, alpha: float = 0.5,
            lo: float | None = None, hi: float | None = None) -> Image.Image:
    """Blend a patch-grid map ``(gh, gw)`` over ``img`` at ``size`` pixels (longer side).

    The map is normalised to [0, 1] (see :func:`normalise_for_display`), upsampled bilinearly
    to the image and coloured with the jet colour map.
    """
    base = fit(img.convert("RGB"), size)
    w, h = base.size
    norm = normalise_for_display(grid_map, lo=lo, hi=hi)  # (gh, gw)
    up = np.asarray(Image.fromarray(norm.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR))
    heat = (_cmap()(np.clip(up, 0.0, 1.0))[..., :3] * 255.0).astype(np.float32)  # (h, w, 3)
    out = (1.0 - alpha) * np.asarray(base, dtype=np.float32) + alpha * heat
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def heat_only(grid_map: np.ndarray, *, size: int, lo: float | None = None, hi: float | None = None) -> Image.Image:
    """A map ``(gh, gw)`` as a coloured image of ``size`` pixels (nearest: one block per patch)."""
    gh, gw = grid_map.shape
    norm = normalise_for_display(grid_map, lo=lo, hi=hi)
    rgb = (_cmap()(norm)[..., :3] * 255).astype(np.uint8)
    s = size / max(gh, gw)
    return Image.fromarray(rgb).resize((max(1, round(gw * s)), max(1, round(gh * s))), Image.Resampling.NEAREST)


def placeholder(size: int, text_colour: tuple[int, int, int] = (200, 60, 60)) -> Image.Image:
    """A grey square with a red cross, shown where an image cannot be decoded."""
    a = np.full((size, size, 3), 235, dtype=np.uint8)
    idx = np.arange(size)
    for d in (-1, 0, 1):
        j = np.clip(idx + d, 0, size - 1)
        a[idx, j] = text_colour
        a[idx, size - 1 - j] = text_colour
    return Image.fromarray(a)
