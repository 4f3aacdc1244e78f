"""Before/after comparison of two runs: per group and metric both values, the difference
(B - A) and a bootstrap interval of the difference.

The interval resamples each run independently and within each group: a group's confusion
matrix is redrawn as Multinomial(n_g, cell shares), which is the nonparametric bootstrap of
any metric that is a function of the confusion counts (accuracy, balanced accuracy). The
worst-group value of each attribute is recomputed in every resample, over the groups that
reach the minimum size in both runs.

What the comparison *says* comes from the two runs' findings ledgers (:mod:`audit.findings`):
the findings that lead either run are matched by (kind, attribute, metric, scope, family) and
shown side by side, each with its own run's interval and corrected p-value. A gap is never
re-estimated here: the percentile bootstrap of a difference of two max-min gaps does not cover.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from audit.errors import RunError
from audit.findings import DEFAULT_HEADLINE, metric_key, metric_label
from audit.report.summary import (
    DEFAULT_MIN_GROUP_SIZE,
    INTERSECTION_SEP,
    SUMMARY_SCHEMA_VERSION,
    Num,
    Provenance,
    ToolInfo,
    fmt,
    fmt_ci,
    provenance_of,
    tool_version,
)
from audit.runs import Run, atomic_path, readable, utc_now, write_bytes, write_json, write_text

COMPARE_METRICS = ("accuracy", "balanced_accuracy")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiffRow(_Model):
    """One metric for one group (or the worst group / the gap of an attribute) in both runs."""

    kind: Literal["group", "worst group"]
    attribute: str
    group: str
    metric: str
    n_a: int
    n_b: int
    a: Num
    a_ci_low: Num
    a_ci_high: Num
    b: Num
    b_ci_low: Num
    b_ci_high: Num
    diff: Num
    diff_ci_low: Num
    diff_ci_high: Num
    small: bool
    note: str = ""


class DisparityPair(_Model):
    attribute: str
    metric: str
    cls: str
    a_difference: Num = None
    a_ci_low: Num = None
    a_ci_high: Num = None
    a_p_holm: Num = None
    a_significant: bool | None = None
    b_difference: Num = None
    b_ci_low: Num = None
    b_ci_high: Num = None
    b_p_holm: Num = None
    b_significant: bool | None = None

    @property
    def key(self) -> str:
        """Metric name that never collides (``balanced_accuracy`` vs ``balanced_accuracy[macro]``)."""
        return metric_key(self.metric, self.cls)


class FindingPair(_Model):
    """One finding of the ledger (matched by its key) in both runs."""

    kind: str
    attribute: str
    metric: str
    scope: str
    family: str
    label: str
    a_rank: int | None = None
    a_gap: Num = None
    a_ci_low: Num = None
    a_ci_high: Num = None
    a_p_adj: Num = None
    a_status: str = "absent"
    b_rank: int | None = None
    b_gap: Num = None
    b_ci_low: Num = None
    b_ci_high: Num = None
    b_p_adj: Num = None
    b_status: str = "absent"
    text: str = ""


class ComparisonSummary(_Model):
    """comparison.json: two runs side by side (schema version 1)."""

    schema_version: Literal[1] = SUMMARY_SCHEMA_VERSION
    kind: Literal["comparison"] = "comparison"
    generated: str
    tool: ToolInfo
    run_a: Provenance
    run_b: Provenance
    n_boot: int
    seed: int
    min_group_size: int
    rows: list[DiffRow] = []
    disparities: list[DisparityPair] = []
    findings: list[FindingPair] = []
    headline: list[str] = []
    limitations: list[str] = []


def _confusions(pred: pd.DataFrame, key: pd.Series, classes: list[str]) -> dict[str, np.ndarray]:
    """group -> confusion counts (C, C) [true, pred] over labelled rows."""
    lab = pred["label"]
    ok = lab.notna().to_numpy().copy()
    idx = {c: i for i, c in enumerate(classes)}
    y = np.array([idx.get(str(v), -1) for v in lab.where(lab.notna(), "")])
    h = np.array([idx.get(str(v), -1) for v in pred["pred"]])
    ok &= (y >= 0) & (h >= 0)
    c = len(classes)
    out = {}
    for g in sorted(key[ok].unique()):
        sel = ok & (key.to_numpy() == g)
        out[str(g)] = np.bincount(y[sel] * c + h[sel], minlength=c * c).reshape(c, c).astype(float)
    return out


def _metric(cm: np.ndarray, metric: str) -> np.ndarray:
    """``cm (..., C, C)`` -> metric (...)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        n = cm.sum((-1, -2))
        tp = np.diagonal(cm, axis1=-2, axis2=-1)
        if metric == "accuracy":
            return tp.sum(-1) / n
        pos = cm.sum(-1)
        rec = np.where(pos > 0, tp / np.where(pos > 0, pos, 1), np.nan)
        return np.nanmean(rec, -1) if rec.shape[-1] else n * np.nan


def _boot(cm: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Multinomial resamples of a confusion matrix: (n_boot, C, C)."""
    n = int(cm.sum())
    c = cm.shape[0]
    if n == 0:
        return np.zeros((n_boot, c, c))
    return rng.multinomial(n, (cm / n).ravel(), size=n_boot).reshape(n_boot, c, c).astype(float)


def _pct(x: np.ndarray) -> tuple[float | None, float | None]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None, None
    lo, hi = np.percentile(x, [2.5, 97.5])
    return float(lo), float(hi)


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def compare_runs(a: Run, b: Run, *, n_boot: int = 2000, seed: int = 0,
                 metrics: Sequence[str] = COMPARE_METRICS) -> ComparisonSummary:
    """Compare run B with run A (differences are B - A).

    Args:
        a: the "before" run.
        b: the "after" run.
        n_boot: bootstrap resamples per group and run.
        seed: seed of the resampling.
        metrics: metrics compared ("accuracy", "balanced_accuracy").

    Raises:
        RunError: a run has no predictions table or no labels, or the runs share no group column.
    """
    rng = np.random.default_rng(seed)
    for r in (a, b):
        if not r.has_table("predictions"):
            raise RunError(f"run {r.path} has no predictions table; a comparison needs both runs' predictions")
    pa, pb = a.table("predictions"), b.table("predictions")
    if pa["label"].notna().sum() == 0 or pb["label"].notna().sum() == 0:
        raise RunError("a comparison needs labelled predictions; run "
                       f"{a.path if pa['label'].notna().sum() == 0 else b.path} has no labels")
    cols = [c for c in a.group_columns if c in b.group_columns and c in pa.columns and c in pb.columns]
    if not cols:
        raise RunError(f"runs {a.path} and {b.path} share no group column ({a.group_columns} vs {b.group_columns})")
    classes = sorted(set(pa["label"].dropna().astype(str)) | set(pb["label"].dropna().astype(str))
                     | set(pa["pred"].astype(str)) | set(pb["pred"].astype(str)))
    prov_a, prov_b = provenance_of(a), provenance_of(b)
    min_size = max(prov_a.min_group_size, prov_b.min_group_size, 1) or DEFAULT_MIN_GROUP_SIZE
    rows: list[DiffRow] = []
    attrs: list[tuple[str, ...]] = [(c,) for c in cols] + list(itertools.combinations(cols, 2))
    for attr in attrs:
        name = INTERSECTION_SEP.join(attr)

        def key(df: pd.DataFrame, attr: tuple[str, ...] = attr) -> pd.Series:
            return df[list(attr)].astype(str).agg(INTERSECTION_SEP.join, axis=1) if len(attr) > 1 \
                else df[attr[0]].astype(str)

        ca, cb = _confusions(pa, key(pa), classes), _confusions(pb, key(pb), classes)
        groups = sorted(set(ca) & set(cb))
        ba = {g: _boot(ca[g], n_boot, rng) for g in groups}
        bb = {g: _boot(cb[g], n_boot, rng) for g in groups}
        for metric in metrics:
            pooled_a, pooled_b, pa_pt, pb_pt = [], [], [], []
            for g in groups:
                na, nb = int(ca[g].sum()), int(cb[g].sum())
                va, vb = float(_metric(ca[g], metric)), float(_metric(cb[g], metric))
                sa, sb = _metric(ba[g], metric), _metric(bb[g], metric)
                small = min(na, nb) < min_size
                alo, ahi = _pct(sa)
                blo, bhi = _pct(sb)
                dlo, dhi = _pct(sb - sa)
                rows.append(DiffRow(kind="group", attribute=name, group=g, metric=metric, n_a=na, n_b=nb,
                                    a=_f(va), a_ci_low=alo, a_ci_high=ahi, b=_f(vb), b_ci_low=blo, b_ci_high=bhi,
                                    diff=_f(vb - va), diff_ci_low=dlo, diff_ci_high=dhi, small=small,
                                    note=f"n < {min_size} in a run; not used for worst group / gap" if small else ""))
                if not small:
                    pooled_a.append(sa)
                    pooled_b.append(sb)
                    pa_pt.append(va)
                    pb_pt.append(vb)
            if len(pooled_a) >= 1:
                sa, sb = np.stack(pooled_a, 1), np.stack(pooled_b, 1)  # (n_boot, k)
                na_all = sum(int(ca[g].sum()) for g in groups)
                nb_all = sum(int(cb[g].sum()) for g in groups)
                for kind, fa, fb, pa_v, pb_v in [
                    ("worst group", np.nanmin(sa, 1), np.nanmin(sb, 1), np.nanmin(pa_pt), np.nanmin(pb_pt)),
                ]:
                    alo, ahi = _pct(fa)
                    blo, bhi = _pct(fb)
                    dlo, dhi = _pct(fb - fa)
                    rows.append(DiffRow(kind=kind, attribute=name, group=f"({kind})", metric=metric, n_a=na_all,
                                        n_b=nb_all, a=_f(pa_v), a_ci_low=alo, a_ci_high=ahi, b=_f(pb_v),
                                        b_ci_low=blo, b_ci_high=bhi, diff=_f(pb_v - pa_v), diff_ci_low=dlo,
                                        diff_ci_high=dhi, small=False,
                                        note=f"over {len(pooled_a)} group(s) with n >= {min_size} in both runs"))
    pairs: list[DisparityPair] = []
    if a.has_table("disparities") or b.has_table("disparities"):
        da = a.table("disparities") if a.has_table("disparities") else pd.DataFrame(columns=["attribute", "metric", "cls"])
        db = b.table("disparities") if b.has_table("disparities") else pd.DataFrame(columns=["attribute", "metric", "cls"])
        if "family" in da.columns:  # the range test of each metric (pairwise / one-vs-rest rows are in the ledger)
            da = da[da["family"] == "range"]
        if "family" in db.columns:
            db = db[db["family"] == "range"]
        keys = list(dict.fromkeys([tuple(x) for x in da[["attribute", "metric", "cls"]].itertuples(index=False)]
                                  + [tuple(x) for x in db[["attribute", "metric", "cls"]].itertuples(index=False)]))
        for attr, metric, cls in keys:
            if cls not in ("__all__", "__macro__"):
                continue
            rec: dict[str, object] = dict(attribute=str(attr), metric=str(metric), cls=str(cls))
            for side, df in (("a", da), ("b", db)):
                sel = df[(df.attribute == attr) & (df.metric == metric) & (df.cls == cls)]
                if len(sel):
                    r = sel.iloc[0]
                    rec.update({f"{side}_difference": _f(float(r["difference"])),
                                f"{side}_ci_low": _f(float(r["diff_ci_low"])),
                                f"{side}_ci_high": _f(float(r["diff_ci_high"])),
                                f"{side}_p_holm": _f(float(r["p_holm"])), f"{side}_significant": bool(r["significant"])})
            pairs.append(DisparityPair.model_validate(rec))
    s = ComparisonSummary(generated=utc_now(), tool=ToolInfo(version=tool_version()), run_a=prov_a, run_b=prov_b,
                          n_boot=n_boot, seed=seed, min_group_size=min_size, rows=rows, disparities=pairs,
                          findings=finding_pairs(a.findings(), b.findings()))
    s.headline = [f.text for f in s.findings]
    s.limitations = _limitations(s)
    return s


def finding_pairs(fa: pd.DataFrame, fb: pd.DataFrame, *, n: int = DEFAULT_HEADLINE) -> list[FindingPair]:
    """The findings that lead run A or run B (their first ``n`` each), matched across the runs.

    Order: A's leading findings in A's rank, then B's that A did not lead with, in B's rank.
    """
    key_cols = ["kind", "attribute", "metric", "scope", "family"]

    def index(df: pd.DataFrame) -> dict[tuple, dict]:
        return {tuple(r[c] for c in key_cols): r for r in df.sort_values("rank").to_dict("records")}

    ia, ib = index(fa), index(fb)
    keys = list(dict.fromkeys([k for k in list(ia)[:n]] + [k for k in list(ib)[:n]]))
    out = []
    for k in keys:
        kind, attribute, metric, scope, family = k
        rec: dict = dict(kind=kind, attribute=attribute, metric=metric, scope=scope, family=family,
                         label=metric_label(metric, scope))
        parts = []
        for side, idx in (("a", ia), ("b", ib)):
            r = idx.get(k)
            if r is None:
                parts.append(f"{side.upper()}: absent")
                continue
            rec.update({f"{side}_rank": int(r["rank"]), f"{side}_gap": _f(r["gap"]), f"{side}_ci_low": _f(r["ci_low"]),
                        f"{side}_ci_high": _f(r["ci_high"]), f"{side}_p_adj": _f(r["p_adj"]),
                        f"{side}_status": str(r["status"])})
            parts.append(f"{side.upper()} gap {fmt(r['gap'])} {fmt_ci(r['ci_low'], r['ci_high'])}, "
                         f"p_adj {fmt(r['p_adj'], 'p')}, {r['status']} (rank {int(r['rank'])})")
        where = f" by {attribute}" if attribute else ""
        rec["text"] = f"{kind}: {rec['label']}{where}: " + "; ".join(parts) + "."
        out.append(FindingPair.model_validate(rec))
    return out


def _limitations(s: ComparisonSummary) -> list[str]:
    out = []
    if s.run_a.dataset_fingerprint != s.run_b.dataset_fingerprint:
        out.append("The runs used different datasets (fingerprints "
                   f"{s.run_a.dataset_fingerprint} and {s.run_b.dataset_fingerprint}): differences mix the change of "
                   "model with the change of data.")
    if s.run_a.fingerprint == s.run_b.fingerprint and s.run_a.fingerprint:
        out.append("Both runs audited the same model (same fingerprint).")
    small = sorted({f"{r.attribute}={r.group}" for r in s.rows if r.small})
    if small:
        out.append(f"{len(small)} group(s) below the minimum size {s.min_group_size} in at least one run are shown "
                   f"but not used for worst-group values and gaps: {', '.join(small)}.")
    out.append("Intervals of the differences come from independent resampling of the two runs; when both runs "
               "used the same images the interval is conservative (the pairing is ignored).")
    return out


def write_comparison(a: Run, b: Run, out_dir: Path, formats: Sequence[str]) -> dict[str, Path]:
    """Write comparison.html / .md / .pdf / .json into ``out_dir``."""
    from audit.report.pdf import REPORT_DPI
    from audit.viz.figures import comparison_plot, figure_to_png_bytes

    s = compare_runs(a, b)
    out_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    sel = [r.model_dump() for r in s.rows if r.kind != "group" or not r.small]
    png = figure_to_png_bytes(comparison_plot([r for r in sel if r["kind"] != "group"] or sel), dpi=REPORT_DPI)
    if "json" in formats:
        write_json(out_dir / "comparison.json", s.model_dump(mode="json"))
        out["json"] = readable(out_dir / "comparison.json")
    if "html" in formats:
        from audit.report.html import b64, environment

        html = environment().get_template("compare.html.j2").render(
            s=s, figure=b64(png), provenance=_provenance_rows(s),
            css=(Path(__file__).parent / "templates" / "report.css").read_text("utf-8"))
        write_text(out_dir / "comparison.html", html)
        out["html"] = out_dir / "comparison.html"
    if "md" in formats:
        from audit.report.markdown import MdSafe
        from audit.report.markdown import environment as md_env

        (out_dir / "figures").mkdir(exist_ok=True)
        write_bytes(out_dir / "figures" / "comparison.png", png)
        md = md_env().get_template("compare.md.j2").render(s=s, figure=MdSafe("figures/comparison.png"),
                                                          provenance=_provenance_rows(s))
        write_text(out_dir / "comparison.md", md)
        out["md"] = out_dir / "comparison.md"
    if "pdf" in formats:
        with atomic_path(out_dir / "comparison.pdf") as tmp:
            _render_pdf(s, tmp, png)
        out["pdf"] = readable(out_dir / "comparison.pdf")
    return out


def _provenance_rows(s: ComparisonSummary) -> list[tuple[str, str, str]]:
    """(field, run A, run B): what each compared run is, for the comparison's provenance table."""
    from audit.report.summary import preprocessing_text

    a, b = s.run_a, s.run_b

    def both(name: str, f) -> tuple[str, str, str]:  # noqa: ANN001
        return name, str(f(a)), str(f(b))

    return [
        both("model spec", lambda p: p.model_spec or "n/a"),
        both("kind / family", lambda p: f"{p.model_kind} / {p.model_family}"),
        both("checkpoint", lambda p: p.checkpoint or "none (hub weights)"),
        both("model fingerprint", lambda p: p.fingerprint or "n/a"),
        both("dataset manifest", lambda p: p.dataset_manifest or "n/a"),
        both("dataset fingerprint", lambda p: p.dataset_fingerprint or "n/a"),
        both("images", lambda p: f"{fmt(p.n_used, 'int')} used of {fmt(p.n_rows, 'int')} rows "
                                 f"({fmt(p.n_skipped, 'int')} skipped)"),
        both("group columns", lambda p: ", ".join(p.group_columns) or "none"),
        both("preprocessing", lambda p: preprocessing_text(p.preprocessing)),
        both("explanation methods", lambda p: ", ".join(p.methods) or "none"),
        both("device / dtype / backend", lambda p: f"{p.device} / {p.dtype} / {p.backend}"),
        both("run id", lambda p: p.run_id or "n/a"),
        both("run created / finished", lambda p: f"{p.run_created} / {p.run_finished}"),
        both("versions", lambda p: ", ".join(f"{k} {v}" for k, v in p.versions.items()) or "n/a"),
    ]


def _render_pdf(s: ComparisonSummary, path: str | os.PathLike[str], png: bytes) -> None:
    """comparison.pdf (landscape A4): provenance of both runs, the findings of both ledgers side by side,
    the worst-group differences, every group's difference and the disparity tests of both runs."""
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.units import cm
    from reportlab.platypus import KeepTogether, SimpleDocTemplate

    from audit.report.pdf import HOLM_RESULT, P, _image, _styles, _table

    st = _styles()
    title = f"Comparison: {s.run_a.model_name} (A) vs {s.run_b.model_name} (B)"
    doc = SimpleDocTemplate(str(path), pagesize=landscape(A4), leftMargin=1.4 * cm, rightMargin=1.4 * cm,
                            topMargin=1.4 * cm, bottomMargin=1.4 * cm, title=title, author="vision-audit",
                            subject="comparison of two audits")
    W, H = doc.width, doc.height

    def result(gap: float | None, sig: bool | None) -> str:
        return "not tested" if gap is None or sig is None else HOLM_RESULT[bool(sig)]

    story = [P(title, st["title"]),
             P(f"Generated {s.generated} by vision-audit {s.tool.version}; comparison.json schema version "
               f"{s.schema_version}; runs {s.run_a.run_id} (A) and {s.run_b.run_id} (B). Differences are B - A, "
               f"with {s.n_boot} bootstrap resamples per run and group (each run resampled independently; "
               f"seed {s.seed}); groups below {s.min_group_size} images in a run are shown, not compared.",
               st["note"]),
             P("Model and data provenance", st["h2"]),
             _table(st, ["field", "run A", "run B"], _provenance_rows(s), width=W, col_frac=[1, 2.5, 2.5]),
             P("Findings", st["h2"]),
             P("Each line is a finding that leads run A or run B, read from the two runs' findings ledgers, with "
               "each run's own gap, interval and corrected p-value.", st["lead"])]
    story += [P(h, st["bullet"], bullet=True) for h in s.headline]
    story.append(KeepTogether([
        P("Worst group per attribute and metric: B - A", st["h2"]),
        P("Point and 95% interval of the difference; filled: the interval excludes 0.", st["lead"]),
        _image(png, W * 0.75, H * 0.6)]))
    story.append(P("Per group and metric", st["h2"]))
    story.append(P(f"Shaded rows are below the minimum size ({s.min_group_size}) in at least one run.", st["lead"]))
    story.append(_table(st, ["kind", "attribute", "group", "metric", "n A", "n B", "A", "A interval", "B", "B interval",
                             "B - A", "95% interval of B - A"],
                        [(r.kind, r.attribute, r.group, r.metric, fmt(r.n_a, "int"), fmt(r.n_b, "int"), fmt(r.a),
                          fmt_ci(r.a_ci_low, r.a_ci_high), fmt(r.b), fmt_ci(r.b_ci_low, r.b_ci_high),
                          fmt(r.diff, "diff"), fmt_ci(r.diff_ci_low, r.diff_ci_high, "diff")) for r in s.rows],
                        width=W, shaded=[r.small for r in s.rows]))
    story.append(P("Disparity tests side by side", st["h2"]))
    story.append(P("The range test of each whole-task metric in each run (max - min across groups, permutation test, "
                   "Holm-corrected within the run).", st["lead"]))
    story.append(_table(st, ["attribute", "metric", "A gap", "A interval", "A Holm p", "A after Holm", "B gap",
                             "B interval", "B Holm p", "B after Holm"],
                        [(d.attribute, d.key, fmt(d.a_difference), fmt_ci(d.a_ci_low, d.a_ci_high),
                          fmt(d.a_p_holm, "p"), result(d.a_difference, d.a_significant), fmt(d.b_difference),
                          fmt_ci(d.b_ci_low, d.b_ci_high), fmt(d.b_p_holm, "p"), result(d.b_difference, d.b_significant))
                         for d in s.disparities], width=W))
    story.append(P("Limitations", st["h2"]))
    story += [P(x, st["bullet"], bullet=True) for x in s.limitations]

    def _footer(canvas, doc_) -> None:  # noqa: ANN001
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.setFillGray(0.4)
        canvas.drawString(doc_.leftMargin, 0.7 * cm, f"vision-audit {title}"[:150])
        canvas.drawRightString(doc_.leftMargin + doc_.width, 0.7 * cm, f"page {doc_.page}")
        canvas.restoreState()

    doc.build(story, onFirstPage=_footer, onLaterPages=_footer)
