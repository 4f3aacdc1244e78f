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
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("bad", [pd.DataFrame(columns=list(PERF.columns))])
def test_empty_tables_do_not_crash(bad) -> None:
    assert isinstance(interval_plot(bad), Figure)
    assert isinstance(forest_plot(pd.DataFrame(columns=["difference"])), Figure)
