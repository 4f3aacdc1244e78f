"""Helpers shared by the pages: the current run, safe text, interval figures, group filters.

Strings from a run (labels, group names, file names, findings) are shown with ``st.text``,
``st.dataframe`` or markdown with every ASCII punctuation character escaped (:func:`esc`); never
as HTML.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import streamlit as st

from audit.errors import AuditError
from audit.runs import Run
from dashboards import cache, state

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn: the first page draws none
    from matplotlib.figure import Figure

_ESCAPE = {ord(c): "\\" + c for c in string.punctuation}


def esc(text: object) -> str:
    """Escape ``text`` for ``st.markdown``: every ASCII punctuation character is backslash-escaped,
    so data can never turn into links, emphasis, directives, LaTeX or HTML. Newlines become spaces."""
    return str(text).replace("\r", " ").replace("\n", " ").translate(_ESCAPE)


def current_run() -> tuple[str, Run]:
    """``(path, run)`` chosen in the sidebar; stops the page with a message when none is usable."""
    path = state.selected_run()
    if path is None:
        st.error("No run to show. Start with `vision-audit dashboard RUN_DIR`, or build the demo run "
                 "with `vision-audit demo`.")
        st.stop()
    try:
        return path, cache.open_run(path)
    except AuditError as e:
        st.error(f"This run cannot be opened: {esc(e)}")
        st.stop()
    raise AssertionError("unreachable")  # pragma: no cover


def min_group_size(run: Run) -> int:
    """The run's minimum group size (``config.stats.min_group_size``, through :meth:`Run.section`)."""
    return int(run.section("stats").min_group_size)


def alpha(run: Run) -> float:
    """The run's significance level (``config.stats.alpha``, through :meth:`Run.section`)."""
    return float(run.section("stats").alpha)


def paired_interval_figure(df: pd.DataFrame, *, series: str, label: str = "group", value: str = "value",
                           lo: str = "ci_low", hi: str = "ci_high", small: str = "small", title: str = "",
                           xlabel: str = "") -> Figure:
    """Point estimates with 95% intervals per ``label``, one offset row per ``series`` value (e.g. two
    runs side by side); small groups hollow and grey. Single-series plots use
    :func:`audit.viz.figures.interval_plot`."""
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(df[label].astype(str)))
    series_vals = list(dict.fromkeys(df[series].astype(str)))
    fig = Figure(figsize=(6.4, 0.42 * len(labels) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for si, sv in enumerate(series_vals):
        sub = df[df[series].astype(str) == sv]
        offs = (si - (len(series_vals) - 1) / 2) * 0.25
        first = True
        for r in sub.to_dict("records"):
            y = labels.index(str(r[label])) + offs
            v, a, b = float(r[value]), float(r[lo]), float(r[hi])
            is_small = bool(r.get(small)) if pd.notna(r.get(small)) else False
            col = "0.6" if is_small else colours[si % len(colours)]
            if np.isfinite(a) and np.isfinite(b):
                ax.plot([a, b], [y, y], color=col, lw=2)
            ax.plot([v], [y], "o", color=col, mfc="white" if is_small else col, label=sv if first else None)
            first = False
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"{xlabel} (95% interval; hollow grey: below the minimum size)" if xlabel else "")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8)
    return fig


def group_filter_widgets(df: pd.DataFrame, columns: Sequence[str], *, key: str) -> pd.Series:
    """Multiselects (one per column, empty = all) in the current container; returns the row mask."""
    mask = pd.Series(True, index=df.index)
    cols = st.columns(max(1, len(columns)))
    for c, col in zip(columns, cols):
        values = sorted(df[c].dropna().astype(str).unique().tolist())
        chosen = col.multiselect(c, values, key=f"{key}_{c}", placeholder="all")
        if chosen:
            mask &= df[c].astype(str).isin(chosen)
    return mask


def fmt_p(p: object) -> str:
    """A p-value as text (``<0.001`` below one in a thousand)."""
    try:
        v = float(p)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    if not np.isfinite(v):
        return "–"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def p_text(p: object, name: str = "p") -> str:
    """``"p < 0.001"`` / ``"p = 0.012"`` (never ``"p = <0.001"``); ``name`` e.g. ``"corrected p"``."""
    s = fmt_p(p)
    return f"{name} {s[0]} {s[1:]}" if s.startswith("<") else f"{name} = {s}"


P_COLUMNS = frozenset({"p", "p_value", "p_holm", "p_bh", "p_adj"})
P_LABELS = {"p_value": "p", "p_holm": "p (Holm)", "p_bh": "p (BH)", "p_adj": "p (adj.)"}


def fit_table(df: pd.DataFrame, *, key: str | None = None, labels: dict[str, str] | None = None, digits: int = 3,
              column_config: dict | None = None, container: object = None, **kw: object) -> object:
    """``st.dataframe`` sized to fit the main column: floats with ``digits`` decimals, p-values with two
    significant digits, ``labels`` as short column headers (the data's column names stay, so the
    table reads back with its own names)."""
    labels = {**P_LABELS, **(labels or {})}
    cfg: dict = {}
    for c in df.columns:
        label = labels.get(str(c))
        head = len(label or str(c))
        if str(c) in P_COLUMNS:
            cfg[c] = st.column_config.NumberColumn(label, format="%.2g", width=_px(max(head, 7)))
        elif pd.api.types.is_float_dtype(df[c]):
            cfg[c] = st.column_config.NumberColumn(label, format=f"%.{digits}f", width=_px(max(head, digits + 3)))
        elif pd.api.types.is_bool_dtype(df[c]):
            cfg[c] = st.column_config.CheckboxColumn(label, width=_px(head))
        else:  # text: as wide as its longest value (up to a limit), so that no name is cut to "balanced_…"
            # missing values count as empty (pandas keeps NA through astype(str): its length is NaN)
            lens = [len(str(v)) for v in df[c].astype(object).where(df[c].notna(), "")]
            longest = max(lens, default=0)
            cfg[c] = st.column_config.Column(label, width=_px(max(head, min(longest, 40))))
    cfg.update(column_config or {})
    target = container if container is not None else st
    return target.dataframe(df, hide_index=True, width="stretch", key=key, column_config=cfg, **kw)  # type: ignore[attr-defined]


def short_hash(value: object, keep: int = 16) -> str:
    """A long hash (a dataset fingerprint: 64 hex digits) cut to ``keep`` characters and "…" for a table
    cell, so that it never pushes the table past the page; anything else is returned as text."""
    s = "" if value is None else str(value)
    return s[:keep] + "…" if len(s) > 2 * keep and all(c in "0123456789abcdef" for c in s.lower()) else s


def _px(chars: int) -> int:
    """Pixels a dataframe column needs for ``chars`` characters of its font (and its padding)."""
    return int(6.6 * chars + 20)


def interval_text(lo: object, hi: object, digits: int = 3) -> str:
    """``"[0.120, 0.340]"`` (empty when a bound is missing)."""
    try:
        a, b = float(lo), float(hi)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return f"[{a:.{digits}f}, {b:.{digits}f}]" if np.isfinite(a) and np.isfinite(b) else ""


@st.cache_data(show_spinner=False, max_entries=4096)
def _overlay(path: str, stamp: int, row_id: int, method: str, size: int, scale: str, smooth: bool
             ) -> tuple[bytes, str, str] | None:
    from audit.explain.quality import map_problem
    from audit.viz.maps import display_range, fmt_value, scale_label
    from dashboards import render

    store = cache.maps(path, method)
    m = store.get(row_id)
    if m is None:
        return None
    problem = map_problem(m)
    if problem:  # NaN/Inf or constant: say so, never draw it as a blank or uniform heat map
        return render.png_bytes(render.placeholder(size)), f"{method}: no usable map — {problem}", ""
    lo, hi = display_range(m, lo=store.lo, hi=store.hi) if scale == "run" else display_range(m)
    # the colour bar (gradient and its end values) is drawn under the map; what it spans is the caption
    kw = {"size": size, "lo": lo, "hi": hi, "smooth": smooth}
    scale_text = f"{scale_label(scale, method)}: {fmt_value(lo)} to {fmt_value(hi)}"  # type: ignore[arg-type]
    try:
        img = cache.load_image(path, row_id)
    except AuditError as e:
        return render.png_bytes(render.colourbar(render.heat_only(m, **kw), lo, hi, None)), str(e), scale_text
    return render.png_bytes(render.colourbar(render.overlay(img, m, **kw), lo, hi, None)), "", scale_text


def overlay_png(path: str, row_id: int, method: str, *, size: int | None = None, scale: str = "image",
                smooth: bool = False) -> tuple[bytes, str, str] | None:
    """``(png, problem, scale text)``: the stored ``method`` map over the image on its patch grid
    (``smooth``: bilinear) with a colour bar, and what the bar spans ("image" or "run" scale, and its
    range) for the caption; None if not stored."""
    return _overlay(path, cache.stamp(path), int(row_id), method, int(size or cache.OVERLAY), scale, bool(smooth))


def map_image(container: object, img: object, grid_map: np.ndarray, *, size: int, caption: str,
              smooth: bool = False) -> None:
    """Draw ``grid_map`` over ``img`` in ``container`` (patch grid, colour bar of the map's own range,
    named in the caption); a NaN/Inf or constant map is shown as a placeholder with the reason, never
    as a blank or uniform heat map."""
    from audit.explain.quality import map_problem
    from audit.viz.maps import display_range, fmt_value
    from dashboards import render

    problem = map_problem(grid_map)
    if problem:
        container.image(render.png_bytes(render.placeholder(size)), caption=caption)  # type: ignore[attr-defined]
        container.warning(esc(f"no usable map: {problem}"))  # type: ignore[attr-defined]
        return
    lo, hi = display_range(grid_map)
    png = render.png_bytes(render.colourbar(render.overlay(img, grid_map, size=size, smooth=smooth), lo, hi, None))
    container.image(png, caption=f"{caption} · per image {fmt_value(lo)} to {fmt_value(hi)}")  # type: ignore[attr-defined]


def md_table(df: pd.DataFrame, *, index: bool = True, digits: int = 3) -> str:
    """A small table as GitHub markdown with every cell escaped (:func:`esc`, so ``|`` too).

    The first page shows its small, static tables this way: a markdown table is one light element
    where ``st.table`` is a component per table (about 0.4 s less to render the Overview in a
    browser on a 2-core machine). Floats get ``digits`` decimals; NaN/None show as an empty cell.
    """

    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return ""
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.{digits}f}"
        return esc(v)

    cols = ([str(df.index.name or "")] if index else []) + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + " --- |" * len(cols)]
    for idx, row in zip(df.index, df.itertuples(index=False)):
        vals = ([idx] if index else []) + list(row)
        lines.append("| " + " | ".join(cell(v) for v in vals) + " |")
    return "\n".join(lines)
