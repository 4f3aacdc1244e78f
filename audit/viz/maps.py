"""Explanation maps for display: one colour map, the patch grid shown as it is, a stated scale.

Every surface that draws a map (report figures, the dashboard, ``vision-audit explain``) uses
:data:`MAP_CMAP` and :func:`overlay`, so a map looks the same wherever it is read:

- the map is drawn on its **patch grid** (nearest: one flat block per patch, with the patch
  boundaries drawn), so a 4×4 grid looks like 16 blocks; ``smooth=True`` interpolates bilinearly
  instead (an option, never the default);
- the image under the map is shown in **grey**, so the only colour on an overlay is the map's;
- the **scale** is either the map's own min..max (``"image"``) or one fixed range per method over
  the run (``"run"``: the 1st..99th percentile of every stored value, :func:`run_range`); the colour
  bar of every panel names which (:func:`scale_label`).

Maps are stored raw; normalisation happens here, for display only. This module needs numpy and
(lazily) matplotlib's colour maps, never pyplot.

Example:
    >>> rgb = overlay(image, grid_map, size=256)          # doctest: +SKIP
    >>> lo, hi = run_range(run.maps("gae")[0])            # doctest: +SKIP
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np

MAP_CMAP = "viridis"  # perceptually uniform, monotonic in lightness: reads in greyscale and in print
MAP_ALPHA = 0.65  # opacity of the map over the (grey) image: strong enough for a printed page
GRID_LINE = 0.55  # patch boundaries: blend towards white by this much
MapScale = Literal["image", "run"]


@functools.cache
def _cmap() -> Any:
    from matplotlib import colormaps

    return colormaps[MAP_CMAP]


def colour(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB in [0, 1] with :data:`MAP_CMAP` (shape ``(..., 3)``)."""
    return np.asarray(_cmap()(np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)))[..., :3]


def scale_label(scale: MapScale, method: str | None = None) -> str:
    """What the colour bar of a map drawn at ``scale`` spans, in words (short: it sits under a panel)."""
    if scale == "run":
        return f"run-wide scale{f' ({method})' if method else ''}, 1–99th pct"
    return "per-image scale (min–max)"


def display_range(m: np.ndarray, *, lo: float | None = None, hi: float | None = None) -> tuple[float, float]:
    """``(lo, hi)`` of the display scale: given bounds, else the map's own finite min and max."""
    a = np.asarray(m, dtype=np.float32)
    fin = a[np.isfinite(a)]
    lo_ = float(fin.min()) if lo is None and fin.size else (0.0 if lo is None else float(lo))
    hi_ = float(fin.max()) if hi is None and fin.size else (1.0 if hi is None else float(hi))
    return lo_, hi_


def run_range(maps: np.ndarray) -> tuple[float, float]:
    """One display range for every map of a method: the 1st and 99th percentile of all finite values."""
    a = np.asarray(maps, dtype=np.float32)
    fin = a[np.isfinite(a)]
    if not fin.size:
        return 0.0, 1.0
    lo, hi = np.percentile(fin, [1, 99])
    return float(lo), float(hi)


def display_normalise(m: np.ndarray, *, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Scale to [0, 1] for display only (default: the map's own min..max; a constant map -> zeros).

    The raw map is not changed: runs keep raw maps, and only what is drawn is normalised.
    """
    a = np.asarray(m, dtype=np.float32)
    lo_, hi_ = display_range(a, lo=lo, hi=hi)
    if not np.isfinite(lo_) or not np.isfinite(hi_) or hi_ <= lo_:
        return np.zeros_like(a)
    return np.clip((a - lo_) / (hi_ - lo_), 0.0, 1.0)


def _cells(n_out: int, n_in: int) -> np.ndarray:
    """For each output pixel, the grid cell it lies in (nearest: equal blocks up to rounding)."""
    return np.minimum((np.arange(n_out) * n_in) // max(1, n_out), n_in - 1)


def upsample_map(m: np.ndarray, size: tuple[int, int], *, smooth: bool = False) -> np.ndarray:
    """A patch-grid map ``(gh, gw)`` at ``size = (H, W)`` for display.

    Nearest by default (one flat block per patch: the grid is shown as coarse as it is);
    ``smooth=True``: bilinear interpolation between patch centres.
    """
    a = np.asarray(m, dtype=np.float32)
    h, w = int(size[0]), int(size[1])
    if smooth:
        from PIL import Image

        return np.asarray(Image.fromarray(a, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    return a[_cells(h, a.shape[0])][:, _cells(w, a.shape[1])]


def patch_boundaries(grid: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rows and columns (at ``size = (H, W)``) where one patch ends and the next begins."""
    rows, cols = _cells(int(size[0]), int(grid[0])), _cells(int(size[1]), int(grid[1]))
    return np.flatnonzero(np.diff(rows)) + 1, np.flatnonzero(np.diff(cols)) + 1


def _as_rgb(image: Any) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype == np.uint8 or (img.size and float(np.nanmax(img)) > 1.0):
        img = img.astype(np.float32) / 255.0
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    return img[..., :3]


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if img.shape[:2] == tuple(size):
        return img
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def display_size(shape: tuple[int, ...], size: int | None) -> tuple[int, int]:
    """``(H, W)`` with the longer side ``size`` (``None``: the image's own size)."""
    h, w = int(shape[0]), int(shape[1])
    if size is None:
        return h, w
    s = size / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def overlay(image: Any, m: np.ndarray, *, alpha: float = MAP_ALPHA, smooth: bool = False, grid: bool = True,
            lo: float | None = None, hi: float | None = None, size: int | None = None,
            grey: bool = True) -> np.ndarray:
    """RGB ``(H, W, 3)`` float in [0, 1]: a patch-grid map ``(gh, gw)`` over an image.

    Args:
        image: ``(h, w, 3)`` uint8 or float image (or ``(h, w)`` grey); ``None`` draws the map alone.
        m: raw map on the patch grid.
        alpha: opacity of the map (1.0: the map alone).
        smooth: bilinear instead of nearest (see :func:`upsample_map`).
        grid: draw the patch boundaries (nearest only).
        lo, hi: display range (default: the map's own min..max; see :func:`display_normalise`).
        size: longer side of the result in pixels (default: the image's size).
        grey: show the image in grey, so that the only colour is the map's.
    """
    a = np.asarray(m, dtype=np.float32)
    if image is None:
        base = np.full((*display_size(a.shape, size or 8 * max(a.shape)), 3), 0.5, np.float32)
        alpha = 1.0
    else:
        img = _as_rgb(image)
        base = _resize(img, display_size(img.shape, size))
    if grey:
        lum = base @ np.asarray([0.299, 0.587, 0.114], np.float32)
        base = np.repeat((0.25 + 0.75 * lum)[..., None], 3, -1)
    hw = base.shape[:2]
    heat = colour(upsample_map(display_normalise(a, lo=lo, hi=hi), hw, smooth=smooth))
    out = (1.0 - alpha) * base + alpha * heat
    if grid and not smooth:
        ys, xs = patch_boundaries(a.shape, hw)
        out[ys, :] = (1 - GRID_LINE) * out[ys, :] + GRID_LINE
        out[:, xs] = (1 - GRID_LINE) * out[:, xs] + GRID_LINE
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def fmt_value(v: float) -> str:
    """A colour-bar tick: two significant digits (scientific notation only for very small or large values)."""
    if not np.isfinite(v):
        return "n/a"
    a = abs(float(v))
    if a == 0:
        return "0"
    if a >= 1000 or a < 0.001:
        return f"{v:.1e}"
    return f"{v:.0f}" if a >= 10 else f"{v:.2g}"


def prediction_line(*, target: str | None = None, prediction: str | None = None, score: float | None = None,
                    target_score: float | None = None) -> str:
    """What a map explains, and what the model predicted: ``"target square = prediction (p 0.89)"``.

    ``target`` is the explained class (or a prompt, already quoted by the caller); ``score`` the
    probability of the predicted class; ``target_score`` that of the target when it is another class.
    Parts that are not known are left out (never made up); nothing known gives ``""``.
    """
    p = f" (p\u00a0{score:.2f})" if score is not None and np.isfinite(score) else ""  # kept on one line
    if target is not None and prediction is not None and str(target) == str(prediction):
        return f"target {target} = prediction{p}"
    parts = []
    if target is not None:
        tp = f" (p\u00a0{target_score:.2f})" if target_score is not None and np.isfinite(target_score) else ""
        parts.append(f"target {target}{tp}")
    if prediction is not None:
        parts.append(f"predicted {prediction}{p}")
    return "; ".join(parts)


__all__ = ["MAP_ALPHA", "MAP_CMAP", "MapScale", "colour", "display_normalise", "display_range", "display_size",
           "fmt_value", "overlay", "patch_boundaries", "prediction_line", "run_range", "scale_label",
           "upsample_map"]


ARTIFACT_COLOUR = (220, 30, 30)  # outline of a high-norm artefact token's patch cell (audit.explain.artifacts)


def outline_cells(rgb: np.ndarray, cells: list[tuple[int, int]], grid: tuple[int, int], *,
                  height: int | None = None, colour: tuple[int, int, int] = ARTIFACT_COLOUR,
                  width: int = 2) -> np.ndarray:
    """A copy of ``rgb`` (``(H, W, 3)`` uint8) with square outlines around the patch-grid ``cells``
    (``(row, col)``). The map occupies the top ``height`` rows (default all: an overlay with a colour
    bar under it passes the map's own height).

    Raises:
        ValueError: a cell outside ``grid``.
    """
    gh, gw = grid
    out = np.array(rgb, copy=True)
    h = int(height or out.shape[0])
    w = out.shape[1]
    ys = np.round(np.linspace(0, h, gh + 1)).astype(int)
    xs = np.round(np.linspace(0, w, gw + 1)).astype(int)
    for r, c in cells:
        if not (0 <= r < gh and 0 <= c < gw):
            raise ValueError(f"cell ({r}, {c}) outside the {gh}x{gw} patch grid")
        y0, y1, x0, x1 = ys[r], max(ys[r + 1], ys[r] + 1), xs[c], max(xs[c + 1], xs[c] + 1)
        t = max(1, min(width, (y1 - y0) // 2, (x1 - x0) // 2))
        for sl in ((slice(y0, y0 + t), slice(x0, x1)), (slice(y1 - t, y1), slice(x0, x1)),
                   (slice(y0, y1), slice(x0, x0 + t)), (slice(y0, y1), slice(x1 - t, x1))):
            out[sl] = colour
    return out


def artifact_legend(n_tokens: int, attention_share: float, *, pooled: str = "CLS") -> str:
    """Legend line under a map with artefact tokens outlined."""
    return (f"□ high-norm artefact token (n = {n_tokens}, {attention_share:.0%} of the {pooled} attention)")
