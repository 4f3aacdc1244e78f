"""Matplotlib figures for reports and the dashboard (object-oriented API; never pyplot state)."""

from __future__ import annotations

from audit.viz.figures import (
    MAP_CMAP,
    comparison_plot,
    display_normalise,
    faithfulness_bars,
    figure_to_png_bytes,
    figure_to_svg,
    forest_plot,
    interval_plot,
    overlay,
    overlay_figure,
    projection_scatter,
    sanity_plot,
    upsample_map,
)

__all__ = [
    "MAP_CMAP",
    "comparison_plot",
    "display_normalise",
    "faithfulness_bars",
    "figure_to_png_bytes",
    "figure_to_svg",
    "forest_plot",
    "interval_plot",
    "overlay",
    "overlay_figure",
    "projection_scatter",
    "sanity_plot",
    "upsample_map",
]
