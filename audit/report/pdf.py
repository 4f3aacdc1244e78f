"""report.pdf with reportlab platypus: the report's sections, tables and figures.

Data strings are XML-escaped before they reach a :class:`Paragraph` (which parses a small
markup language); numbers come from the summary through :func:`~audit.report.summary.fmt`.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

from audit.report.carried import carried_findings, components_intro
from audit.report.summary import AuditSummary, fmt, fmt_ci, preprocessing_text
from audit.viz.maps import MAP_CMAP


def _styles() -> dict[str, Any]:
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet

    ss = getSampleStyleSheet()
    return {
        "title": ss["Title"],
        # a heading is never left alone at the foot of a page: it moves with what follows it
        "h2": ParagraphStyle("h2", parent=ss["Heading2"], spaceBefore=10, spaceAfter=4, keepWithNext=1),
        "h3": ParagraphStyle("h3", parent=ss["Heading3"], spaceBefore=6, spaceAfter=3, keepWithNext=1),
        # above a long table that may start on this page and go on over the next (see _long_table_heading)
        "h3long": ParagraphStyle("h3long", parent=ss["Heading3"], spaceBefore=6, spaceAfter=3),
        "body": ParagraphStyle("body", parent=ss["BodyText"], fontSize=9, leading=11.5),
        "note": ParagraphStyle("note", parent=ss["BodyText"], fontSize=7.5, leading=9.5, textColor="#555555"),
        # a note between a heading and its table or figure moves with them (no orphaned heading)
        "lead": ParagraphStyle("lead", parent=ss["BodyText"], fontSize=7.5, leading=9.5, textColor="#555555",
                               keepWithNext=1),
        "cell": ParagraphStyle("cell", parent=ss["BodyText"], fontSize=6.8, leading=8),
        "cellb": ParagraphStyle("cellb", parent=ss["BodyText"], fontSize=6.8, leading=8, fontName="Helvetica-Bold"),
        "bullet": ParagraphStyle("bullet", parent=ss["BodyText"], fontSize=9, leading=11.5, leftIndent=10,
                                 bulletIndent=0),
    }


def P(text: Any, style: Any, *, bullet: bool = False) -> Any:
    """A Paragraph of plain text (escaped: never interpreted as markup)."""
    from reportlab.platypus import Paragraph

    return Paragraph(escape("" if text is None else str(text)), style, bulletText="\u2022" if bullet else None)


def _table(st: dict[str, Any], header: Sequence[str], rows: Sequence[Sequence[Any]], *, width: float,
           col_frac: Sequence[float] | None = None, shaded: Sequence[bool] | None = None,
           bold: Sequence[bool] | None = None) -> Any:
    """A table of plain-text cells; ``shaded`` rows get a light background (small / sparse groups),
    ``bold`` rows bold text (e.g. significant results)."""
    from reportlab.lib import colors
    from reportlab.platypus import Table, TableStyle

    strong = list(bold or []) + [False] * len(rows)
    data = [[P(h, st["cellb"]) for h in header]] + [[P(c, st["cellb" if strong[i] else "cell"]) for c in r]
                                                    for i, r in enumerate(rows)]
    if col_frac is None:  # bold rows are measured in bold (wider), so that their numbers never wrap
        widths = _auto_widths({**st, "cell": st["cellb"]} if any(strong) else st, header, rows, width)
    else:
        tot = sum(col_frac)
        widths = [width * f / tot for f in col_frac]
    t = Table(data, colWidths=widths, repeatRows=1)
    style = [("LINEBELOW", (0, 0), (-1, 0), 0.8, colors.black), ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.grey),
             ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#EEEEEE")), ("VALIGN", (0, 0), (-1, -1), "TOP"),
             ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
             ("LEFTPADDING", (0, 0), (-1, -1), PAD / 2), ("RIGHTPADDING", (0, 0), (-1, -1), PAD / 2)]
    for i, sh in enumerate(shaded or []):
        if sh:
            style.append(("BACKGROUND", (0, i + 1), (-1, i + 1), colors.HexColor("#F6E7DE")))
    t.setStyle(TableStyle(style))
    t.spaceBefore, t.spaceAfter = 2, 9
    return t


def _long_table_heading(st: dict[str, Any], text: str) -> list[Any]:
    """A heading over a table longer than a page: it starts where it is (with room for a few rows) and
    splits over the pages after, instead of leaving a page empty to keep heading and table together."""
    from reportlab.lib.units import cm
    from reportlab.platypus import CondPageBreak

    return [CondPageBreak(4 * cm), P(text, st["h3long"])]


REPORT_DPI = 150  # the resolution report figures are rendered at (audit.report.writer)


PAD = 7.0  # a cell's left + right padding (3.5 + 3.5, set in _table)
SLACK = 0.5  # a column is this much wider than its text: a word exactly as wide as the room may wrap
NUMERIC = re.compile(r"[\[\]()0-9.,+\-e\s/na%]*")


def _auto_widths(st: dict[str, Any], header: Sequence[str], rows: Sequence[Sequence[Any]], width: float) -> list[float]:
    """Column widths for ``width`` from the text: every column gets at least its longest word (numbers and
    intervals never wrap), then the room left goes to the columns whose text is longer than that."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    cell, head = st["cell"], st["cellb"]

    def w(text: Any, style: Any) -> float:
        return stringWidth("" if text is None else str(text), style.fontName, style.fontSize)

    def longest_word(text: Any, style: Any) -> float:
        s = str("" if text is None else text)
        if NUMERIC.fullmatch(s):  # a number or an interval is never broken across lines
            return w(s, style)
        return max(w(x, style) for x in (s.split() or [""]))

    cols = list(zip(*rows)) if rows else [() for _ in header]
    natural = [max([w(h, head), *(w(c, cell) for c in col)]) + PAD + SLACK for h, col in zip(header, cols)]
    least = [max([longest_word(h, head), *(longest_word(c, cell) for c in col)]) + PAD + SLACK
             for h, col in zip(header, cols)]
    if sum(natural) <= width:
        return [n * width / sum(natural) for n in natural]
    if sum(least) >= width:
        return [x * width / sum(least) for x in least]
    room = width - sum(least)
    want = [n - m for n, m in zip(natural, least)]
    out = list(least)
    order = sorted(range(len(want)), key=lambda i: want[i])
    for k, i in enumerate(order):  # the shortest texts first get all they need (they stay on one line) ...
        share = room / (len(order) - k)
        if want[i] > share:  # ... the rest share what is left, in proportion to their text
            rest = order[k:]
            tot = sum(want[j] for j in rest)
            for j in rest:
                out[j] += room * want[j] / tot
            break
        out[i] += want[i]
        room -= want[i]
    return out


def _image(png: bytes, max_w: float, max_h: float, *, dpi: float = REPORT_DPI) -> Any:
    """A figure at its design size (``dpi`` pixels per inch), shrunk to fit ``max_w`` x ``max_h``."""
    from reportlab.lib.utils import ImageReader
    from reportlab.platypus import Image

    iw, ih = ImageReader(io.BytesIO(png)).getSize()
    scale = min(max_w / iw, max_h / ih, 72 / dpi)
    return Image(io.BytesIO(png), width=iw * scale, height=ih * scale)


HOLM_RESULT = {True: "significant", False: "not significant"}  # under the header "after Holm"
BODY_METRICS = ("accuracy", "balanced_accuracy", "ece")  # the metrics the body of the report tabulates


def _not_tested(st: dict[str, Any], rows: Sequence[Any]) -> list[Any]:
    """Untested disparity rows as one paragraph per reason (attribute: metrics), not a row each."""
    by_note: dict[str, dict[str, list[str]]] = {}
    for d in rows:
        by_note.setdefault(d.note or "no reason recorded", {}).setdefault(d.attribute, []).append(d.key)
    out = []
    for note, attrs in by_note.items():
        listed = "; ".join(f"{a}: {', '.join(keys)}" for a, keys in attrs.items())
        out.append(P(f"Not tested ({note}): {listed}.", st["note"]))
    return out


def _disparity_table(st: dict[str, Any], rows: Sequence[Any], width: float) -> Any:
    return _table(
        st, ["attribute", "metric", "k", "highest", "lowest", "gap", "95% interval", "p", "Holm p", "after Holm"],
        [(d.attribute, d.key, fmt(d.k, "int"), f"{d.max_group} ({fmt(d.max_value)})",
          f"{d.min_group} ({fmt(d.min_value)})", fmt(d.difference), fmt_ci(d.diff_ci_low, d.diff_ci_high),
          fmt(d.p_value, "p"), fmt(d.p_holm, "p"), HOLM_RESULT[bool(d.significant)]) for d in rows],
        width=width)


def _performance_table(st: dict[str, Any], rows: Sequence[Any], width: float) -> Any:
    return _table(st, ["attribute", "group", "metric", "value", "95% interval", "n"],
                  [(r.attribute, r.group, r.key, fmt(r.value), fmt_ci(r.ci_low, r.ci_high), fmt(r.n, "int"))
                   for r in rows], width=width, shaded=[r.small for r in rows])


def _slices_section(s: AuditSummary, st: dict[str, Any], figures: Mapping[str, bytes], W: float,
                    H: float) -> list[Any]:
    """Error slices: the search in one sentence, the candidates' table and each confirmed slice's images."""
    out: list[Any] = [P("Error slices nobody labelled", st["h2"]), P(s.slices_note, st["body"])]
    if not s.slices:
        return out
    out.append(_table(st, ["slice", "scope", "status", "n held out / rest", "error rate", "rest", "difference",
                           "95% interval", "BH p_adj", "description"],
                      [(r.slice_id, r.scope, r.status, f"{fmt(r.n_confirm, 'int')} / {fmt(r.n_rest, 'int')}",
                        fmt(r.error_rate), fmt(r.rest_error_rate), fmt(r.difference), fmt_ci(r.ci_low, r.ci_high),
                        fmt(r.p_adj, "p"), r.description) for r in s.slices],
                      width=W, shaded=[r.small for r in s.slices]))
    for r in s.slices:
        key = f"slice_{r.slice_id}"
        if r.confirmed and key in figures:
            from reportlab.platypus import KeepTogether

            out.append(KeepTogether([
                P(f"Slice {r.slice_id}: its most typical members (label → prediction, ✗ = error)", st["note"]),
                _image(figures[key], W, H * 0.18)]))
    return out


def _components_section(s: AuditSummary, st: dict[str, Any], figures: Mapping[str, bytes], W: float,
                        H: float) -> list[Any]:
    """Where a finding is carried (heads): what was done, then per finding its random-heads table
    (significant rows in bold), its top components and the heads x layers figure."""
    from reportlab.platypus import KeepTogether

    carried = carried_findings(s)
    if not carried:
        return []
    intro = components_intro(s.components_info)
    out: list[Any] = [P("Where a finding is carried (heads)", st["h2"])]
    out += [P(t, st["body"]) for t in intro[:-1]]
    out.append(P(intro[-1] + " Significant rows are in bold.", st["note"]))
    for f in carried:
        k = f.num_kind
        block: list[Any] = [P(f.label, st["h3"])]
        sig = (f" {f.n_significant} of {len(f.ablations)} row(s) significant after Holm correction."
               if f.ablations else "")
        block.append(P(f"Finding {f.ref}; values: {f.value_text}.{sig}", st["lead"]))
        if f.ablations:
            block.append(_table(
                st, ["k", "heads", "n", "before", "after", "reduction", "random heads (mean)", "random sets",
                     "p_adj (Holm)", "accuracy before -> after", "result"],
                [(r.k, r.components, fmt(r.n_test, "int"), fmt(r.before, k), fmt(r.after, k), fmt(r.reduction, k),
                  fmt(r.random_mean, k), r.random_sets, fmt(r.p_adj, "p"),
                  f"{fmt(r.accuracy_before)} -> {fmt(r.accuracy_after)}", r.result) for r in f.ablations],
                width=W, bold=[r.significant for r in f.ablations]))
        if f.components:
            e = f.effect_kind
            block.append(P("Top components: effect on the finding with its 95% bootstrap interval over n images",
                           st["lead"]))
            block.append(_table(st, ["rank", "component", "effect", "95% interval", "n", "roles"],
                                [(c.rank, c.component, fmt(c.effect, e), fmt_ci(c.ci_low, c.ci_high, e),
                                  fmt(c.n, "int"), c.roles or "not named") for c in f.components],
                                width=W, col_frac=[0.5, 0.9, 0.8, 1.4, 0.6, 5.0]))
        if f.figure in figures:
            block.append(_image(figures[f.figure], W, H * 0.45))
            block.append(P("Left: mean-ablation effect of every head (columns) and MLP (last column) of each "
                           "decomposed layer (rows); outlined and numbered: the top components by rank. Right: where "
                           "the top head's pooled token looks (mean attention per patch) in each compared group, on "
                           "one shared scale.", st["note"]))
        out.append(KeepTogether(block))
    return out


def render_pdf(summary: AuditSummary, path: str | os.PathLike[str], *, figures: Mapping[str, bytes],
               gallery_images: Sequence[bytes], perf_figures: Sequence[str]) -> None:
    """Write report.pdf to ``path`` (A4, tables split across pages with repeated headers)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import cm
    from reportlab.platypus import CondPageBreak, KeepTogether, PageBreak, SimpleDocTemplate, Spacer

    s = summary
    st = _styles()
    doc = SimpleDocTemplate(str(path), pagesize=A4, leftMargin=1.6 * cm, rightMargin=1.6 * cm, topMargin=1.5 * cm,
                            bottomMargin=1.5 * cm, title=f"Audit report: {s.provenance.model_name}",
                            author="vision-audit", subject="bias and interpretability audit")
    W = doc.width
    H = doc.height
    story: list[Any] = [P(f"Audit report: {s.provenance.model_name}", st["title"]),
                        P(f"Generated {s.generated} by vision-audit {s.tool.version}; audit.json schema version "
                          f"{s.schema_version}; run {s.provenance.run_id}", st["note"])]

    story.append(P("Findings", st["h2"]))
    story.append(P(s.findings_summary, st["body"]))
    for i, h in enumerate(s.headline or ["No group comparisons could be tested."], start=1):
        story.append(P(f"{i}. {h}" if s.headline else h, st["body"]))
    story.append(P(f"A range gap is max-min across the groups with at least {s.provenance.min_group_size} cases in the "
                   "metric's denominator, tested against a permutation null; its interval comes from simultaneous "
                   "intervals of the group values, so it contains 0 when the groups overlap. Each family of tests is "
                   "corrected on its own. A gap that is not significant is not evidence that groups are treated "
                   "alike: read its interval. The full ranked ledger is in audit.json.", st["note"]))

    p = s.provenance
    story.append(P("Model and data provenance", st["h2"]))
    kv = [("Model spec", p.model_spec), ("Kind / family", f"{p.model_kind} / {p.model_family}"),
          ("Checkpoint", p.checkpoint or "none (hub weights)"), ("Model fingerprint", p.fingerprint),
          ("Classes", ", ".join(p.class_names)), ("Dataset manifest", p.dataset_manifest),
          ("Dataset fingerprint", p.dataset_fingerprint),
          ("Images", f"{fmt(p.n_used, 'int')} used of {fmt(p.n_rows, 'int')} rows ({fmt(p.n_skipped, 'int')} skipped)"),
          ("Label / group columns", f"{p.label_column or 'none'} / {', '.join(p.group_columns)}"),
          ("Preprocessing", preprocessing_text(p.preprocessing)),
          *([("Probe head", p.probe)] if p.probe else []),
          ("Explanation methods", (", ".join(p.methods) or "none")
           + (f" (deletion baseline: {p.deletion_baseline})" if p.deletion_baseline else "")),
          ("Device / dtype / backend", f"{p.device} / {p.dtype} / {p.backend}"),
          ("Versions", ", ".join(f"{k} {v}" for k, v in p.versions.items()))]
    story.append(_table(st, ["field", "value"], kv, width=W, col_frac=[1, 3]))

    story.append(P("Dataset composition", st["h2"]))
    story.append(P(f"Shaded rows are sparse (fewer than {p.min_group_size} images): shown, not compared.", st["lead"]))
    story.append(_table(st, ["attribute", "group", "n", "share", "labelled"],
                        [(r.attribute, r.group, fmt(r.n, "int"), fmt(r.share, "share"), fmt(r.n_labelled, "int"))
                         for r in s.composition], width=W,
                        shaded=[r.sparse for r in s.composition]))

    story.append(P("Performance by group", st["h2"]))
    story.append(P("95% bootstrap intervals resampled within each group; n is the metric's denominator; shaded rows "
                   "are below the minimum size and left out of the disparity tests. Other metrics (macro averages of "
                   "per-class rates) are in the appendix.", st["lead"]))
    for name in perf_figures:
        story.append(_image(figures[name], W, H * 0.55))
    main = [r for _, r in s.performance_table(main=True)]
    body = [r for r in main if r.metric in BODY_METRICS]
    other = [r for r in main if r.metric not in BODY_METRICS]
    story.append(_performance_table(st, body or main, W))

    story.append(P("Disparity tests", st["h2"]))
    whole = [d for d in s.disparities if d.cls in ("__all__", "__macro__")]
    per_class = [d for d in s.disparities if d.cls not in ("__all__", "__macro__")]
    story.append(P(f"Gap: best minus worst group among groups with n >= {p.min_group_size}, tested against a "
                   "permutation null; result after Holm correction within each family of tests. Whole-task metrics "
                   "here; per-class (one-vs-rest) tests are in the appendix.", st["lead"]))
    if "forest" in figures:
        story.append(_image(figures["forest"], W, H * 0.5))
    tested = [d for d in whole if d.difference is not None]
    if tested:
        story.append(_disparity_table(st, tested, W))
    story += _not_tested(st, [d for d in whole if d.difference is None])

    if s.embeddings:
        e = s.embeddings
        story.append(P("Embedding statistics", st["h2"]))
        if "projection" in figures:
            story.append(_image(figures["projection"], W * 0.7, H * 0.4))
        story.append(P("Linear probe: can the group be read from the embedding?", st["h3"]))
        story.append(_table(st, ["attribute", "k", "n", "balanced acc.", "95% interval", "AUC", "majority", "null p95",
                                 "p"],
                            [(r.attribute, fmt(r.k, "int"), fmt(r.n, "int"), fmt(r.balanced_accuracy),
                              fmt_ci(r.bacc_ci_low, r.bacc_ci_high), fmt(r.auc), fmt(r.majority_rate),
                              fmt(r.null_p95), fmt(r.p_value, "p")) for r in e.linear_probe], width=W))
        story.append(P("Distances between groups", st["h3"]))
        mmd = {(m.attribute, m.group_a, m.group_b): m for m in e.mmd}
        story.append(_table(st, ["attribute", "group A", "group B", "n A", "n B", "cosine dist.", "MMD²",
                                 "Holm p (dist.)", "Holm p (MMD²)"],
                            [(r.attribute, r.group_a, r.group_b, fmt(r.n_a, "int"), fmt(r.n_b, "int"),
                              fmt(r.cosine_distance),
                              fmt(getattr(mmd.get((r.attribute, r.group_a, r.group_b)), "mmd2", None)),
                              fmt(r.p_holm, "p"),
                              fmt(getattr(mmd.get((r.attribute, r.group_a, r.group_b)), "p_holm", None), "p"))
                             for r in e.distances], width=W))

    if s.clip:
        c = s.clip
        story.append(P("CLIP: association, harmful labels and retrieval skew", st["h2"]))
        if c.association:
            story.append(P("Association tests (WEAT / image-EAT)", st["h3"]))
            story.append(_table(st, ["test", "X", "Y", "A", "B", "n X", "n Y", "effect size d", "p"],
                                [(r.test, r.X, r.Y, r.a_words or r.A, r.b_words or r.B, fmt(r.n_x, "int"), fmt(r.n_y, "int"),
                                  fmt(r.effect_size, "effect"), fmt(r.p_value, "p")) for r in c.association], width=W))
        if c.harmful_rates:
            story.append(P("Harmful-label rates by group", st["h3"]))
        if "harmful" in figures:
            story.append(_image(figures["harmful"], W, H * 0.35))
        if c.harmful_rates:
            story.append(_table(st, ["attribute", "group", "n", "harmful-label rate", "95% interval"],
                                [(r.attribute, r.group, fmt(r.n, "int"), fmt(r.rate), fmt_ci(r.ci_low, r.ci_high))
                                 for r in c.harmful_rates], width=W, shaded=[r.small for r in c.harmful_rates]))
        if c.harmful_disparities:
            story.append(_table(st, ["attribute", "highest", "lowest", "gap", "95% interval", "Holm p", "result"],
                                [(r.attribute, r.max_group, r.min_group, fmt(r.difference),
                                  fmt_ci(r.diff_ci_low, r.diff_ci_high), fmt(r.p_holm, "p"),
                                  "significant after Holm correction" if r.significant
                                  else "not significant after Holm correction") for r in c.harmful_disparities],
                                width=W))
        if c.retrieval_skew:
            story += _long_table_heading(st, "Retrieval skew")
            story.append(_table(st, ["query", "attribute", "k", "group", "skew@k", "MaxSkew", "MinSkew", "NDKL"],
                                [(r.query, r.attribute, fmt(r.k, "int"), r.group, fmt(r.skew, "effect"),
                                  fmt(r.max_skew, "effect"), fmt(r.min_skew, "effect"), fmt(r.ndkl, "effect"))
                                 for r in c.retrieval_skew], width=W))

    story += _slices_section(s, st, figures, W, H)
    story += _components_section(s, st, figures, W, H)

    story.append(PageBreak())
    story.append(P("Explanation gallery", st["h2"]))
    g = s.gallery
    if g.items:
        story.append(P(f"Errors of the worst group ({g.attribute} = {g.worst_group}: {g.reason}) beside correctly "
                       "classified images. Each map is drawn on its patch grid (one block per patch, boundaries in "
                       "white) over the image in grey; its colour bar gives the map's own raw range (per-image "
                       f"scale, display only; colour map {MAP_CMAP}). Every panel names the method's verdict "
                       "against a random map, the class the map explains and the prediction. Deletion AUC: lower "
                       "is more faithful; insertion AUC: higher is more faithful.", st["lead"]))
        for it, png in zip(g.items, gallery_images):
            block = [P(f"{it.kind.upper()}: {it.image_id} ({it.attribute} = {it.group}), label {it.label or 'none'}, "
                       f"predicted {it.pred} (p = {fmt(it.score)})" + (f". Caveat: {it.caveat}" if it.caveat else ""),
                       st["body"]), _image(png, W, H * 0.3)]
            block.append(_table(st, ["method", "deletion AUC", "insertion AUC"],
                                [(m.method, fmt(m.deletion_auc), fmt(m.insertion_auc)) for m in it.maps],
                                width=W * 0.5))
            story.append(KeepTogether(block))
            story.append(Spacer(1, 4))
    else:
        story.append(P(f"No gallery: {g.reason or 'no explanation maps were stored'}.", st["body"]))

    story.append(P("Faithfulness of the explanation methods", st["h2"]))
    if s.faithfulness:
        if "faithfulness" in figures:
            story.append(_image(figures["faithfulness"], W, H * 0.35))
        story.append(_table(st, ["method", "metric", "value", "95% interval", "n"],
                            [(r.method, r.metric, fmt(r.value), fmt_ci(r.ci_low, r.ci_high), fmt(r.n, "int"))
                             for r in s.faithfulness], width=W))
        if s.verdicts:
            story.append(P("Against a random map: the verdict per method (paired over the same images; Holm over "
                           f"the table; deletion with the run's {p.deletion_baseline or 'recorded'} baseline)",
                           st["h3"]))
            story.append(_table(st, ["method", "score", "value", "reference", "difference", "95% interval", "n",
                                     "p (adj.)", "verdict"],
                                [(v.method, v.score, fmt(v.value), f"{fmt(v.random_value)} ({v.baseline})",
                                  fmt(v.difference, "diff"), fmt_ci(v.ci_low, v.ci_high, "diff"), fmt(v.n, "int"),
                                  fmt(v.p_adj, "p"), v.verdict) for v in s.verdicts],
                                width=W))
    else:
        story.append(P("No faithfulness results in this run.", st["body"]))

    story.append(P("Sanity check (model randomisation)", st["h2"]))
    if s.sanity:
        if "sanity" in figures:
            story.append(_image(figures["sanity"], W * 0.8, H * 0.35))
        story.append(_table(st, ["method", "step", "blocks re-initialised", "Spearman", "95% interval", "n", "result"],
                            [(r.method, fmt(r.step, "int"), r.randomized_blocks or "none (original)",
                              fmt(r.spearman), fmt_ci(r.ci_low, r.ci_high), fmt(r.n, "int"),
                              "reference (original model)" if r.step == 0 else
                              "fails: still similar" if r.flagged else "passes: maps change") for r in s.sanity],
                            width=W, shaded=[r.flagged for r in s.sanity]))
    else:
        story.append(P("The sanity check was not run.", st["body"]))

    story.append(P("Limitations", st["h2"]))
    for x in s.limitations or ["None recorded."]:
        story.append(P(x, st["bullet"], bullet=True))
    if other or per_class:
        story.append(CondPageBreak(H * 0.35))
        story.append(P("Appendix", st["h2"]))
    if other:
        story += _long_table_heading(st, "Other metrics by group (macro averages over classes)")
        story.append(_performance_table(st, other, W))
    if per_class:
        story += _long_table_heading(st, "Per-class disparity tests (one-vs-rest)")
        tested = [d for d in per_class if d.difference is not None]
        if tested:
            story.append(_disparity_table(st, tested, W))
        story += _not_tested(st, [d for d in per_class if d.difference is None])
    story.append(Spacer(1, 8))
    story.append(P("Per-class rates by group are in report.html and audit.json. Numbers in this report are those "
                   f"of audit.json (schema version {s.schema_version}).", st["note"]))

    def _footer(canvas: Any, doc_: Any) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.setFillGray(0.4)
        canvas.drawString(doc_.leftMargin, 0.8 * cm, f"vision-audit report: {s.provenance.model_name}"[:120])
        canvas.drawRightString(doc_.leftMargin + doc_.width, 0.8 * cm, f"page {doc_.page}")
        canvas.restoreState()

    doc.build(story, onFirstPage=_footer, onLaterPages=_footer)
