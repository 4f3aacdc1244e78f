"""Report and dashboard figures (matplotlib object-oriented API only; never pyplot state).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so it is
safe in a shared Streamlit process and in threads. Figures stay readable in greyscale:
groups differ by marker shape, small groups are hollow, significant results are filled,
and bars differ by hatching, not only by colour. Intervals are always drawn.

Example:
    >>> fig = interval_plot(run.table("group_performance").query("metric == 'accuracy'"))  # doctest: +SKIP
    >>> png = figure_to_png_bytes(fig)                                                    # doctest: +SKIP
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from audit.viz.maps import (  # MAP_CMAP is the one colour map of every map drawn (audit.viz.maps)
    MAP_ALPHA,
    MAP_CMAP,
    MapScale,
    display_range,
    fmt_value,
    overlay,
    prediction_line,
    scale_label,
)

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p"]
HATCHES = ["", "///", "...", "xxx", "\\\\\\", "ooo", "---", "+++"]
# Okabe-Ito palette (colour-blind safe); greyscale separation comes from markers/hatches
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def figure_to_png_bytes(fig: Figure, *, dpi: int = 110) -> bytes:
    """Render ``fig`` to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def figure_to_svg(fig: Figure) -> str:
    """Render ``fig`` to an SVG document string (no external references)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _records(df: Any) -> list[dict[str, Any]]:
    if hasattr(df, "to_dict"):
        return list(df.to_dict("records"))
    return [r.model_dump() if hasattr(r, "model_dump") else dict(r) for r in df]


def _finite(v: Any) -> bool:
    try:
        return v is not None and bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False


def _empty(fig: Figure, text: str) -> Figure:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def interval_plot(
    rows: Any,
    *,
    value: str = "value",
    low: str = "ci_low",
    high: str = "ci_high",
    title: str = "",
    xlabel: str = "value (95% interval)",
    xlim: tuple[float, float] | None = None,
) -> Figure:
    """Point and 95% interval per group, one panel per attribute.

    Args:
        rows: DataFrame (or list of records) with columns attribute, group, n, small and
            ``value``/``low``/``high``, e.g. ``group_performance`` filtered to one metric
            and class, or ``harmful_rates`` with ``value="rate"``.
        title: figure title.
        xlabel: label of the value axis.
        xlim: value-axis limits (default: fitted to the intervals).

    Groups below the minimum size are drawn hollow and labelled "(small)".
    """
    recs = _records(rows)
    fig = Figure(figsize=(6.4, 1.6 + 0.28 * max(1, len(recs)) + 0.45 * len({r["attribute"] for r in recs})),
                 layout="constrained")
    if not recs:
        return _empty(fig, "no groups to show")
    attrs = list(dict.fromkeys(r["attribute"] for r in recs))
    heights = [max(1, sum(r["attribute"] == a for r in recs)) for a in attrs]
    axes = fig.subplots(len(attrs), 1, sharex=True, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    for ai, (ax, attr) in enumerate(zip(axes, attrs)):
        sub = [r for r in recs if r["attribute"] == attr]
        for i, r in enumerate(sub):
            y = len(sub) - 1 - i
            small = bool(r.get("small", False))
            colour = COLOURS[i % len(COLOURS)]
            marker = MARKERS[i % len(MARKERS)]
            if _finite(r.get(low)) and _finite(r.get(high)):
                ax.plot([r[low], r[high]], [y, y], color=colour, lw=1.6, ls="--" if small else "-")
                ax.plot([r[low]] * 2, [y - 0.15, y + 0.15], color=colour, lw=1.2)
                ax.plot([r[high]] * 2, [y - 0.15, y + 0.15], color=colour, lw=1.2)
            if _finite(r.get(value)):
                ax.plot([r[value]], [y], marker=marker, ms=7, color=colour, mec=colour,
                        mfc="white" if small else colour, mew=1.5, ls="none")
        labels = [f"{r['group']} (n={int(r['n'])}{', small' if r.get('small') else ''})" for r in sub]
        ax.set_yticks(range(len(sub))[::-1], labels=labels, fontsize=8)
        ax.set_ylim(-0.7, len(sub) - 0.3)
        ax.set_title(str(attr), fontsize=9, loc="left")
        ax.grid(axis="x", color="0.85", lw=0.6)
    if xlim is not None:
        axes[0].set_xlim(*xlim)
    if title:
        fig.suptitle(title, fontsize=10)
    axes[-1].set_xlabel(f"{xlabel}\nfilled: n >= minimum size; hollow/dashed: below minimum size (not compared)",
                        fontsize=8)
    return fig


def forest_plot(disparities: Any, *, title: str = "Disparities: max-min gap (95% interval)") -> Figure:
    """Gap between the best and worst group per test, with its interval.

    Filled circles are significant after Holm correction; hollow squares are not.

    Args:
        disparities: DataFrame/records with attribute, metric, cls, difference,
            diff_ci_low, diff_ci_high, p_holm, significant.
    """
    recs = [r for r in _records(disparities) if _finite(r.get("difference"))]
    fig = Figure(figsize=(6.4, 1.6 + 0.3 * max(1, len(recs))), layout="constrained")
    if not recs:
        return _empty(fig, "no disparity tests to show")
    ax = fig.add_subplot()
    labels = []
    for i, r in enumerate(recs):
        y = len(recs) - 1 - i
        sig = bool(r.get("significant"))
        from audit.findings import metric_key

        labels.append(f"{metric_key(str(r['metric']), str(r.get('cls') or '__all__'))} | {r['attribute']}")
        if _finite(r.get("diff_ci_low")) and _finite(r.get("diff_ci_high")):
            ax.plot([r["diff_ci_low"], r["diff_ci_high"]], [y, y], color="0.2", lw=1.5)
        ax.plot([r["difference"]], [y], marker="o" if sig else "s", ms=7, color="#D55E00" if sig else "#0072B2",
                mfc="#D55E00" if sig else "white", mew=1.5, ls="none")
        if _finite(r.get("p_holm")):
            from audit.fmt import fmt

            ax.annotate(f"Holm p={fmt(r['p_holm'], 'p')}", (1.01, y), xycoords=("axes fraction", "data"),
                        fontsize=7, va="center")
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_yticks(range(len(recs))[::-1], labels=labels, fontsize=8)
    ax.set_ylim(-0.7, len(recs) - 0.3)
    ax.set_xlabel("max - min across groups", fontsize=9)
    ax.grid(axis="x", color="0.85", lw=0.6)
    ax.plot([], [], marker="o", color="#D55E00", ls="none", label="significant (Holm)")
    ax.plot([], [], marker="s", color="#0072B2", mfc="white", ls="none", label="not significant (Holm)")
    fig.legend(fontsize=7, loc="outside lower center", ncol=2, frameon=False)
    ax.set_title(title, fontsize=10)
    return fig


def faithfulness_bars(summary: Any, *, title: str = "Faithfulness (deletion lower is better, insertion higher)") -> Figure:
    """Deletion and insertion AUC per method beside a random map's AUC, with intervals.

    Args:
        summary: ``faithfulness_summary`` rows (method, metric, value, ci_low, ci_high, n).
    """
    recs = _records(summary)
    fig = Figure(figsize=(7.0, 3.0), layout="constrained")
    methods = list(dict.fromkeys(r["method"] for r in recs))
    if not methods:
        return _empty(fig, "no faithfulness results")
    axes = fig.subplots(1, 2, sharey=True)
    look = {(r["method"], r["metric"]): r for r in recs}
    for ax, (metric, rnd, name) in zip(axes, [("deletion_auc", "random_deletion_auc", "deletion AUC"),
                                              ("insertion_auc", "random_insertion_auc", "insertion AUC")]):
        x = np.arange(len(methods))
        for j, (key, lab, hatch, colour) in enumerate([(metric, "method map", "", "#0072B2"),
                                                       (rnd, "random map", "///", "white")]):
            vals, lo, hi = [], [], []
            for m in methods:
                r = look.get((m, key), {})
                v = r.get("value")
                vals.append(v if _finite(v) else np.nan)
                lo.append(v - r["ci_low"] if _finite(r.get("ci_low")) and _finite(v) else 0)
                hi.append(r["ci_high"] - v if _finite(r.get("ci_high")) and _finite(v) else 0)
            ax.bar(x + (j - 0.5) * 0.38, vals, width=0.36, color=colour, edgecolor="0.1", hatch=hatch, label=lab,
                   yerr=[lo, hi], capsize=3, error_kw={"lw": 1})
        ax.set_xticks(x, labels=methods, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="y", color="0.85", lw=0.6)
    axes[0].set_ylabel("AUC (95% interval)", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, frameon=False, loc="outside lower center", ncol=2)
    fig.suptitle(title, fontsize=10)
    return fig


def sanity_plot(sanity: Any, *, title: str = "Model-randomisation sanity check") -> Figure:
    """Spearman correlation with the original map as blocks are re-initialised, per method."""
    recs = _records(sanity)
    fig = Figure(figsize=(6.0, 3.0), layout="constrained")
    methods = list(dict.fromkeys(r["method"] for r in recs))
    if not methods:
        return _empty(fig, "no sanity-check results")
    ax = fig.add_subplot()
    for i, m in enumerate(methods):
        sub = sorted((r for r in recs if r["method"] == m), key=lambda r: r["step"])
        x = [r["step"] for r in sub]
        y = [r["spearman"] for r in sub]
        flagged = any(r["flagged"] for r in sub)
        ax.plot(x, y, marker=MARKERS[i % len(MARKERS)], color=COLOURS[i % len(COLOURS)],
                ls="--" if flagged else "-", label=f"{m}{' (flagged)' if flagged else ''}")
        lo = [r["ci_low"] if _finite(r["ci_low"]) else np.nan for r in sub]
        hi = [r["ci_high"] if _finite(r["ci_high"]) else np.nan for r in sub]
        ax.fill_between(x, lo, hi, color=COLOURS[i % len(COLOURS)], alpha=0.15, lw=0)
    ax.set_xlabel("blocks re-initialised (from the top)", fontsize=9)
    ax.set_ylabel("Spearman vs original (95% interval)", fontsize=9)
    ax.set_ylim(-0.1, 1.05)
    ax.grid(color="0.85", lw=0.6)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title, fontsize=10)
    return fig


def map_colourbar(ax: Any, lo: float, hi: float, label: str, *, fontsize: float = 6) -> Any:
    """A horizontal colour bar under ``ax`` (an inset, so ``fig.axes`` keeps one axes per panel):
    :data:`MAP_CMAP` from ``lo`` to ``hi`` in raw map units, labelled with its scale."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if not hi > lo:
        hi = lo + 1e-12
    cax = ax.inset_axes([0.0, -0.11, 1.0, 0.065])
    cb = ax.figure.colorbar(ScalarMappable(Normalize(lo, hi), cmap=MAP_CMAP), cax=cax, orientation="horizontal")
    cb.set_ticks([lo, hi], labels=[fmt_value(lo), fmt_value(hi)])
    cb.ax.tick_params(labelsize=fontsize - 0.5, length=2, pad=1)
    cb.outline.set_linewidth(0.4)
    cb.set_label(label, fontsize=fontsize - 0.5, labelpad=1)
    return cb


def map_panel(
    ax: Any,
    image: Any,
    m: np.ndarray,
    *,
    title: str = "",
    lo: float | None = None,
    hi: float | None = None,
    scale: MapScale = "image",
    method: str | None = None,
    smooth: bool = False,
    alpha: float = MAP_ALPHA,
    fontsize: float = 6,
    colourbar: bool = True,
    size: int = 256,
) -> None:
    """Draw one map panel on ``ax``: the map over the image (grey) on its patch grid, with a colour
    bar that names its scale (``scale="image"``: the map's own range; ``"run"``: ``lo``/``hi``, one
    range per method over the run). ``image=None`` or ``alpha=1`` draws the map alone."""
    lo_, hi_ = display_range(m, lo=lo, hi=hi)
    ax.imshow(overlay(image, m, lo=lo_, hi=hi_, smooth=smooth, alpha=alpha, size=size), interpolation="antialiased")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize, linespacing=1.15)
    if colourbar:
        map_colourbar(ax, lo_, hi_, scale_label(scale, method), fontsize=fontsize)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width, break_long_words=True) if line else line for line in text.split("\n"))


def overlay_figure(
    image: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    title: str = "",
    captions: Mapping[str, str] | None = None,
    show_maps: bool = True,
    verdicts: Mapping[str, str] | None = None,
    prediction: str | None = None,
    score: float | None = None,
    targets: Mapping[str, str] | str | None = None,
    scale: MapScale = "image",
    ranges: Mapping[str, tuple[float, float]] | None = None,
    smooth: bool = False,
    panel_inches: float = 1.4,
) -> Figure:
    """Image | (map | overlay) per method, each map on its patch grid with a colour bar.

    Args:
        image: ``(H, W, 3)`` uint8 or float image.
        maps: method -> raw map ``(gh, gw)`` on the patch grid.
        title: figure title.
        captions: method -> extra caption line (e.g. "del 0.31 / ins 0.62").
        show_maps: also show each map alone (else only the overlays).
        verdicts: method -> its verdict against a random map (``faithfulness_verdicts``, e.g.
            "better than random"), added to every panel title of that method; methods without one
            get no verdict line (none is made up).
        prediction, score: the predicted class and its probability, named on every panel.
        targets: what the maps explain (one for all, or per method), named on every panel.
        scale: ``"image"`` (each map's own range) or ``"run"`` (``ranges[method]``: one range per
            method over the run); the colour bars say which.
        smooth: bilinear maps instead of the honest patch grid.
        panel_inches: width of one panel (the figure is as wide as its panels).
    """
    captions = captions or {}
    verdicts = verdicts or {}
    ranges = ranges or {}
    per = 2 if show_maps else 1
    ncol = 1 + per * len(maps)
    target_of = (lambda _m: targets) if isinstance(targets, str) or targets is None else targets.get
    chars = max(14, int(panel_inches * 21))
    lines = 2 + (1 if verdicts else 0) + (1 if prediction is not None or targets is not None else 0) \
        + (1 if captions else 0)
    fig = Figure(figsize=(panel_inches * ncol, panel_inches + 0.12 * lines + 0.45), layout="constrained")
    axes = fig.subplots(1, ncol, squeeze=False)[0]
    axes[0].imshow(np.asarray(image))
    axes[0].set_title("image", fontsize=6)
    from audit.explain.quality import draw_problem, map_problem

    for i, (method, m) in enumerate(maps.items()):
        raw = np.asarray(m, dtype=np.float32)
        problem = map_problem(raw)
        note = prediction_line(target=target_of(method), prediction=prediction, score=score)
        verdict = f"\n{verdicts[method]}" if verdicts.get(method) else ""  # one line: a verdict is short
        tail = f"\n{_wrap(note, chars)}" if note else ""
        if problem:  # a NaN/Inf or constant map is named, never drawn as a blank or uniform heat map
            for j in range(per):
                draw_problem(axes[1 + per * i + j], problem, fontsize=6)
                axes[1 + per * i + j].set_title(method + verdict + tail, fontsize=6)
            continue
        lo, hi = ranges.get(method, (None, None)) if scale == "run" else (None, None)
        if show_maps:
            map_panel(axes[1 + per * i], None, raw, title=f"{method}{verdict}" + tail, lo=lo, hi=hi,
                      scale=scale, method=method, smooth=smooth)
        cap = captions.get(method, "")
        head = f"{method} overlay" if show_maps else method
        map_panel(axes[1 + per * i + (1 if show_maps else 0)], image, raw,
                  title=head + verdict + tail + (f"\n{_wrap(cap, chars)}" if cap else ""),
                  lo=lo, hi=hi, scale=scale, method=method, smooth=smooth)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=7.5)
    return fig


def image_strip(images: Sequence[np.ndarray], captions: Sequence[str] = (), *, title: str = "",
                panel_inches: float = 1.1) -> Figure:
    """A row of images (e.g. an error slice's most typical members), each with its caption."""
    n = max(len(images), 1)
    fig = Figure(figsize=(panel_inches * n, panel_inches + (0.45 if title else 0.3)))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i < len(images):
            ax.imshow(images[i])
            if i < len(captions):
                ax.set_title(captions[i], fontsize=6)
    if title:
        fig.suptitle(title, fontsize=7)
    fig.tight_layout()
    return fig


def projection_scatter(
    projection: Any,
    *,
    hue: str,
    title: str = "",
    max_points: int = 3000,
    seed: int = 0,
) -> Figure:
    """2-D embedding projection coloured and shaped by one group column; errors marked with a cross.

    Args:
        projection: the ``projection`` table (row_id, x, y, method, <group columns>, correct).
        hue: the group column that sets colour and marker.
        max_points: subsample above this many points (seeded).
    """
    import pandas as pd

    df = projection if isinstance(projection, pd.DataFrame) else pd.DataFrame(_records(projection))
    if len(df) > max_points:
        df = df.sample(max_points, random_state=seed)
    fig = Figure(figsize=(5.2, 4.2), layout="constrained")
    if df.empty:
        return _empty(fig, "no projection")
    ax = fig.add_subplot()
    for i, (g, sub) in enumerate(df.groupby(df[hue].astype(str), sort=True)):
        ax.scatter(sub.x, sub.y, s=14, marker=MARKERS[i % len(MARKERS)], color=COLOURS[i % len(COLOURS)],
                   alpha=0.7, label=f"{g} (n={len(sub)})", linewidths=0.3, edgecolors="0.2")
    if "correct" in df.columns:
        wrong = df[df.correct.astype("boolean").fillna(True) == False]
        if len(wrong):
            ax.scatter(wrong.x, wrong.y, s=28, marker="x", color="black", linewidths=0.8, label="error")
    method = str(df["method"].iloc[0]) if "method" in df.columns else ""
    ax.set_xlabel(f"{method} 1", fontsize=9)
    ax.set_ylabel(f"{method} 2", fontsize=9)
    ax.legend(fontsize=7, frameon=False, title=hue, title_fontsize=7)
    ax.set_title(title or f"Embedding projection by {hue}", fontsize=10)
    return fig


def comparison_plot(rows: Sequence[Mapping[str, Any]], *, title: str = "Run B - run A (95% interval)") -> Figure:
    """Difference between two runs per group and metric, with bootstrap intervals.

    Args:
        rows: records with attribute, group, metric, diff, diff_ci_low, diff_ci_high.
    """
    recs = [r for r in rows if _finite(r.get("diff"))]
    fig = Figure(figsize=(6.4, 1.6 + 0.28 * max(1, len(recs))), layout="constrained")
    if not recs:
        return _empty(fig, "no differences to show")
    ax = fig.add_subplot()
    for i, r in enumerate(recs):
        y = len(recs) - 1 - i
        excl = _finite(r.get("diff_ci_low")) and _finite(r.get("diff_ci_high")) and (
            r["diff_ci_low"] > 0 or r["diff_ci_high"] < 0)
        if _finite(r.get("diff_ci_low")):
            ax.plot([r["diff_ci_low"], r["diff_ci_high"]], [y, y], color="0.2", lw=1.4)
        ax.plot([r["diff"]], [y], marker="o" if excl else "s", color="#D55E00" if excl else "#0072B2",
                mfc="#D55E00" if excl else "white", ms=6, mew=1.4, ls="none")
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_yticks(range(len(recs))[::-1], labels=[f"{r['metric']} | {r['attribute']}={r['group']}" for r in recs],
                  fontsize=7)
    ax.set_ylim(-0.7, len(recs) - 0.3)
    ax.set_xlabel("difference (B - A)", fontsize=9)
    ax.grid(axis="x", color="0.85", lw=0.6)
    ax.set_title(title, fontsize=10)
    ax.plot([], [], marker="o", color="#D55E00", ls="none", label="interval excludes 0")
    ax.plot([], [], marker="s", color="#0072B2", mfc="white", ls="none", label="interval includes 0")
    fig.legend(fontsize=7, frameon=False, loc="outside lower center", ncol=2)
    return fig
