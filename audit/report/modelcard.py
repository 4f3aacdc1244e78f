"""MODEL_CARD.md: fill a Hugging Face model card's "Bias, Risks, and Limitations" and
"Evaluation" sections from an audit (huggingface_hub's ModelCard / ModelCardData, offline).

Without a base card the default huggingface_hub template is used. With ``base`` (an existing
README.md / model card) only those two level-2 sections are replaced (or appended when
missing); everything else, the YAML metadata included, is kept.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from audit.report.markdown import md_escape
from audit.report.summary import AuditSummary, fmt, fmt_ci

BIAS_HEADING = "Bias, Risks, and Limitations"
EVAL_HEADING = "Evaluation"
MAIN_METRICS = ("accuracy", "balanced_accuracy")


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {md_escape(x)}" for x in items)


def bias_section(s: AuditSummary) -> str:
    """Body of "Bias, Risks, and Limitations" (Markdown, data escaped)."""
    parts = [f"An audit with vision-audit {md_escape(s.tool.version)} on "
             f"{fmt(s.provenance.n_used, 'int')} images grouped by {md_escape(', '.join(s.provenance.group_columns))} "
             f"found: {md_escape(s.findings_summary)}", "",
             "\n".join(f"{i}. {md_escape(h)}" for i, h in enumerate(s.headline, start=1))
             or "- no group comparison could be tested", "",
             "What the audit could not measure:", "", _bullets(s.limitations or ["nothing recorded"]), "",
             "A gap reported as not significant after Holm correction is not evidence that the groups are treated "
             "alike; read its interval. Groups below the minimum size "
             f"({s.provenance.min_group_size}) were not compared."]
    return "\n".join(parts)


def recommendations(s: AuditSummary) -> str:
    """From the ledger: the groups at the worst end of every significant finding about the model's outputs."""
    from audit.findings import OUTCOME_KINDS

    sig = [f for f in s.findings if f.significant and f.kind in OUTCOME_KINDS and f.attribute and f.worst_group]
    text = ("Users should check performance on their own groups before deployment; the audited groups are only those "
            "in the evaluation manifest.")
    if sig:
        worst = ", ".join(dict.fromkeys(f"{f.attribute}={f.worst_group}" for f in sig))
        text = (f"The audit found significant disparities to the disadvantage of {md_escape(worst)} (see the "
                "findings above); do not rely on the model for these groups without further evaluation. " + text)
    return text


def _results_table(s: AuditSummary) -> str:
    gc = set(s.provenance.group_columns)
    lines = ["| attribute | group | metric | value | 95% interval | n |", "|---|---|---|---:|---:|---:|"]
    for r in s.performance:
        if r.metric in MAIN_METRICS and r.attribute in gc and r.cls in ("__all__", "__macro__"):
            lines.append(f"| {md_escape(r.attribute)} | {md_escape(r.group)}{' (small)' if r.small else ''} | "
                         f"{md_escape(r.key)} | {fmt(r.value)} | {fmt_ci(r.ci_low, r.ci_high)} | {fmt(r.n, 'int')} |")
    lines += ["", "| attribute | metric | gap | 95% interval | Holm p | result |", "|---|---|---:|---:|---:|---|"]
    for d in s.disparities:
        if d.metric in MAIN_METRICS and d.attribute in gc:
            res = ("not tested" if d.difference is None else "significant after Holm correction" if d.significant
                   else "not significant after Holm correction")
            lines.append(f"| {md_escape(d.attribute)} | {md_escape(d.key)} | {fmt(d.difference)} | "
                         f"{fmt_ci(d.diff_ci_low, d.diff_ci_high)} | {fmt(d.p_holm, 'p')} | {res} |")
    if s.clip is not None and s.clip.harmful_rates:
        lines += ["", "| attribute | group | harmful-label rate | 95% interval | n |", "|---|---|---:|---:|---:|"]
        for h in s.clip.harmful_rates:
            lines.append(f"| {md_escape(h.attribute)} | {md_escape(h.group)} | {fmt(h.rate)} | "
                         f"{fmt_ci(h.ci_low, h.ci_high)} | {fmt(h.n, 'int')} |")
    return "\n".join(lines)


def evaluation_parts(s: AuditSummary) -> dict[str, str]:
    """The template fields of the "Evaluation" section."""
    p = s.provenance
    sparse = [c for c in s.composition if c.sparse]
    data = (f"Manifest {md_escape(p.dataset_manifest)} (fingerprint {md_escape(p.dataset_fingerprint)}): "
            f"{fmt(p.n_used, 'int')} images used of {fmt(p.n_rows, 'int')} rows, {fmt(p.n_skipped, 'int')} skipped.")
    if sparse:
        data += (f" {len(sparse)} group(s) have fewer than {p.min_group_size} images: "
                 + md_escape(", ".join(f"{c.attribute}={c.group} (n={c.n})" for c in sparse)) + ".")
    factors = (f"Group columns: {md_escape(', '.join(p.group_columns))}, and their pairwise intersections. "
               f"Groups below {p.min_group_size} images are shown but not compared.")
    metrics = ("Accuracy and balanced accuracy per group with 95% bootstrap intervals (resampled within each group); "
               "the max-min gap across groups is tested with a permutation test and Holm-corrected "
               f"(alpha {p.alpha}).")
    if s.clip is not None:
        metrics += " CLIP: harmful-label rate per group, WEAT / image-EAT effect sizes, retrieval skew."
    return {"testing_data": data, "testing_factors": factors, "testing_metrics": metrics,
            "results": _results_table(s), "results_summary": _bullets(s.headline)}


def evaluation_section(s: AuditSummary) -> str:
    e = evaluation_parts(s)
    return "\n".join([
        "### Testing Data, Factors & Metrics", "", "#### Testing Data", "", e["testing_data"], "",
        "#### Factors", "", e["testing_factors"], "", "#### Metrics", "", e["testing_metrics"], "",
        "### Results", "", e["results"], "", "#### Summary", "", e["results_summary"]])


def replace_section(text: str, heading: str, body: str) -> str:
    """Replace the body of the level-2 section ``heading`` in ``text`` (append it when missing)."""
    pat = re.compile(rf"^##[ \t]+{re.escape(heading)}[ \t]*$", re.MULTILINE)
    m = pat.search(text)
    block = f"## {heading}\n\n{body.strip()}\n\n"
    if not m:
        return text.rstrip("\n") + "\n\n" + block
    nxt = re.compile(r"^##[ \t]+\S", re.MULTILINE).search(text, m.end())
    end = nxt.start() if nxt else len(text)
    return text[: m.start()] + block + text[end:]


def write_model_card(summary: AuditSummary, path: str | os.PathLike[str], *,
                     base: str | os.PathLike[str] | None = None) -> Path:
    """Write MODEL_CARD.md.

    Args:
        summary: the audit summary.
        path: output file.
        base: an existing model card / README.md to update (its other sections are kept).

    Returns:
        ``path``.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from audit.errors import UsageError

    s = summary
    out = Path(path)
    if base is not None:
        bp = Path(base)
        if not bp.is_file():
            raise UsageError(f"model card {bp} not found; pass an existing README.md or omit it to start from the "
                             "Hugging Face template")
        card = ModelCard(bp.read_text(encoding="utf-8"), ignore_metadata_errors=True)
        text = replace_section(card.text, BIAS_HEADING, bias_section(s) + "\n\n### Recommendations\n\n"
                               + recommendations(s))
        text = replace_section(text, EVAL_HEADING, evaluation_section(s))
        meta = card.data.to_yaml() if card.data and card.data.to_dict() else ""
        content = (f"---\n{meta}\n---\n" if meta else "") + text
        new = ModelCard(content, ignore_metadata_errors=True)
    else:
        data = ModelCardData(model_name=s.provenance.model_name, tags=["vision-audit", "bias-audit"],
                             metrics=list(MAIN_METRICS))
        new = ModelCard.from_template(
            data, model_id=s.provenance.model_name,
            model_summary=f"Model {md_escape(s.provenance.model_spec)} "
                          f"(fingerprint {md_escape(s.provenance.fingerprint)}), audited with vision-audit.",
            bias_risks_limitations=bias_section(s), bias_recommendations=recommendations(s), **evaluation_parts(s))
    out.parent.mkdir(parents=True, exist_ok=True)
    from audit.runs import atomic_path

    with atomic_path(out) as tmp:
        tmp.write_text(str(new), encoding="utf-8")
    os.chmod(out, 0o644)
    return out
