"""report.md: the same content as report.html in GitHub-flavoured Markdown.

Every value printed by the template passes through :func:`md_escape` (jinja2 ``finalize``),
so a group called ``](javascript:alert(1))`` or ``<script>`` stays literal text. Markup that
the report itself writes (figure links) is wrapped in :class:`MdSafe`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jinja2

from audit.findings import metric_label
from audit.report.carried import carried_findings, components_intro
from audit.report.html import TEMPLATES
from audit.report.summary import AuditSummary, fmt, fmt_ci, preprocessing_text

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~>])")


class MdSafe(str):
    """A string already in Markdown; not escaped again."""


def md_escape(value: Any) -> str:
    """Escape text for Markdown (inline and table cells).

    HTML-significant characters become entities (``<`` -> ``&lt;``), Markdown punctuation
    is backslash-escaped, and line breaks become spaces (a table row stays one line).

    Example:
        >>> md_escape("](javascript:alert(1))")
        '\\\\]\\\\(javascript:alert\\\\(1\\\\)\\\\)'
    """
    if isinstance(value, MdSafe):
        return str(value)
    if value is None:
        return ""
    s = str(value)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    s = re.sub(r"[\r\n\t]+", " ", s)
    return s


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=False,
                             undefined=jinja2.StrictUndefined, finalize=md_escape, keep_trailing_newline=True)
    env.filters["fmt"] = lambda v, kind="rate": MdSafe(fmt(v, kind))
    env.globals["fmt_ci"] = lambda lo, hi, kind="rate": MdSafe(fmt_ci(lo, hi, kind))
    env.filters["md"] = md_escape
    env.filters["fmt_ci"] = lambda lo, hi, kind="rate": MdSafe(fmt_ci(lo, hi, kind))
    env.filters["metric_label"] = metric_label
    env.filters["preprocessing_text"] = preprocessing_text
    return env


def render_markdown(summary: AuditSummary, *, figure_files: Mapping[str, str], gallery_files: list[str],
                    perf_figures: list[str]) -> str:
    """Render report.md; figures are linked as relative PNG files (``figure_files``: name -> relative path)."""
    from audit.viz.figures import MAP_CMAP

    mmd_lookup: dict[tuple[str, str, str], Any] = {}
    if summary.embeddings:
        mmd_lookup = {(m.attribute, m.group_a, m.group_b): m for m in summary.embeddings.mmd}
    return environment().get_template("report.md.j2").render(
        s=summary, figures={k: MdSafe(v) for k, v in figure_files.items()}, carried=carried_findings(summary),
        components_intro=components_intro(summary.components_info),
        gallery_files=[MdSafe(g) for g in gallery_files], perf_figures=perf_figures, mmd_lookup=mmd_lookup,
        cmap=MAP_CMAP,
    )
