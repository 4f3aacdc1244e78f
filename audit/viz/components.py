"""Where a finding is carried: the figure of one decomposed finding (tables ``components`` and
``component_maps`` of the ``components`` stage).

Left, a heads x layers heat map of each component's mean-ablation effect on the finding (the MLP of a
layer is an extra column, set apart); the top components are outlined and numbered by rank, so the
figure reads in greyscale, and their values are in the report's table. Right, for the top head, where
its pooled token looks in each of the two compared groups: the mean attention over the patch grid
(:data:`~audit.viz.maps.MAP_CMAP`, one block per patch, one shared scale for both groups so they can be
compared).

Example:
    >>> comp = run.table("components"); maps = run.table("component_maps")          # doctest: +SKIP
    >>> fig = components_figure(comp[comp.finding == ref], maps[maps.finding == ref],  # doctest: +SKIP
    ...                         attribute="background", groups=("dotted", "plain"))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from audit.viz.figures import _empty, _records
from audit.viz.maps import overlay

__all__ = ["component_grid", "components_figure", "head_map"]

EFFECT_CMAP = "RdBu_r"  # diverging: positive (carries the finding) red, negative blue, 0 white
WIDTH = 7.0  # inches: the PDF's text width (A4 less its margins); the figure is never wider
OTHER_GROUPS = ("rest", "target")
FONT = 6.5  # the smallest text of the figure (>= 6 pt on paper at its design size)


def component_grid(components: Any, *, value: str = "effect") -> tuple[list[int], list[int], bool, np.ndarray]:
    """``(layers, heads, has_mlp, grid)``: ``grid[i, j]`` is the ``value`` of head ``heads[j]`` of
    ``layers[i]``; with ``has_mlp`` the last column is the layer's MLP. Missing cells are NaN.

    Args:
        components: rows of table ``components`` for one finding (columns layer, head, kind, ``value``).
    """
    recs = _records(components)
    layers = sorted({int(r["layer"]) for r in recs})
    heads = sorted({int(r["head"]) for r in recs if int(r["head"]) >= 0})
    has_mlp = any(int(r["head"]) < 0 for r in recs)
    grid = np.full((len(layers), len(heads) + int(has_mlp)), np.nan)
    for r in recs:
        j = heads.index(int(r["head"])) if int(r["head"]) >= 0 else len(heads)
        v = r.get(value)
        grid[layers.index(int(r["layer"])), j] = np.nan if v is None else float(v)
    return layers, heads, has_mlp, grid


def head_map(maps: Any, component: str, group: str) -> tuple[np.ndarray, int, float] | None:
    """``(grid (rows, cols), n_images, prefix_share)`` of ``component`` in ``group`` from table
    ``component_maps`` rows, or None when it has no such map."""
    recs = [r for r in _records(maps) if str(r["component"]) == component and str(r["group"]) == group]
    if not recs:
        return None
    gh = max(int(r["row"]) for r in recs) + 1
    gw = max(int(r["col"]) for r in recs) + 1
    grid = np.full((gh, gw), np.nan, dtype=np.float32)
    for r in recs:
        grid[int(r["row"]), int(r["col"])] = float(r["value"])
    prefix = recs[0].get("prefix_share")
    return grid, int(recs[0].get("n_images") or 0), float(prefix) if prefix is not None else float("nan")


def _group_title(attribute: str, group: str) -> str:
    if group in OTHER_GROUPS:
        return f"{attribute}: all other images" if attribute else "all other images"
    return f"{attribute} = {group}" if attribute else group


def _heat(ax: Any, components: Any, *, top: int) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    recs = _records(components)
    layers, heads, has_mlp, grid = component_grid(recs)
    fin = grid[np.isfinite(grid)]
    vmax = float(np.abs(fin).max()) if fin.size and np.abs(fin).max() > 0 else 1.0
    cmap = colormaps[EFFECT_CMAP].with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=Normalize(-vmax, vmax), aspect="equal",
                   interpolation="nearest")
    labels = [f"H{h}" for h in heads] + (["MLP"] if has_mlp else [])
    ax.set_xticks(range(len(labels)), labels=labels, fontsize=FONT)
    ax.set_yticks(range(len(layers)), labels=[f"L{ly}" for ly in layers], fontsize=FONT)
    ax.tick_params(length=0, pad=2)
    for s in ax.spines.values():
        s.set_visible(False)
    # cell boundaries in white; the MLP column set apart by a thicker line
    for x in np.arange(-0.5, grid.shape[1], 1.0):
        ax.axvline(x, color="white", lw=2.4 if has_mlp and abs(x - (len(heads) - 0.5)) < 1e-9 else 0.6)
    for y in np.arange(-0.5, grid.shape[0], 1.0):
        ax.axhline(y, color="white", lw=0.6)
    ranked = sorted((r for r in recs if r.get("rank") is not None and int(r["rank"]) <= top),
                    key=lambda r: int(r["rank"]))
    for r in ranked:
        i = layers.index(int(r["layer"]))
        j = heads.index(int(r["head"])) if int(r["head"]) >= 0 else len(heads)
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=1.2))
        v = grid[i, j]
        dark = np.isfinite(v) and abs(v) / vmax > 0.6
        ax.text(j, i, str(int(r["rank"])), ha="center", va="center", fontsize=FONT + 0.5, fontweight="bold",
                color="white" if dark else "black")
    cb = ax.figure.colorbar(im, ax=ax, orientation="horizontal", fraction=0.08, pad=0.04, aspect=30, shrink=0.9)
    cb.ax.tick_params(labelsize=FONT, length=2, pad=1)
    cb.outline.set_linewidth(0.4)
    cb.set_label("mean-ablation effect on the finding (> 0: carries it)", fontsize=FONT)
    ax.set_title(f"effect per head and MLP (outlined: top {len(ranked)}, by rank)", fontsize=FONT + 0.5)


def components_figure(
    components: Any,
    maps: Any = None,
    *,
    attribute: str = "",
    groups: Sequence[str] = (),
    top: int = 5,
    width: float = WIDTH,
) -> Figure:
    """The figure of one finding: effect heat map (heads x layers, MLP last) and the top head's maps.

    Args:
        components: rows of table ``components`` for the finding (all components: the heat map shows
            every head of the decomposed layers).
        maps: rows of table ``component_maps`` for the finding (None / empty: heat map only).
        attribute: the group column, named in the map titles.
        groups: the two compared groups in their order (default: the order of ``maps``).
        top: how many components are outlined and numbered (the report tables the same number).
        width: the figure's width in inches.
    """
    recs = _records(components)
    if not recs:
        return _empty(Figure(figsize=(width * 0.5, 1.2), layout="constrained"), "no components to show")
    grid = component_grid(recs)[3]
    map_recs = _records(maps) if maps is not None else []
    head_rows = sorted((r for r in recs if int(r["head"]) >= 0), key=lambda r: int(r["rank"]))
    mapped = {str(r["component"]) for r in map_recs}
    top_head = next((str(r["component"]) for r in head_rows if str(r["component"]) in mapped), None)
    shown: list[tuple[str, tuple[np.ndarray, int, float]]] = []
    if top_head is not None:
        order = [str(g) for g in groups if any(str(r["group"]) == str(g) for r in map_recs)]
        order += [g for g in dict.fromkeys(str(r["group"]) for r in map_recs) if g not in order]
        for g in order[:2]:
            hm = head_map(map_recs, top_head, g)
            if hm is not None:
                shown.append((g, hm))

    ncols, nrows = grid.shape[1], grid.shape[0]
    cell = min(0.34, 3.9 / max(ncols, 1), 3.0 / max(nrows, 1))
    heat_w, heat_h = max(cell * ncols + 0.7, 2.9), cell * nrows + 1.05
    panel = 1.45
    side = bool(shown) and heat_w + len(shown) * panel + 0.3 <= width
    if not shown:
        fig = Figure(figsize=(min(width, max(heat_w, 3.2)), heat_h), layout="constrained")
        _heat(fig.add_subplot(), recs, top=top)
        return fig
    if side:
        fig = Figure(figsize=(width, max(heat_h, panel + 0.75)), layout="constrained")
        left, right = fig.subfigures(1, 2, width_ratios=[heat_w, width - heat_w], wspace=0.02)
    else:  # a wide heat map: the maps go under it, larger, and the figure is as wide as the heat map
        fig_w = min(width, max(heat_w, len(shown) * panel + 0.8))
        panel = min(2.0, (fig_w - 0.6) / len(shown))
        fig = Figure(figsize=(fig_w, heat_h + panel + 0.75), layout="constrained")
        left, right = fig.subfigures(2, 1, height_ratios=[heat_h, panel + 0.75], hspace=0.02)
    _heat(left.add_subplot(), recs, top=top)
    finite = np.concatenate([hm[0][np.isfinite(hm[0])].ravel() for _, hm in shown])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    axes = right.subplots(1, len(shown), squeeze=False)[0]
    for ax, (g, (m, n_img, prefix)) in zip(axes, shown):
        ax.imshow(overlay(None, m, lo=lo, hi=hi, size=max(128, 8 * max(m.shape))))
        ax.set_xticks([])
        ax.set_yticks([])
        extra = f"\n{prefix:.0%} on CLS/registers" if np.isfinite(prefix) and prefix >= 0.005 else ""
        ax.set_title(f"{_group_title(attribute, g)}\n(mean of {n_img} images){extra}", fontsize=FONT,
                     linespacing=1.15)
    _shared_colourbar(right, list(axes), lo, hi)
    right.suptitle(f"where the top head {top_head} looks", fontsize=FONT + 0.5)
    return fig


def _shared_colourbar(fig: Any, axes: list[Any], lo: float, hi: float) -> None:
    """One colour bar under the map panels: both groups are drawn on the same scale."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from audit.viz.maps import MAP_CMAP, fmt_value

    if not hi > lo:
        hi = lo + 1e-12
    cb = fig.colorbar(ScalarMappable(Normalize(lo, hi), cmap=MAP_CMAP), ax=axes, orientation="horizontal",
                      fraction=0.06, pad=0.03, aspect=28, shrink=0.85)
    cb.set_ticks([lo, hi], labels=[fmt_value(lo), fmt_value(hi)])
    cb.ax.tick_params(labelsize=FONT, length=2, pad=1)
    cb.outline.set_linewidth(0.4)
    cb.set_label("pooled-token attention per patch (one scale for both groups)", fontsize=FONT)
