"""report.html: one self-contained file (inline CSS, figures as base64 PNG, no scripts or URLs).

Every data string (group names, class names, file names, prompts) goes through jinja2's
autoescape; every number comes from the :class:`~audit.report.summary.AuditSummary` and is
formatted with :func:`~audit.report.summary.fmt`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from audit.findings import metric_label
from audit.report.carried import carried_findings, components_intro
from audit.report.summary import AuditSummary, fmt, fmt_ci, preprocessing_text

TEMPLATES = Path(__file__).parent / "templates"


def environment(*, autoescape: bool = True) -> jinja2.Environment:
    """The jinja2 environment of the HTML templates (autoescape on, strict undefined)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=autoescape,
                             undefined=jinja2.StrictUndefined, trim_blocks=False, lstrip_blocks=False)
    env.filters["fmt"] = fmt
    env.globals["fmt_ci"] = fmt_ci
    env.filters["fmt_ci"] = fmt_ci
    env.filters["metric_label"] = metric_label
    env.filters["preprocessing_text"] = preprocessing_text
    return env


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sections(s: AuditSummary) -> list[tuple[str, str]]:
    out = [("findings", "Findings"), ("provenance", "Provenance"), ("composition", "Composition"),
           ("performance", "Performance by group"), ("disparities", "Disparity tests")]
    if s.embeddings:
        out.append(("embeddings", "Embeddings"))
    if s.clip:
        out.append(("clip", "CLIP association, harmful labels, retrieval"))
    if s.ablations or s.components:
        out.append(("components", "Where a finding is carried (heads)"))
    out += [("explanations", "Explanation gallery"), ("faithfulness", "Faithfulness"), ("sanity", "Sanity check"),
            ("limitations", "Limitations"), ("per-class", "Appendix: per-class rates")]
    return out


def render_html(summary: AuditSummary, *, figures: Mapping[str, bytes], gallery_images: list[bytes],
                perf_figures: list[str]) -> str:
    """Render report.html.

    Args:
        summary: the run's summary (the only source of numbers).
        figures: name -> PNG bytes ("interval:<metric>", "forest", "faithfulness", "sanity",
            "projection", "harmful", "slice_<id>", "components_<i>").
        gallery_images: PNG bytes per gallery item, in ``summary.gallery.items`` order.
        perf_figures: names in ``figures`` shown in the performance section, in order.
    """
    from audit.viz.figures import MAP_CMAP

    env = environment()
    mmd_lookup: dict[tuple[str, str, str], Any] = {}
    if summary.embeddings:
        mmd_lookup = {(m.attribute, m.group_a, m.group_b): m for m in summary.embeddings.mmd}
    return env.get_template("report.html.j2").render(
        s=summary, css=(TEMPLATES / "report.css").read_text(encoding="utf-8"),
        figures={k: b64(v) for k, v in figures.items()}, gallery_images=[b64(g) for g in gallery_images],
        perf_figures=perf_figures, sections=sections(summary), mmd_lookup=mmd_lookup, cmap=MAP_CMAP,
        carried=carried_findings(summary), components_intro=components_intro(summary.components_info),
    )
