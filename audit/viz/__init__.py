"""Matplotlib figures for reports and the dashboard (object-oriented API; never pyplot state).

Maps are drawn the same everywhere (:mod:`audit.viz.maps`): one colour map (:data:`MAP_CMAP`), the
patch grid shown as it is (smoothing is an option), the image in grey under the map, and a colour
bar that names its scale (per image, or run-wide per method).
"""

from __future__ import annotations

from audit.viz.figures import (
    comparison_plot,
    faithfulness_bars,
    figure_to_png_bytes,
    figure_to_svg,
    forest_plot,
    interval_plot,
    map_colourbar,
    map_panel,
    overlay_figure,
    projection_scatter,
    sanity_plot,
)
from audit.viz.maps import (
    MAP_ALPHA,
    MAP_CMAP,
    display_normalise,
    overlay,
    patch_boundaries,
    prediction_line,
    run_range,
    scale_label,
    upsample_map,
)

__all__ = [
    "MAP_ALPHA",
    "MAP_CMAP",
    "comparison_plot",
    "display_normalise",
    "faithfulness_bars",
    "figure_to_png_bytes",
    "figure_to_svg",
    "forest_plot",
    "interval_plot",
    "map_colourbar",
    "map_panel",
    "overlay",
    "overlay_figure",
    "patch_boundaries",
    "prediction_line",
    "projection_scatter",
    "run_range",
    "sanity_plot",
    "scale_label",
    "upsample_map",
]
