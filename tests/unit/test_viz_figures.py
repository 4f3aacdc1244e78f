"""Figures: object-oriented matplotlib only, intervals drawn, small groups hollow, greyscale cues."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from audit.viz import (
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

PERF = pd.DataFrame({
    "attribute": ["bg", "bg", "bg"], "group": ["a", "b", "c"], "value": [0.9, 0.7, 0.8],
    "ci_low": [0.85, 0.6, 0.6], "ci_high": [0.95, 0.8, 0.95], "n": [200, 180, 20], "small": [False, False, True],
})


def _points(fig: Figure) -> list:
    return [ln for ax in fig.axes for ln in ax.lines if ln.get_marker() not in ("None", None, "")]


def test_interval_plot_draws_intervals_and_marks_small_groups() -> None:
    fig = interval_plot(PERF, title="accuracy")
    assert isinstance(fig, Figure)
    pts = _points(fig)
    assert len(pts) == 3
    by_x = {round(float(p.get_xdata()[0]), 3): p for p in pts}
    assert by_x[0.8].get_markerfacecolor() == "white"  # small group: hollow
    assert by_x[0.9].get_markerfacecolor() != "white"
    assert len({p.get_marker() for p in pts}) == 3  # groups differ by marker, not only colour
    whiskers = [ln for ax in fig.axes for ln in ax.lines if ln.get_marker() in ("None", None, "")
                and len(ln.get_xdata()) == 2 and ln.get_ydata()[0] == ln.get_ydata()[1]]
    spans = sorted(tuple(np.round(ln.get_xdata(), 3)) for ln in whiskers)
    assert (0.6, 0.8) in spans and (0.85, 0.95) in spans and (0.6, 0.95) in spans
    png = figure_to_png_bytes(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    svg = figure_to_svg(fig)
    assert "<svg" in svg and 'href="http' not in svg  # no external references (namespaces are only names)


def test_forest_plot_filled_only_when_significant() -> None:
    d = pd.DataFrame({"attribute": ["bg", "col"], "metric": ["accuracy"] * 2, "cls": ["__all__"] * 2,
                      "difference": [0.2, 0.03], "diff_ci_low": [0.1, 0.0], "diff_ci_high": [0.3, 0.08],
                      "p_holm": [0.002, 0.9], "significant": [True, False]})
    fig = forest_plot(d)
    pts = [p for p in _points(fig) if len(p.get_xdata())]
    sig = next(p for p in pts if float(p.get_xdata()[0]) == 0.2)
    ns = next(p for p in pts if float(p.get_xdata()[0]) == 0.03)
    assert sig.get_marker() != ns.get_marker() and ns.get_markerfacecolor() == "white"


def test_other_figures_build() -> None:
    fs = pd.DataFrame([{"method": m, "metric": k, "value": v, "ci_low": v - 0.02, "ci_high": v + 0.02, "n": 30}
                       for m in ("gae", "rollout") for k, v in [("deletion_auc", 0.3), ("insertion_auc", 0.6),
                                                                ("random_deletion_auc", 0.45),
                                                                ("random_insertion_auc", 0.42)]])
    fig = faithfulness_bars(fs)
    hatches = {p.get_hatch() for ax in fig.axes for p in ax.patches}
    assert "///" in hatches  # the random reference differs by hatching
    san = pd.DataFrame([{"method": "gae", "step": s, "spearman": 1 - 0.3 * s, "ci_low": 0.9 - 0.3 * s,
                         "ci_high": 1.0 - 0.3 * s, "flagged": False, "randomized_blocks": "", "n": 5}
                        for s in range(3)])
    assert isinstance(sanity_plot(san), Figure)
    proj = pd.DataFrame({"x": np.arange(10.0), "y": np.arange(10.0), "method": "pca",
                         "bg": ["a", "b"] * 5, "correct": [True] * 8 + [False] * 2})
    fig = projection_scatter(proj, hue="bg")
    assert len(fig.axes[0].collections) == 3  # two groups + the error crosses
    assert isinstance(interval_plot([]), Figure)  # empty input gives a labelled empty figure


def test_overlay_normalises_for_display_only() -> None:
    raw = np.array([[0.0, 0.001], [0.002, 0.004]], dtype=np.float32)
    keep = raw.copy()
    disp = display_normalise(raw)
    assert np.array_equal(raw, keep) and disp.min() == 0 and disp.max() == 1
    assert upsample_map(raw, (8, 8)).shape == (8, 8)
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    ov = overlay(img, raw)
    assert ov.shape == (8, 8, 3) and 0 <= ov.min() and ov.max() <= 1
    fig = overlay_figure(img, {"gae": raw, "rollout": raw * 10}, captions={"gae": "del 0.1"})
    assert len(fig.axes) == 5  # colour bars are insets of their panel, not figure axes
    bar = fig.axes[1].child_axes[0]  # the map's colour bar: its raw range, and what the scale is
    assert [t.get_text() for t in bar.get_xticklabels()] == ["0", "0.004"]
    assert "per-image" in bar.get_xlabel()


def test_library_never_imports_pyplot() -> None:
    code = ("import sys, numpy as np, pandas as pd\n"
            "from audit.viz import interval_plot, figure_to_png_bytes\n"
            "import audit.report, audit.report.policy, audit.report.pdf\n"
            "df = pd.DataFrame({'attribute':['a'],'group':['g'],'value':[.5],'ci_low':[.4],'ci_high':[.6],"
            "'n':[60],'small':[False]})\n"
            "figure_to_png_bytes(interval_plot(df))\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
            "assert 'streamlit' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("bad", [pd.DataFrame(columns=list(PERF.columns))])
def test_empty_tables_do_not_crash(bad) -> None:
    assert isinstance(interval_plot(bad), Figure)
    assert isinstance(forest_plot(pd.DataFrame(columns=["difference"])), Figure)


# ----------------------------------------------------------------------------- maps: one look everywhere
def test_maps_show_the_patch_grid_unless_smoothed() -> None:
    from audit.viz.maps import patch_boundaries

    grid = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    up = upsample_map(grid, (8, 8))  # nearest: one flat 4x4 block per patch
    assert set(np.unique(up)) == {0.0, 1.0, 2.0, 3.0}
    assert (up[:4, :4] == 0).all() and (up[4:, 4:] == 3).all()
    smooth = upsample_map(grid, (8, 8), smooth=True)
    assert len(np.unique(smooth)) > 4  # interpolated between patch centres
    rows, cols = patch_boundaries((4, 4), (64, 64))
    assert rows.tolist() == [16, 32, 48] and cols.tolist() == [16, 32, 48]
    img = np.full((8, 8, 3), 200, np.uint8)
    with_grid = overlay(img, grid)
    no_grid = overlay(img, grid, grid=False)
    assert not np.allclose(with_grid[4], no_grid[4]) and np.allclose(with_grid[1, 1], no_grid[1, 1])
    assert np.allclose(overlay(img, grid, smooth=True), overlay(img, grid, smooth=True, grid=True))  # no lines


def test_overlay_is_the_map_colour_over_a_grey_image() -> None:
    from matplotlib import colormaps

    from audit.viz import MAP_ALPHA, MAP_CMAP

    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    grid = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    out = overlay(red, grid, grid=False)
    lum = 0.25 + 0.75 * 0.299
    expected = (1 - MAP_ALPHA) * lum + MAP_ALPHA * np.asarray(colormaps[MAP_CMAP](1.0))[:3]
    np.testing.assert_allclose(out[0, 3], expected, atol=1e-5)  # the image's red is gone: only the map has colour
    assert overlay(red, grid, size=16).shape == (16, 16, 3)


def test_scale_and_prediction_are_named() -> None:
    from audit.viz.maps import prediction_line, run_range, scale_label

    assert "per-image" in scale_label("image") and "run-wide" in scale_label("run", "gae")
    assert "gae" in scale_label("run", "gae")
    lo, hi = run_range(np.arange(101, dtype=np.float32))
    assert (lo, hi) == (1.0, 99.0)
    line = prediction_line(target="square", prediction="square", score=0.891)
    assert line.replace("\u00a0", " ") == "target square = prediction (p 0.89)"
    other = prediction_line(target="cat", prediction="dog", score=0.8, target_score=0.1).replace("\u00a0", " ")
    assert other == "target cat (p 0.10); predicted dog (p 0.80)"
    assert prediction_line() == ""  # nothing known: nothing made up


def test_overlay_figure_panels_name_verdict_target_and_prediction() -> None:
    img = np.zeros((16, 16, 3), np.uint8)
    maps = {"gae": np.random.default_rng(0).random((4, 4)).astype(np.float32)}
    fig = overlay_figure(img, maps, show_maps=False, verdicts={"gae": "better than random"}, prediction="square",
                         score=0.9, targets={"gae": "square"}, scale="run", ranges={"gae": (0.0, 2.0)})
    title = fig.axes[1].get_title().replace("\u00a0", " ").replace("\n", " ")
    assert "gae" in title and "better than random" in title and "target square = prediction (p 0.90)" in title
    bar = fig.axes[1].child_axes[0]
    assert [t.get_text() for t in bar.get_xticklabels()] == ["0", "2"] and "run-wide" in bar.get_xlabel()


def test_every_surface_draws_maps_with_the_one_colour_map() -> None:
    """The report figures, the dashboard and `vision-audit explain` draw maps through audit.viz.maps;
    no other colour map is named in their drawing code."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = [*sorted((root / "audit" / "viz").glob("*.py")), root / "dashboards" / "render.py",
             root / "dashboards" / "ui.py", root / "audit" / "explain_cli.py", root / "audit" / "report" / "writer.py"]
    for f in files:
        text = f.read_text(encoding="utf-8")
        named = set(re.findall(r"""cmap\s*=\s*["']([A-Za-z_]+)["']|colormaps\[\s*["']([A-Za-z_]+)["']""", text))
        assert not {n for pair in named for n in pair if n}, (f.name, named)
    src = (root / "dashboards" / "render.py").read_text(encoding="utf-8")
    assert "from audit.viz.maps import" in src
    assert "map_panel" in (root / "audit" / "explain_cli.py").read_text(encoding="utf-8")


def test_notebook_overlays_use_the_one_colour_map() -> None:
    import inspect

    from audit.explain.types import Explanation
    from audit.viz import MAP_CMAP

    assert inspect.signature(Explanation.figure).parameters["cmap"].default == MAP_CMAP
