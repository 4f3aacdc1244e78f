"""Per-image validity of explanation maps: NaN/Inf and constant maps are named, never drawn.

A map with NaN or Inf (an fp16 overflow, a NaN gradient) or with one value everywhere (no
signal, e.g. zero gradients from a saturated output) would render as a blank or uniform
heat map that a reader takes for a real, diffuse explanation. Every consumer (the
:class:`~audit.explain.Explanation`, the pipeline's explanation stage, the reports and the
dashboard) asks :func:`map_problem` first and shows the reason instead of a picture.
Numpy only, so the dashboard can use it without importing torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NONFINITE = "non-finite values (NaN/Inf) in the map: gradients or activations overflowed"
CONSTANT = "constant map: the method gave no signal for this image (e.g. zero gradients)"


def map_problem(m: Any) -> str:
    """``""`` for a usable map ``(gh, gw)``, else the reason it must not be shown or scored."""
    a = np.asarray(m, dtype=np.float64)
    if a.size == 0:
        return "empty map"
    if not np.isfinite(a).all():
        n_bad = int((~np.isfinite(a)).sum())
        return f"{NONFINITE} ({n_bad} of {a.size} cells)"
    lo, hi = float(a.min()), float(a.max())
    if hi - lo <= 1e-12 * max(1.0, abs(lo), abs(hi)):
        return f"{CONSTANT}; value {lo:.3g} everywhere"
    return ""


def map_problems(maps: Any) -> list[str]:
    """:func:`map_problem` for each map of a ``(B, gh, gw)`` batch (numpy or torch)."""
    if hasattr(maps, "detach"):
        maps = maps.detach().float().cpu().numpy()
    return [map_problem(m) for m in np.asarray(maps)]


def draw_problem(ax: Any, problem: str, *, image: Any = None, fontsize: float = 7) -> None:
    """Fill a matplotlib axis with why its map is not drawn, over the faded ``image`` if given."""
    if image is not None:
        ax.imshow(image, alpha=0.35)
    ax.text(0.5, 0.5, "no usable map:\n" + problem.split(":")[0], ha="center", va="center", fontsize=fontsize,
            color="#a40000", transform=ax.transAxes, wrap=True)
