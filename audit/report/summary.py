"""audit.json: the machine-readable summary of one run, and the single source of report numbers.

Every number shown in report.html, report.md and report.pdf is read from an
:class:`AuditSummary` and formatted by :func:`fmt`, so the HTML and audit.json always agree.
The schema is defined with pydantic v2 (``AuditSummary.model_json_schema()``); its
``schema_version`` changes whenever a field changes meaning.

Example:
    >>> from audit.runs import Run                                       # doctest: +SKIP
    >>> s = build_summary(Run.open("runs/demo/vit-biased"))              # doctest: +SKIP
    >>> s.headline[0]                                                    # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from audit.findings import headline, summary_line
from audit.fmt import fmt, fmt_ci
from audit.report.schema import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_GROUP_SIZE,
    INTERSECTION_SEP,
    SUMMARY_SCHEMA_VERSION,
    TOP_COMPONENTS,
    AblationRow,
    AssociationRow,
    AuditSummary,
    ClipStats,
    ComponentFinding,
    ComponentRow,
    ComponentsInfo,
    CompositionRow,
    DisparityRow,
    EmbeddingDistanceRow,
    EmbeddingGroupRow,
    EmbeddingStats,
    FaithfulnessRow,
    FindingRow,
    Gallery,
    GalleryItem,
    GalleryMap,
    HarmfulDisparityRow,
    HarmfulRateRow,
    LinearProbeRow,
    MMDRow,
    Num,
    PerformanceRow,
    Provenance,
    RegionMassRow,
    RetrievalSkewRow,
    SanityRow,
    SliceRow,
    ToolInfo,
    VerdictRow,
    _Model,
)
from audit.runs import Run, utc_now
from audit.slices.stage import search_note

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MIN_GROUP_SIZE",
    "INTERSECTION_SEP",
    "SUMMARY_SCHEMA_VERSION",
    "AblationRow",
    "AssociationRow",
    "AuditSummary",
    "ClipStats",
    "ComponentFinding",
    "ComponentRow",
    "ComponentsInfo",
    "CompositionRow",
    "DisparityRow",
    "EmbeddingDistanceRow",
    "EmbeddingGroupRow",
    "EmbeddingStats",
    "FaithfulnessRow",
    "FindingRow",
    "Gallery",
    "GalleryItem",
    "GalleryMap",
    "HarmfulDisparityRow",
    "HarmfulRateRow",
    "LinearProbeRow",
    "MMDRow",
    "Num",
    "PerformanceRow",
    "Provenance",
    "RegionMassRow",
    "RetrievalSkewRow",
    "SanityRow",
    "ToolInfo",
    "VerdictRow",
    "_Model",
    "build_summary",
    "fmt",
    "fmt_ci",
    "preprocessing_text",
    "probe_text",
    "provenance_of",
    "tool_version",
]


def preprocessing_text(pre: dict[str, Any]) -> str:
    """One line naming the resolved preprocessing and where each value came from.

    Example:
        >>> preprocessing_text({"values": {"input_size": [224, 224], "crop_pct": 1.0, "interpolation": "bilinear"},
        ...                     "sources": {"input_size": "timm_default", "crop_pct": "user", "interpolation": "user"}})
        'input_size 224×224 (timm_default); crop_pct 1.0 (user); interpolation bilinear (user)'
    """
    values, sources = pre.get("values") or {}, pre.get("sources") or {}
    if not values:
        return "not recorded (run written before preprocessing was recorded)"
    parts = []
    for k, v in values.items():
        if v is None:
            continue
        shown = "×".join(str(x) for x in v) if k in ("input_size", "size") and isinstance(v, (list, tuple)) else (
            "[" + ", ".join(f"{float(x):.4g}" for x in v) + "]" if isinstance(v, (list, tuple)) else str(v))
        src = sources.get(k)
        parts.append(f"{k} {shown}" + (f" ({src})" if src else ""))
    return "; ".join(parts)


def probe_text(probe: dict[str, Any]) -> str:
    """One line naming a probe head (run.json ``model.probe``): where it came from and its own accuracy.

    Example:
        >>> probe_text({"source": "file", "path": "head.safetensors", "n_classes": 3, "embed_dim": 384})
        'linear probe (3 classes on the 384-d embedding) read from head.safetensors'
    """
    shape = f"{probe.get('n_classes', '?')} classes on the {probe.get('embed_dim', '?')}-d embedding"
    if probe.get("source") != "fitted":
        return f"linear probe ({shape}) read from {probe.get('path')}"
    parts = [(f"linear probe ({shape}) fitted by logistic regression (C {probe.get('C')}, seed {probe.get('seed')}) "
              f"on {probe.get('n_train')} images of {probe.get('path')}")]
    for key, what in (("train_accuracy", "training accuracy"), ("holdout_accuracy", "held-out accuracy")):
        a = probe.get(key)
        if a:
            parts.append(f"{what} {fmt(a.get('value'))} {fmt_ci(a.get('ci_low'), a.get('ci_high'))} (n={a.get('n')})")
    parts += [str(n) for n in probe.get("notes") or []]
    return "; ".join(parts)




# --------------------------------------------------------------------------- building
def _clean(v: Any) -> Any:
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    if v is None:
        return None
    import pandas as pd

    try:
        if pd.isna(v):  # pandas NA / NaT
            return None
    except (TypeError, ValueError):  # array-like values are not scalars: keep them
        pass
    return v


def _rows(run: Run, table: str, model: type[_Model]) -> list[Any]:
    """Rows of ``table`` validated as ``model`` (only the documented columns are read)."""
    if not run.has_table(table):
        return []
    fields = list(model.model_fields)
    df = run.table(table)
    missing = [f for f in fields if f not in df.columns and model.model_fields[f].is_required()]
    if missing:
        from audit.errors import RunError

        raise RunError(f"run {run.path}: table {table!r} lacks the documented column(s) {', '.join(missing)}; "
                       "the run was written by an incompatible version, run it again")
    out = []
    for rec in df[[f for f in fields if f in df.columns]].to_dict("records"):
        clean = {k: _clean(v) for k, v in rec.items()}
        for k, v in list(clean.items()):
            ann = model.model_fields[k].annotation
            if v is None and ann in (str,):
                clean[k] = ""
        out.append(model.model_validate(clean))
    return out


def tool_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("vision-audit")
    except metadata.PackageNotFoundError:
        return "unknown"


def _min_group_size(run: Run) -> int:
    return int(run.section("stats").min_group_size)


def _alpha(run: Run) -> float:
    return float(run.section("stats").alpha)


def provenance_of(run: Run) -> Provenance:
    m, d = run.meta.get("model") or {}, run.meta.get("dataset") or {}
    return Provenance(
        run_id=run.meta.get("run_id"), run_created=run.meta.get("created"), run_finished=run.meta.get("finished"),
        model_spec=m.get("spec"), model_name=run.name, model_family=m.get("family"),
        model_kind=str(m.get("kind", "classifier")), checkpoint=m.get("checkpoint"), fingerprint=m.get("fingerprint"),
        class_names=[str(c) for c in m.get("class_names") or []], dataset_manifest=d.get("manifest"),
        dataset_fingerprint=d.get("fingerprint"), n_rows=d.get("n_rows"), n_used=d.get("n_used"),
        n_skipped=len(run.meta.get("skipped") or []), label_column=d.get("label_column"),
        group_columns=[str(g) for g in d.get("group_columns") or []], has_masks=bool(d.get("has_masks", False)),
        device=run.meta.get("device"), dtype=run.meta.get("dtype"), backend=run.meta.get("backend"),
        methods=run.methods, versions={str(k): str(v) for k, v in (run.meta.get("versions") or {}).items()},
        min_group_size=_min_group_size(run), alpha=_alpha(run),
        preprocessing=dict(run.meta.get("preprocessing") or {}),
        probe=probe_text(m["probe"]) if m.get("probe") else None,
        deletion_baseline=(run.meta.get("faithfulness") or {}).get("baseline")
        or (run.section("explain").baseline if run.methods else None),
    )


def _composition(run: Run, min_size: int) -> list[CompositionRow]:
    if not run.has_table("samples"):
        return []
    cols = [c for c in run.group_columns]
    df = run.table("samples")
    cols = [c for c in cols if c in df.columns]
    if not cols:
        return []
    labelled = df["label"].notna() if "label" in df.columns else np.zeros(len(df), dtype=bool)
    rows: list[CompositionRow] = []
    attrs: list[tuple[str, ...]] = [(c,) for c in cols] + list(itertools.combinations(cols, 2))
    total = len(df)
    for attr in attrs:
        key = df[list(attr)].astype(str).agg(INTERSECTION_SEP.join, axis=1) if len(attr) > 1 else df[attr[0]].astype(str)
        counts = key.value_counts()
        lab_counts = key[labelled].value_counts()
        if len(attr) > 1:  # list every cell of the cross product, empty ones included
            levels = [sorted(df[a].astype(str).unique()) for a in attr]
            names = [INTERSECTION_SEP.join(t) for t in itertools.product(*levels)]
        else:
            names = sorted(counts.index)
        for g in names:
            n = int(counts.get(g, 0))
            rows.append(CompositionRow(attribute=INTERSECTION_SEP.join(attr), group=str(g), n=n,
                                       share=n / total if total else 0.0, n_labelled=int(lab_counts.get(g, 0)),
                                       sparse=n < min_size))
    return rows


def _worst_group(summary_perf: list[PerformanceRow], disp: list[DisparityRow],
                 group_columns: list[str]) -> tuple[str | None, str | None, str]:
    single = [d for d in disp if d.metric == "accuracy" and d.attribute in group_columns and d.difference is not None]
    if single:
        best = sorted(single, key=lambda d: (not d.significant, -(d.difference or 0)))[0]
        why = (f"lowest accuracy in the largest accuracy gap (across {best.attribute}; "
               f"{'significant' if best.significant else 'not significant'} after Holm correction)")
        return best.attribute, best.min_group, why
    acc = [r for r in summary_perf if r.metric == "accuracy" and not r.small and r.value is not None
           and INTERSECTION_SEP not in r.attribute]
    if acc:
        r = min(acc, key=lambda r: r.value)
        return r.attribute, r.group, "group with the lowest accuracy (no disparity test available)"
    return None, None, "no group accuracy available"


def _gallery(run: Run, perf: list[PerformanceRow], disp: list[DisparityRow], group_columns: list[str],
             *, n_errors: int = 3, n_correct: int = 3) -> Gallery:
    import pandas as pd

    attr, group, why = _worst_group(perf, disp, group_columns)
    methods = run.methods
    if attr is None or not methods or not run.has_table("predictions"):
        return Gallery(attribute=attr, worst_group=group, reason=why if methods else "no explanation maps stored")
    pred = run.table("predictions")
    _, rows0 = run.maps(methods[0])
    have = set(int(r) for r in rows0)
    pred = pred[pred.row_id.isin(have)]
    in_group = pred[attr].astype(str) == group
    corr = pred["correct"].astype("boolean")  # nullable: unlabelled rows are neither errors nor correct
    is_err, is_ok = corr.eq(False).fillna(False), corr.eq(True).fillna(False)
    errors = pred[in_group & is_err].head(n_errors)
    correct_same = pred[in_group & is_ok]
    correct_other = pred[~in_group & is_ok]
    correct = correct_same.head(n_correct)
    if len(correct) < n_correct:
        correct = pd.concat([correct, correct_other.head(n_correct - len(correct))])
    faith = run.table("faithfulness") if run.has_table("faithfulness") else None
    caveats: dict[int, str] = {}
    if run.has_table("artifact_images"):
        art = run.table("artifact_images")
        caveats = {int(r): str(c) for r, c, a in zip(art["row_id"], art["caveat"], art["affected"]) if a and c}
    samples = run.table("samples").set_index("row_id")
    items = []
    for kind, df in (("error", errors), ("correct", correct)):
        for rec in df.to_dict("records"):
            rid = int(rec["row_id"])
            maps = []
            for m in methods:
                da = ia = None
                if faith is not None:
                    f = faith[(faith.row_id == rid) & (faith.method == m)]
                    if len(f):
                        da, ia = _clean(f.deletion_auc.iloc[0]), _clean(f.insertion_auc.iloc[0])
                maps.append(GalleryMap(method=m, deletion_auc=da, insertion_auc=ia))
            items.append(GalleryItem(
                row_id=rid, image_id=str(samples.loc[rid, "image_id"]) if "image_id" in samples.columns else str(rid),
                path=str(samples.loc[rid, "path"]), kind=kind, attribute=attr, group=str(rec[attr]),
                label=None if _clean(rec.get("label")) is None else str(rec["label"]), pred=str(rec["pred"]),
                score=_clean(rec.get("score")), maps=maps, caveat=caveats.get(rid, "")))
    return Gallery(attribute=attr, worst_group=group, reason=why, items=items)


def _limitations(run: Run, s: AuditSummary) -> list[str]:
    out: list[str] = []
    p = s.provenance
    ms = p.min_group_size
    sparse = [c for c in s.composition if c.sparse]
    if sparse:
        shown = ", ".join(f"{c.attribute}={c.group} (n={c.n})" for c in sparse)  # all of them: never cut
        out.append(f"{len(sparse)} group(s) have fewer than {ms} images and were not compared or ranked: "
                   f"{shown}.")
    small_cells = [r for r in s.performance if r.small and r.cls not in ("__all__", "__macro__")]
    if small_cells:
        out.append(f"{len(small_cells)} per-class rate(s) had fewer than {ms} cases in their denominator "
                   "(positives for TPR/FNR, negatives for FPR, predicted positives for precision); "
                   "they are shown with their intervals but left out of the disparity tests.")
    untested = [d for d in s.disparities if d.p_value is None]
    if untested:
        out.append(f"{len(untested)} disparity test(s) could not be run because fewer than two groups reached "
                   f"the minimum size of {ms}.")
    if p.label_column is None:
        out.append("The dataset has no label column: accuracy and the other label-based metrics were not measured.")
    elif run.has_table("predictions"):
        pred = run.table("predictions", columns=["label"])
        n_missing = int(pred["label"].isna().sum())
        if n_missing:
            out.append(f"{n_missing} image(s) have no label; label-based metrics use the other "
                       f"{len(pred) - n_missing} image(s).")
    skipped = run.meta.get("skipped") or []
    if skipped:
        ex = skipped[0]
        out.append(f"{len(skipped)} image(s) could not be used and were skipped, e.g. row {ex.get('row')} "
                   f"({ex.get('path')}): {ex.get('reason')}.")
    flagged = sorted({r.method for r in s.sanity if r.flagged})
    for m in flagged:
        worst = max((r for r in s.sanity if r.method == m and r.flagged), key=lambda r: r.step)
        out.append(f"Method {m!s} failed the model-randomisation sanity check: its maps still correlate with the "
                   f"original (Spearman {fmt(worst.spearman)}, interval {fmt_ci(worst.ci_low, worst.ci_high)}) after "
                   f"re-initialising blocks {worst.randomized_blocks}; its maps may not reflect what the model "
                   "learned.")
    if s.region_mass and all(r.small for r in s.region_mass):
        out.append(f"Explanation mass by group rests on fewer than {ms} explained images per group; "
                   "read it as descriptive only.")
    if not s.methods_present():
        out.append("No explanation maps were stored: the explanation gallery and faithfulness checks are missing.")
    if p.has_masks is False and s.methods_present():
        out.append("The dataset has no object masks: pointing-game and mass-in-mask scores were not measured.")
    if s.embeddings is None:
        out.append("Embedding statistics were not computed (no embeddings table in the run).")
    if s.clip is not None and s.clip.harmful_disparities:
        out.append("Harmful-label rates depend on the label set used (" + s.clip.harmful_disparities[0].label_set
                   + "); a different set can give different rates.")
    out.extend(str(w) for w in (p.preprocessing.get("warnings") or []))
    out.extend(str(n) for n in (((run.meta.get("model") or {}).get("probe") or {}).get("notes") or []))
    out.extend(str(x) for x in run.meta.get("limitations") or [])
    return out


def _components(run: Run, top: int = TOP_COMPONENTS) -> list[ComponentRow]:
    """Each finding's top ``top`` components of table ``components`` (by rank)."""
    return [r for r in _rows(run, "components", ComponentRow) if r.rank <= top]


def _components_info(run: Run) -> ComponentsInfo | None:
    """run.json ``components`` (None when the stage wrote no tables: skipped, or not run)."""
    if not (run.has_table("components") or run.has_table("ablations")):
        return None
    meta = run.meta.get("components") or {}
    fields = set(ComponentsInfo.model_fields) - {"findings"}
    info = ComponentsInfo.model_validate({k: v for k, v in meta.items() if k in fields and v is not None})
    info.findings = [ComponentFinding.model_validate({k: str(v) for k, v in f.items()
                                                      if k in ComponentFinding.model_fields and v is not None})
                     for f in meta.get("findings") or [] if isinstance(f, dict) and f.get("ref")]
    return info


def build_summary(run: Run) -> AuditSummary:
    """Collect everything the reports show from a finished run (no model is loaded).

    Args:
        run: an opened :class:`~audit.runs.Run`.

    Returns:
        The :class:`AuditSummary` written as audit.json.

    Raises:
        RunError: a table lacks a documented column.
    """
    prov = provenance_of(run)
    perf = _rows(run, "group_performance", PerformanceRow)
    disp = _rows(run, "disparities", DisparityRow)
    emb = None
    if any(run.has_table(t) for t in ("embedding_groups", "embedding_distances", "linear_probe", "mmd")):
        emb = EmbeddingStats(groups=_rows(run, "embedding_groups", EmbeddingGroupRow),
                             distances=_rows(run, "embedding_distances", EmbeddingDistanceRow),
                             linear_probe=_rows(run, "linear_probe", LinearProbeRow),
                             mmd=_rows(run, "mmd", MMDRow))
    clip = None
    if any(run.has_table(t) for t in ("association", "harmful_rates", "harmful_disparities", "retrieval_skew")):
        clip = ClipStats(association=_rows(run, "association", AssociationRow),
                         harmful_rates=_rows(run, "harmful_rates", HarmfulRateRow),
                         harmful_disparities=_rows(run, "harmful_disparities", HarmfulDisparityRow),
                         retrieval_skew=_rows(run, "retrieval_skew", RetrievalSkewRow))
        words = run.section("clip").association_words()
        for r in clip.association:  # the words, not the set names "<test> A" / "<test> B"
            if r.test in words:
                r.a_words, r.b_words, r.prompt = words[r.test]
    s = AuditSummary(
        generated=utc_now(), tool=ToolInfo(version=tool_version()), provenance=prov,
        composition=_composition(run, prov.min_group_size), performance=perf, disparities=disp,
        embeddings=emb, clip=clip, faithfulness=_rows(run, "faithfulness_summary", FaithfulnessRow),
        verdicts=_rows(run, "faithfulness_verdicts", VerdictRow),
        sanity=_rows(run, "sanity", SanityRow), region_mass=_rows(run, "region_mass", RegionMassRow),
        gallery=_gallery(run, perf, disp, prov.group_columns),
        slices=_rows(run, "slices", SliceRow), slices_note=search_note(run.meta.get("slices")),
        ablations=_rows(run, "ablations", AblationRow),
        components=_components(run), components_info=_components_info(run),
    )
    s.limitations = _limitations(run, s)
    ledger = run.findings()
    s.findings = _rows_of(ledger, FindingRow)
    s.findings_summary = summary_line(ledger)
    s.headline = headline(ledger)
    return s


def _rows_of(df: Any, model: type[_Model]) -> list[Any]:
    return [model.model_validate({k: _clean(v) for k, v in rec.items()}) for rec in df.to_dict("records")]
