"""MODEL_CARD.md: a Hugging Face model card filled from an audit (huggingface_hub's ModelCard /
ModelCardData, offline).

Without a base card, the card (``templates/modelcard.md.j2``, the Hugging Face sections) fills every
section the run can fill: the model description and input, direct and out-of-scope use as the
audit measured them, bias, risks and limitations (from the findings ledger), how to load the model,
evaluation, model examination (explanation methods, their verdicts and the sanity check), the
architecture, the audit's software and hardware, a glossary. What only the model owner can write
(who made it, licence, training data and procedure, compute, citation, contact) is listed once, in
its own section, instead of a placeholder in every field. With ``base`` (an existing README.md /
model card) only "Bias, Risks, and Limitations" and "Evaluation" are replaced (or appended when
missing); everything else, the YAML metadata included, is kept.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from audit.report.markdown import md_escape
from audit.report.summary import AuditSummary, fmt, fmt_ci

TEMPLATE = Path(__file__).parent / "templates" / "modelcard.md.j2"
BIAS_HEADING = "Bias, Risks, and Limitations"
OWNER_HEADING = "Information only the model owner can give"
#: (section of the Hugging Face card, what belongs there): nothing in a run can say these
OWNER_ITEMS = [
    ("Model Details", "who developed, funded and shared the model; its licence; the model it was fine-tuned from"),
    ("Model Sources", "repository, paper and demo"),
    ("Uses", ("the uses the model is intended for (direct and downstream) and those it must not be used for beyond "
              "what the audit measured")),
    ("Training Details", ("training data, preprocessing of the training data, training procedure, hyperparameters "
                          "and regime (precision), speeds, sizes and times")),
    ("Environmental Impact", "hardware, hours, cloud provider, region and carbon emitted in training"),
    ("Compute Infrastructure", "the infrastructure the model was trained on"),
    ("Citation", "BibTeX and APA citation"),
    ("Model Card Contact", "who to contact about the model and this card"),
]
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


def _code(text: str) -> str:
    """A fenced Python block whose fence no line of ``text`` can close."""
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}python\n{text}\n{fence}"


def _plain(value: object) -> str:
    """Text for a Markdown paragraph (escaped)."""
    return md_escape("" if value is None else value)


def card_parts(s: AuditSummary) -> dict[str, str]:
    """Every field of ``templates/modelcard.md.j2`` that the run can fill (Markdown, data escaped)."""
    from audit.report.summary import preprocessing_text

    p = s.provenance
    kind = "CLIP model (image and text towers), used as a zero-shot classifier" if p.model_kind == "clip" \
        else "image classifier"
    classes = ", ".join(p.class_names)
    spec_args = [repr(p.model_spec or "")] + ([f"checkpoint={p.checkpoint!r}"] if p.checkpoint else [])
    last = ("embedding = model.encode_image(x[None])  # zero-shot classes: audit.models.zeroshot.ZeroShotHead"
            if p.model_kind == "clip" else "probabilities = model.logits(x[None]).softmax(-1)")
    get_started = _code("from audit.models import load_model\n\n"
                        f"model = load_model({', '.join(spec_args)})\n"
                        "x = model.preprocess.transform()(image)  # a PIL image; the preprocessing the audit used\n"
                        + last)
    from audit.findings import OUTCOME_KINDS

    sig = [f for f in s.findings if f.significant and f.kind in OUTCOME_KINDS and f.attribute and f.worst_group]
    worst = ", ".join(dict.fromkeys(f"{f.attribute}={f.worst_group}" for f in sig))
    out_of_scope = ("The audit covered only the groups of its evaluation manifest "
                    f"({_plain(', '.join(p.group_columns) or 'no group columns')}); other groups, image sources and "
                    "preprocessing than those of this audit (Model Details and Evaluation) were not measured.")
    if worst:
        out_of_scope += (f" The findings ledger marks significant gaps to the disadvantage of {_plain(worst)} "
                         "(see Bias, Risks, and Limitations): do not rely on the model for these groups without "
                         "further evaluation.")
    return {
        "model_summary": (f"{_plain(kind[0].upper() + kind[1:])} {_plain(p.model_spec)} (fingerprint "
                          f"{_plain(p.fingerprint)}), audited for group performance, bias and explanation "
                          f"faithfulness with vision-audit {_plain(s.tool.version)}."),
        "model_type": _plain(f"{kind} ({p.model_family})"),
        "model_spec": _plain(p.model_spec),
        "checkpoint": _plain(p.checkpoint or "none (hub weights)"),
        "fingerprint": _plain(p.fingerprint),
        "classes": _plain(f"{len(p.class_names)}: {classes}" if p.class_names else "not recorded"),
        "input": _plain(preprocessing_text(p.preprocessing)),
        "direct_use": (f"{_plain(kind[0].upper() + kind[1:])} over the classes above, on images prepared with "
                       "the preprocessing above (the values the audit used; other values change the numbers)."),
        "out_of_scope_use": out_of_scope,
        "get_started_code": get_started,
        "model_examination": _examination(s),
        "architecture": _plain(f"{p.model_family} {p.model_kind}, spec {p.model_spec}; "
                               f"{len(p.class_names)} output classes; input {preprocessing_text(p.preprocessing)}"),
        "audit_hardware": _plain(f"{p.device} / {p.dtype} / backend {p.backend}"),
        "audit_software": _plain(", ".join(f"{k} {v}" for k, v in p.versions.items()) or "not recorded"),
        "more_information": (f"Run {_plain(p.run_id)} (created {_plain(p.run_created)}, finished "
                             f"{_plain(p.run_finished)}) on {_plain(p.dataset_manifest)} (fingerprint "
                             f"{_plain(p.dataset_fingerprint)}). The full report (report.html, report.pdf) and "
                             "every number (audit.json) are written beside this card by `vision-audit report "
                             "RUN --model-card`."),
        "model_card_authors": (f"Generated by vision-audit {_plain(s.tool.version)} from audit run "
                               f"{_plain(p.run_id)}; the items listed under \"{OWNER_HEADING}\" are the model "
                               "owner's to write."),
        "owner_items": "\n".join(f"- **{md_escape(sec)}:** {md_escape(what)}" for sec, what in OWNER_ITEMS),
    }


def _examination(s: AuditSummary) -> str:
    """Model Examination: each explanation method's verdict against a random map, its deletion and
    insertion scores beside the random map's, and the model-randomisation sanity check."""
    p = s.provenance
    if not p.methods:
        return "No explanation maps were computed in this audit."
    lines = [f"Explanation methods: {md_escape(', '.join(p.methods))}"
             + (f" (deletion baseline: {md_escape(p.deletion_baseline)})" if p.deletion_baseline else "") + ".", ""]
    if s.verdicts:
        lines += ["| method | score | value | random map | 95% interval of the difference | n | p (adj.) | verdict |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for v in s.verdicts:
            if v.score in ("deletion_auc", "insertion_auc"):
                lines.append(f"| {md_escape(v.method)} | {md_escape(v.score)} | {fmt(v.value)} | {fmt(v.random_value)} "
                             f"| {fmt_ci(v.ci_low, v.ci_high, 'diff')} | {fmt(v.n, 'int')} | {fmt(v.p_adj, 'p')} | "
                             f"{md_escape(v.verdict)} |")
        lines.append("")
    last = {}
    for r in s.sanity:
        if r.method not in last or r.step > last[r.method].step:
            last[r.method] = r
    if last:
        lines += [("Model-randomisation sanity check (Spearman correlation with the original map after every block "
                   "is re-initialised; a method whose maps stay similar does not depend on what the model learned):"),
                  "", "| method | blocks re-initialised | Spearman | 95% interval | n | result |",
                  "|---|---|---:|---:|---:|---|"]
        for r in last.values():
            lines.append(f"| {md_escape(r.method)} | {md_escape(r.randomized_blocks)} | {fmt(r.spearman)} | "
                         f"{fmt_ci(r.ci_low, r.ci_high)} | {fmt(r.n, 'int')} | "
                         f"{'fails: still similar' if r.flagged else 'passes: maps change'} |")
    return "\n".join(lines).rstrip()


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
            data, template_path=str(TEMPLATE), model_id=md_escape(s.provenance.model_name),
            bias_risks_limitations=bias_section(s), bias_recommendations=recommendations(s), owner_heading=OWNER_HEADING,
            **evaluation_parts(s), **card_parts(s))
    out.parent.mkdir(parents=True, exist_ok=True)
    from audit.runs import atomic_path

    with atomic_path(out) as tmp:
        text = str(new)
        tmp.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    os.chmod(out, 0o644)
    return out
