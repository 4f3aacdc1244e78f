"""The findings ledger: one ranked table of what a reader must know first about a run.

Every surface that states a conclusion (the CLI summary, report.html / .md / .pdf, the model
card, audit.json, the dashboard, the comparison and ``vision-audit check``) reads this table;
none composes its own headline. It is computed once, at the end of a run, from the analysis
tables the run wrote (:func:`build_findings`), and stored as the run's ``findings`` table.
Older runs without it get it computed on the fly by :meth:`audit.runs.Run.findings`, from the
same tables, so the answer is the same.

One row per tested (or untested) comparison:

========================  ===============================================================
column                    meaning
========================  ===============================================================
rank                      1 = first; significant after correction first, then by effect
kind                      performance, calibration, harmful_label, association,
                          retrieval_skew, embedding, region_mass, prediction_distribution,
                          faithfulness, sanity
attribute                 the group column (intersections joined with "×"), "" if none
metric                    the metric's name (``tpr``, ``accuracy``, ``effect_size`` ...)
scope                     ``overall``, ``macro`` (mean of one-vs-rest rows), ``class:<name>``,
                          ``method:<name>``, ``test:<name>``, ``query:<text>@<k>``
family                    range (max−min over k groups), pairwise, one_vs_rest, single
worst_group / best_group  the groups at the two ends (worst by the metric's direction)
worst_value / best_value  their values
gap                       the effect: best − worst for rates (≥ 0), d for associations ...
ci_low / ci_high          95% interval of ``gap`` (NaN where the analysis gives none)
n_worst / n_best          the metric's denominator in those groups
p_value / p_adj           raw and corrected p (NaN when not tested)
correction                how p_adj was made ("holm within range (m=42)", "none" ...)
significant               p_adj < alpha
status                    significant | not significant | not tested | flagged | descriptive
effect                    magnitude on a 0–1 scale used for ranking (see :func:`_effect`)
source                    the run table the row comes from
text                      the sentence every surface prints
========================  ===============================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from audit.fmt import fmt
from audit.stats.metrics import metric_definitions
from audit.stats.rules import ALPHA, MIN_GROUP_SIZE

FINDINGS_COLUMNS = [
    "rank", "kind", "attribute", "metric", "scope", "family", "worst_group", "best_group", "worst_value",
    "best_value", "gap", "ci_low", "ci_high", "n_worst", "n_best", "p_value", "p_adj", "correction",
    "significant", "status", "effect", "source", "text",
]

#: metrics for which a lower value is better (the worst group is the one with the highest value):
#: the group metrics' direction comes from the metric table (audit/stats/metrics.py)
LOWER_IS_BETTER = frozenset({d.name for d in metric_definitions() if d.higher_is_better is False}
                            | {"harmful_label_rate"})
#: metrics without a better direction: the two ends are "highest" and "lowest"
NO_DIRECTION = frozenset({"selection_rate", "share"})
#: display names: the group metrics' from the metric table, then the other analyses' metrics
METRIC_NAMES = {
    **{d.name: d.display_name for d in metric_definitions()},
    "harmful_label_rate": "harmful-label rate", "share": "share of predictions",
}
KIND_ORDER = ("performance", "calibration", "harmful_label", "association", "prediction_distribution",
              "region_mass", "retrieval_skew", "embedding", "faithfulness", "sanity")
#: what the model does to people and groups (its outputs) is read before how it does it (its
#: representation and explanations): tier 0 kinds rank before tier 1 kinds of the same status
OUTCOME_KINDS = frozenset({"performance", "calibration", "harmful_label", "association", "prediction_distribution"})
DEFAULT_ALPHA = ALPHA
DEFAULT_HEADLINE = 5

Tables = Mapping[str, pd.DataFrame]


# --------------------------------------------------------------------------- naming
def scope_of(cls: str) -> str:
    """``__all__`` -> overall, ``__macro__`` -> macro, a class name -> ``class:<name>``."""
    if cls == "__all__":
        return "overall"
    if cls == "__macro__":
        return "macro"
    return f"class:{cls}"


def metric_label(metric: str, scope: str = "overall") -> str:
    """A display name that never collides: the scope is part of it.

    Example:
        >>> metric_label("balanced_accuracy", "overall"), metric_label("balanced_accuracy", "macro")
        ('balanced accuracy', 'balanced accuracy (macro mean over classes, one-vs-rest)')
        >>> metric_label("tpr", "class:triangle")
        "recall (TPR) of class 'triangle'"
    """
    name = METRIC_NAMES.get(metric, metric.replace("_", " "))
    if scope == "overall" or not scope:
        return name
    if scope == "macro":
        return f"{name} (macro mean over classes, one-vs-rest)"
    if scope.startswith("class:"):
        return f"{name} of class {scope[6:]!r}"
    return f"{name} ({scope})"


def metric_key(metric: str, cls: str) -> str:
    """A short unique key for tables and plots: ``balanced_accuracy`` / ``balanced_accuracy[macro]`` /
    ``tpr[triangle]``."""
    if cls == "__all__":
        return metric
    if cls == "__macro__":
        return f"{metric}[macro]"
    return f"{metric}[{cls}]"


def fmt_p(p: Any) -> str:
    return fmt(p, "p")


def _n(v: Any) -> str:
    try:
        return str(int(v))
    except (TypeError, ValueError):
        return "?"


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def _verdict(sig: bool, status: str, correction: str) -> str:
    if status == "not tested":
        return "not tested"
    method = correction.split(" ")[0] if correction and correction != "none" else ""
    after = f" after {method.capitalize()} correction" if method in ("holm", "bh") else ""
    return ("significant" if sig else "not significant") + after


# --------------------------------------------------------------------------- sources
def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=FINDINGS_COLUMNS)


def _holm_within(p: np.ndarray) -> np.ndarray:
    from audit.stats.multiple import holm

    return holm(np.asarray(p, dtype=np.float64))


def _group_n(perf: pd.DataFrame | None) -> dict[tuple[str, str, str, str], int]:
    if perf is None or perf.empty:
        return {}
    keys = zip(perf["attribute"].astype(str), perf["group"].astype(str), perf["metric"].astype(str),
               perf["cls"].astype(str))
    return {k: int(n) for k, n in zip(keys, perf["n"])}


def _performance(tables: Tables, alpha: float) -> list[dict[str, Any]]:
    d = tables.get("disparities")
    if d is None or d.empty:
        return []
    ns = _group_n(tables.get("group_performance"))
    d = d.copy()
    if "family" not in d.columns:
        d["family"] = np.where(d["note"].astype(str).eq("pairwise"), "pairwise", "range")
    if "correction" not in d.columns:
        d["correction"] = [f"holm within {f} (m={int((d['family'] == f).sum())})" for f in d["family"]]
    # fnr = 1 - tpr: the same groups, the same gap and the same permutation test; keep one of them
    has_tpr = set(zip(d.loc[d.metric == "tpr", "attribute"], d.loc[d.metric == "tpr", "cls"]))
    dup = np.array([(a, c) in has_tpr for a, c in zip(d["attribute"], d["cls"])], dtype=bool)
    d = d[~((d["metric"] == "fnr").to_numpy() & dup)]
    out = []
    for r in d.to_dict("records"):
        metric, cls, attr = str(r["metric"]), str(r["cls"]), str(r["attribute"])
        scope = scope_of(cls)
        family = str(r.get("family") or "range")
        kind = "calibration" if metric == "ece" else "performance"
        lower = metric in LOWER_IS_BETTER
        hi_g, lo_g = str(r.get("max_group") or ""), str(r.get("min_group") or "")
        hi_v, lo_v = _num(r.get("max_value")), _num(r.get("min_value"))
        if family == "one_vs_rest":  # max_* is the group, min_* the rest; the gap is group - rest
            worst_g, best_g, worst_v, best_v = hi_g, lo_g, hi_v, lo_v
            gap = _num(r.get("difference"))
            lo, hi = _num(r.get("diff_ci_low")), _num(r.get("diff_ci_high"))
            if not lower:
                gap, lo, hi = -gap, -hi, -lo
        else:
            worst_g, best_g = (hi_g, lo_g) if lower else (lo_g, hi_g)
            worst_v, best_v = (hi_v, lo_v) if lower else (lo_v, hi_v)
            gap = _num(r.get("difference"))
            lo, hi = _num(r.get("diff_ci_low")), _num(r.get("diff_ci_high"))
        tested = math.isfinite(_num(r.get("p_value")))
        sig = bool(r.get("significant")) and tested
        status = "significant" if sig else ("not significant" if tested else "not tested")
        correction = str(r.get("correction") or "")
        row = dict(
            kind=kind, attribute=attr, metric=metric, scope=scope, family=family, worst_group=worst_g,
            best_group=best_g, worst_value=worst_v, best_value=best_v, gap=gap, ci_low=lo, ci_high=hi,
            n_worst=ns.get((attr, worst_g, metric, cls)), n_best=ns.get((attr, best_g, metric, cls)),
            p_value=_num(r.get("p_value")), p_adj=_num(r.get("p_holm")), correction=correction,
            significant=sig, status=status, source="disparities",
        )
        label = metric_label(metric, scope)
        excl = str(r.get("note") or "")
        if not tested:
            why = excl or "fewer than two groups large enough"
            row["text"] = f"{label} by {attr}: not tested ({why})."
        else:
            nw = "" if row["n_worst"] is None else f", n={_n(row['n_worst'])}"
            nb = "" if row["n_best"] is None else f", n={_n(row['n_best'])}"
            what = {"range": f"gap across {int(r.get('k') or 0)} groups", "pairwise": "pairwise gap",
                    "one_vs_rest": "gap to the rest"}.get(family, "gap")
            if worst_g == best_g:  # every group compared has the same value: name no "worst vs best" pair
                row["text"] = (f"{label} by {attr}: {fmt(worst_v)} in each of the {int(r.get('k') or 0)} groups "
                               f"compared (no gap), p_adj = {fmt_p(row['p_adj'])}, "
                               f"{_verdict(sig, status, correction)}.")
                out.append(row)
                continue
            row["text"] = (
                f"{label} by {attr}: {fmt(worst_v)} for {worst_g}{nw} vs {fmt(best_v)} for {best_g}{nb}; "
                f"{what} {fmt(gap)} (95% CI {fmt(lo)} to {fmt(hi)}), p_adj = {fmt_p(row['p_adj'])}, "
                f"{_verdict(sig, status, correction)}"
                + (f"; {excl}" if excl and excl != "pairwise" else "") + "."
            )
        out.append(row)
    return out


def _harmful(tables: Tables, alpha: float) -> list[dict[str, Any]]:
    d = tables.get("harmful_disparities")
    if d is None or d.empty:
        return []
    rates = tables.get("harmful_rates")
    val: dict[tuple[str, str], tuple[float, int]] = {}
    if rates is not None and not rates.empty:
        for r in rates.to_dict("records"):
            val[(str(r["attribute"]), str(r["group"]))] = (_num(r["rate"]), int(r["n"]))
    out = []
    m = len(d)
    for r in d.to_dict("records"):
        attr = str(r["attribute"])
        worst, best = str(r.get("max_group") or ""), str(r.get("min_group") or "")
        wv, wn = val.get((attr, worst), (float("nan"), None))
        bv, bn = val.get((attr, best), (float("nan"), None))
        tested = math.isfinite(_num(r.get("p_value")))
        sig = bool(r.get("significant")) and tested
        status = "significant" if sig else ("not significant" if tested else "not tested")
        correction = f"holm within harmful_label (m={m})"
        row = dict(kind="harmful_label", attribute=attr, metric="harmful_label_rate",
                   scope=f"labels:{r.get('label_set', '')}", family="range", worst_group=worst, best_group=best,
                   worst_value=wv, best_value=bv, gap=_num(r.get("difference")), ci_low=_num(r.get("diff_ci_low")),
                   ci_high=_num(r.get("diff_ci_high")), n_worst=wn, n_best=bn, p_value=_num(r.get("p_value")),
                   p_adj=_num(r.get("p_holm")), correction=correction, significant=sig, status=status,
                   source="harmful_disparities")
        if not tested:
            row["text"] = f"harmful-label rate by {attr}: not tested (fewer than two groups large enough)."
        elif worst == best:  # every group compared has the same rate
            row["text"] = (f"harmful-label rate ({r.get('label_set', '')}) by {attr}: {fmt(wv)} in each of the "
                           f"{int(r.get('k') or 0)} groups compared (no gap), p_adj = {fmt_p(row['p_adj'])}, "
                           f"{_verdict(sig, status, correction)}.")
        else:
            row["text"] = (
                f"harmful-label rate ({r.get('label_set', '')}) by {attr}: {fmt(wv)} for {worst}, n={_n(wn)} vs "
                f"{fmt(bv)} for {best}, n={_n(bn)}; gap {fmt(row['gap'])} (95% CI {fmt(row['ci_low'])} to "
                f"{fmt(row['ci_high'])}), p_adj = {fmt_p(row['p_adj'])}, {_verdict(sig, status, correction)}."
            )
        out.append(row)
    return out


def _association(tables: Tables, alpha: float) -> list[dict[str, Any]]:
    a = tables.get("association")
    if a is None or a.empty:
        return []
    p = a["p_value"].to_numpy(np.float64)
    padj = _holm_within(p)
    out = []
    for r, pa in zip(a.to_dict("records"), padj):
        tested = math.isfinite(_num(r.get("p_value")))
        sig = bool(tested and pa < alpha)
        correction = f"holm within association (m={len(a)})"
        d = _num(r.get("effect_size"))
        y = str(r.get("Y") or "")
        lo = _num(r.get("ci_low")) if "ci_low" in r else float("nan")
        hi = _num(r.get("ci_high")) if "ci_high" in r else float("nan")
        row = dict(kind="association", attribute=str(r["attribute"]), metric="effect_size",
                   scope=f"test:{r['test']}", family="single" if not y else "pairwise",
                   worst_group=str(r.get("X") or ""), best_group=y, worst_value=float("nan"),
                   best_value=float("nan"), gap=d, ci_low=lo, ci_high=hi, n_worst=r.get("n_x"),
                   n_best=r.get("n_y") if y else None, p_value=_num(r.get("p_value")), p_adj=float(pa),
                   correction=correction, significant=sig,
                   status="significant" if sig else ("not significant" if tested else "not tested"),
                   source="association")
        vs = f" vs {y} (n={_n(r.get('n_y'))})" if y else ""
        a_name, b_name = str(r.get("A") or ""), str(r.get("B") or "")
        if a_name == f"{r['test']} A" and b_name == f"{r['test']} B":  # sets named after the test
            a_name, b_name = "text set A", "text set B"
        ci = f" (95% CI {fmt(lo, 'effect')} to {fmt(hi, 'effect')})" if math.isfinite(lo) else ""
        row["text"] = (
            f"association {r['test']} by {r['attribute']}: images of {r.get('X')} (n={_n(r.get('n_x'))}){vs}, "
            f"closer to {a_name} than to {b_name}: effect size d = {fmt(d, 'effect')}{ci}, "
            f"p_adj = {fmt_p(pa)}, {_verdict(sig, row['status'], correction)}."
        )
        out.append(row)
    return out


def _prediction_distribution(tables: Tables, alpha: float) -> list[dict[str, Any]]:
    d = tables.get("prediction_disparities")
    if d is None or d.empty:
        return []
    dist = tables.get("prediction_distribution")
    ns: dict[tuple[str, str], int] = {}
    if dist is not None and not dist.empty:
        for r in dist.drop_duplicates(["attribute", "group"]).to_dict("records"):
            ns[(str(r["attribute"]), str(r["group"]))] = int(r["n"])
    out = []
    m = len(d)
    for r in d.to_dict("records"):
        attr, cls = str(r["attribute"]), str(r.get("cls", "__all__"))
        tested = math.isfinite(_num(r.get("p_value")))
        sig = bool(r.get("significant")) and tested
        status = "significant" if sig else ("not significant" if tested else "not tested")
        correction = f"holm within prediction_distribution (m={m})"
        hi_g, lo_g = str(r.get("max_group") or ""), str(r.get("min_group") or "")
        row = dict(kind="prediction_distribution", attribute=attr, metric="share",
                   scope="overall" if cls == "__all__" else f"class:{cls}", family="range", worst_group=hi_g,
                   best_group=lo_g, worst_value=_num(r.get("max_value")), best_value=_num(r.get("min_value")),
                   gap=_num(r.get("difference")), ci_low=_num(r.get("diff_ci_low")),
                   ci_high=_num(r.get("diff_ci_high")), n_worst=ns.get((attr, hi_g)), n_best=ns.get((attr, lo_g)),
                   p_value=_num(r.get("p_value")), p_adj=_num(r.get("p_holm")), correction=correction,
                   significant=sig, status=status, source="prediction_disparities")
        if not tested:
            row["text"] = f"predicted classes by {attr}: not tested ({r.get('note') or 'too few groups'})."
        elif cls == "__all__":
            row["text"] = (f"predicted classes by {attr}: the distribution of predictions differs between groups "
                           f"(distance {fmt(row['gap'])}), p_adj = {fmt_p(row['p_adj'])}, "
                           f"{_verdict(sig, status, correction)}.")
        else:
            row["text"] = (
                f"share predicted {cls!r} by {attr}: {fmt(row['worst_value'])} for {hi_g}, n={_n(row['n_worst'])} "
                f"vs {fmt(row['best_value'])} for {lo_g}, n={_n(row['n_best'])}; gap {fmt(row['gap'])} (95% CI "
                f"{fmt(row['ci_low'])} to {fmt(row['ci_high'])}), p_adj = {fmt_p(row['p_adj'])}, "
                f"{_verdict(sig, status, correction)}.")
        out.append(row)
    return out


def _region_mass(tables: Tables, alpha: float, min_group_size: int) -> list[dict[str, Any]]:
    rm = tables.get("region_mass")
    if rm is None or rm.empty:
        return []
    rows = []
    for (method, attr), g in rm.groupby(["method", "attribute"], sort=True):
        ok = g[~g["small"].astype(bool)]
        small = g[g["small"].astype(bool)]
        p = _num(ok["p_value"].iloc[0]) if len(ok) and "p_value" in ok else float("nan")
        rows.append((str(method), str(attr), ok, small, p))
    padj = _holm_within(np.array([r[4] for r in rows], dtype=np.float64)) if rows else []
    out = []
    for (method, attr, ok, small, p), pa in zip(rows, padj):
        tested = len(ok) >= 2 and math.isfinite(p)
        sig = bool(tested and pa < alpha)
        correction = f"holm within region_mass (m={len(rows)})"
        excl = (f"{len(small)} group(s) below the minimum size {min_group_size} not compared: "
                + ", ".join(f"{s.group} (n={int(s.n)})" for s in small.itertuples())) if len(small) else ""
        row = dict(kind="region_mass", attribute=attr, metric="mass_in_mask", scope=f"method:{method}",
                   family="range", correction=correction, significant=sig, p_value=p if tested else float("nan"),
                   p_adj=float(pa) if tested else float("nan"), source="region_mass",
                   status="significant" if sig else ("not significant" if tested else "not tested"))
        if len(ok) >= 1:
            w = ok.loc[ok["value"].idxmin()]
            b = ok.loc[ok["value"].idxmax()]
            row.update(worst_group=str(w["group"]), best_group=str(b["group"]), worst_value=_num(w["value"]),
                       best_value=_num(b["value"]), gap=_num(b["value"]) - _num(w["value"]), n_worst=int(w["n"]),
                       n_best=int(b["n"]))
            if "diff_ci_low" in ok.columns:  # the attribute's gap interval, repeated on its rows
                row.update(ci_low=_num(ok["diff_ci_low"].iloc[0]), ci_high=_num(ok["diff_ci_high"].iloc[0]))
        if not tested:
            row["text"] = (f"share of {method}'s map on the object by {attr}: not tested "
                           f"({excl or 'fewer than two groups large enough'}).")
        else:
            ci = (f" (95% CI {fmt(row.get('ci_low'))} to {fmt(row.get('ci_high'))})"
                  if math.isfinite(_num(row.get("ci_low"))) else "")
            row["text"] = (
                f"share of {method}'s map on the object by {attr}: {fmt(row['worst_value'])} for "
                f"{row['worst_group']}, n={_n(row['n_worst'])} vs {fmt(row['best_value'])} for {row['best_group']}, "
                f"n={_n(row['n_best'])}; gap {fmt(row['gap'])}{ci}, p_adj = {fmt_p(pa)}, "
                f"{_verdict(sig, row['status'], correction)}" + (f"; {excl}" if excl else "") + ".")
        out.append(row)
    return out


def _retrieval(tables: Tables) -> list[dict[str, Any]]:
    rs = tables.get("retrieval_skew")
    if rs is None or rs.empty:
        return []
    out = []
    for (q, attr, k), g in rs.groupby(["query", "attribute", "k"], sort=False):
        over = g.loc[g["skew"].idxmax()]
        under = g.loc[g["skew"].idxmin()]
        mx, mn = _num(over["skew"]), _num(under["skew"])
        out.append(dict(
            kind="retrieval_skew", attribute=str(attr), metric="skew", scope=f"query:{q}@{int(k)}",
            family="range", worst_group=str(over["group"]), best_group=str(under["group"]), worst_value=mx,
            best_value=mn, gap=mx - mn, ci_low=float("nan"), ci_high=float("nan"), n_worst=None, n_best=None,
            p_value=float("nan"), p_adj=float("nan"), correction="none", significant=False, status="descriptive",
            source="retrieval_skew",
            text=(f"retrieval '{q}' top-{int(k)} by {attr}: {over['group']} over-represented (log-ratio skew "
                  f"{fmt(mx, 'effect')}), {under['group']} under-represented ({fmt(mn, 'effect')}) against the {over['target']} "
                  f"target; NDKL {fmt(over['ndkl'])}; descriptive (no test)."),
        ))
    return out


def _embedding(tables: Tables, alpha: float) -> list[dict[str, Any]]:
    out = []
    lp = tables.get("linear_probe")
    if lp is not None and not lp.empty:
        padj = _holm_within(lp["p_value"].to_numpy(np.float64))
        for r, pa in zip(lp.to_dict("records"), padj):
            tested = math.isfinite(_num(r.get("p_value")))
            sig = bool(tested and pa < alpha)
            corr = f"holm within linear_probe (m={len(lp)})"
            chance = _num(r.get("null_mean"))
            out.append(dict(
                kind="embedding", attribute=str(r["attribute"]), metric="probe_balanced_accuracy", scope="overall",
                family="single", worst_group="", best_group="", worst_value=chance,
                best_value=_num(r.get("balanced_accuracy")), gap=_num(r.get("balanced_accuracy")) - chance,
                ci_low=_num(r.get("bacc_ci_low")) - chance, ci_high=_num(r.get("bacc_ci_high")) - chance,
                n_worst=None, n_best=r.get("n"), p_value=_num(r.get("p_value")), p_adj=float(pa), correction=corr,
                significant=sig, status="significant" if sig else ("not significant" if tested else "not tested"),
                source="linear_probe",
                text=(f"embeddings encode {r['attribute']}: a linear probe recovers it with balanced accuracy "
                      f"{fmt(r.get('balanced_accuracy'))} (95% CI {fmt(r.get('bacc_ci_low'))} to "
                      f"{fmt(r.get('bacc_ci_high'))}; permutation null mean {fmt(chance)}, n={_n(r.get('n'))}), "
                      f"p_adj = {fmt_p(pa)}, {_verdict(sig, 'tested', corr)}."),
            ))
    mmd = tables.get("mmd")
    if mmd is not None and not mmd.empty:
        padj = _holm_within(mmd["p_value"].to_numpy(np.float64))
        for attr, g in mmd.assign(_padj=padj).groupby("attribute", sort=False):
            sig_rows = g[g["_padj"] < alpha]
            corr = f"holm within mmd (m={len(mmd)})"
            tested = bool(g["_padj"].notna().any())
            top = g.loc[g["_padj"].idxmin()] if tested else g.iloc[0]
            sig = bool(len(sig_rows))
            out.append(dict(
                kind="embedding", attribute=str(attr), metric="mmd2", scope="overall", family="pairwise",
                worst_group=str(top["group_a"]), best_group=str(top["group_b"]), worst_value=float("nan"),
                best_value=float("nan"), gap=_num(top["mmd2"]), ci_low=float("nan"), ci_high=float("nan"),
                n_worst=int(top["n_a"]), n_best=int(top["n_b"]), p_value=_num(top["p_value"]),
                p_adj=_num(top["_padj"]), correction=corr, significant=sig,
                status="significant" if sig else ("not significant" if tested else "not tested"), source="mmd",
                text=(f"embedding distributions by {attr}: not tested ({top['estimator']})." if not tested else
                      f"embedding distributions by {attr}: {len(sig_rows)} of {len(g)} group pairs differ (MMD test); "
                      f"strongest {top['group_a']} (n={_n(top['n_a'])}) vs {top['group_b']} (n={_n(top['n_b'])}), "
                      f"MMD² {fmt(top['mmd2'], 'sig')}, p_adj = {fmt_p(top['_padj'])}, "
                      f"{_verdict(sig, 'tested', corr)}."),
            ))
    return out


def _faithfulness(tables: Tables, alpha: float) -> list[dict[str, Any]]:
    fv = tables.get("faithfulness_verdicts")
    out = []
    flagged: set[str] = set()
    sanity = tables.get("sanity")
    if sanity is not None and not sanity.empty:
        flagged = set(sanity.loc[sanity["flagged"].astype(bool), "method"].astype(str))
    if fv is not None and not fv.empty:
        for method, g in fv.groupby("method", sort=False):
            verdict = str(g["verdict"].iloc[0])
            main = g[g["score"].astype(str) == "deletion_auc"] if "score" in g else g
            r = (main if len(main) else g).iloc[0]
            reason = str(r.get("reason") or "")
            sig = bool(r.get("better")) if "better" in r else False
            out.append(dict(
                kind="faithfulness", attribute="", metric=str(r.get("score", "deletion_auc")),
                scope=f"method:{method}", family="paired", worst_group="", best_group="",
                worst_value=_num(r.get("random_value")), best_value=_num(r.get("value")),
                gap=_num(r.get("difference")), ci_low=_num(r.get("ci_low")), ci_high=_num(r.get("ci_high")),
                n_worst=None, n_best=r.get("n"), p_value=_num(r.get("p_value")), p_adj=_num(r.get("p_adj")),
                correction="holm within faithfulness", significant=sig,
                status="flagged" if verdict == "fails the sanity check" else
                ("significant" if sig else "not significant"),
                source="faithfulness_verdicts",
                text=(f"explanation method {method}: {verdict}"
                      + (f" ({reason})" if reason else "")
                      + (f"; {r.get('score', 'deletion AUC')} {fmt(r.get('value'))} vs random "
                         f"{fmt(r.get('random_value'))}, difference {fmt(r.get('difference'))} (95% CI "
                         f"{fmt(r.get('ci_low'))} to {fmt(r.get('ci_high'))}, n={_n(r.get('n'))}, "
                         f"{r.get('baseline', '')} baseline), p_adj = {fmt_p(r.get('p_adj'))}"
                         if math.isfinite(_num(r.get("value"))) else "")
                      + "."),
            ))
        flagged -= set(fv["method"].astype(str))
    for m in sorted(flagged):
        s = sanity[(sanity["method"].astype(str) == m) & sanity["flagged"].astype(bool)]
        worst = s.loc[s["step"].idxmax()]
        out.append(dict(
            kind="sanity", attribute="", metric="spearman", scope=f"method:{m}", family="single", worst_group="",
            best_group="", worst_value=float("nan"), best_value=_num(worst["spearman"]), gap=_num(worst["spearman"]),
            ci_low=_num(worst["ci_low"]), ci_high=_num(worst["ci_high"]), n_worst=None, n_best=worst.get("n"),
            p_value=float("nan"), p_adj=float("nan"), correction="none", significant=False, status="flagged",
            source="sanity",
            text=(f"explanation method {m}: fails the model-randomisation sanity check (Spearman "
                  f"{fmt(worst['spearman'])}, 95% CI {fmt(worst['ci_low'])} to {fmt(worst['ci_high'])}, after "
                  f"re-initialising blocks {worst['randomized_blocks']}); its maps say little about the model."),
        ))
    return out


# --------------------------------------------------------------------------- ranking
def _effect(row: Mapping[str, Any]) -> float:
    """A 0–1 magnitude for ranking: |gap| for rates and shares, |d| / 2 for Cohen's d (whose range is
    [-2, 2]), 1 − exp(−|skew|) for a log-ratio skew, balanced accuracy above chance for a probe;
    0 for rows without a comparable magnitude (MMD², faithfulness, sanity)."""
    kind, gap = row["kind"], abs(_num(row.get("gap")))
    if not math.isfinite(gap):
        return 0.0
    if kind in ("performance", "calibration", "harmful_label", "prediction_distribution", "region_mass"):
        return min(gap, 1.0)
    if kind == "association":
        return min(gap / 2.0, 1.0)
    if kind == "retrieval_skew":
        return 1.0 - math.exp(-gap)
    if kind == "embedding" and row["metric"] == "probe_balanced_accuracy":
        return min(gap, 1.0)
    return 0.0


def build_findings(
    tables: Tables, *, alpha: float = DEFAULT_ALPHA, min_group_size: int = MIN_GROUP_SIZE
) -> pd.DataFrame:
    """The ranked ledger from a run's analysis tables (``{name: DataFrame}``; missing ones are skipped).

    Ranking: significant findings first (after each family's correction), then flagged methods,
    then not significant, descriptive and untested rows; within each status, findings about the
    model's outputs (:data:`OUTCOME_KINDS`: performance, calibration, harmful labels, associations,
    prediction shares) before findings about its representation and explanations; then by
    :func:`_effect` (largest first), then by kind in :data:`KIND_ORDER`. Ties keep the analysis
    order, so the ledger is deterministic.

    Returns:
        DataFrame with columns :data:`FINDINGS_COLUMNS`, ``rank`` starting at 1.
    """
    rows: list[dict[str, Any]] = []
    rows += _performance(tables, alpha)
    rows += _harmful(tables, alpha)
    rows += _association(tables, alpha)
    labelled = tables.get("disparities") is not None and not tables["disparities"].empty
    if not labelled:  # with labels the same shares are the disparities' selection_rate rows (one test, not two)
        rows += _prediction_distribution(tables, alpha)
    rows += _region_mass(tables, alpha, min_group_size)
    rows += _retrieval(tables)
    rows += _embedding(tables, alpha)
    rows += _faithfulness(tables, alpha)
    if not rows:
        return _empty()
    status_order = {"significant": 0, "flagged": 1, "not significant": 2, "descriptive": 3, "not tested": 4}
    for i, r in enumerate(rows):
        r["effect"] = _effect(r)
        tier = 0 if r["kind"] in OUTCOME_KINDS else 1
        r["_order"] = (status_order.get(r["status"], 5), tier, -r["effect"], KIND_ORDER.index(r["kind"]), i)
    rows.sort(key=lambda r: r["_order"])
    df = pd.DataFrame(rows).drop(columns="_order")
    for c in FINDINGS_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    df["rank"] = np.arange(1, len(df) + 1)
    df = df[FINDINGS_COLUMNS]
    for c in ("n_worst", "n_best"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in ("worst_value", "best_value", "gap", "ci_low", "ci_high", "p_value", "p_adj", "effect"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("kind", "attribute", "metric", "scope", "family", "worst_group", "best_group", "correction",
              "status", "source", "text"):
        df[c] = df[c].fillna("").astype(str)
    df["significant"] = df["significant"].fillna(False).astype(bool)
    return df.reset_index(drop=True)


#: the tables build_findings reads
SOURCE_TABLES = ("disparities", "group_performance", "harmful_disparities", "harmful_rates", "association",
                 "prediction_disparities", "prediction_distribution", "region_mass", "retrieval_skew",
                 "linear_probe", "mmd", "faithfulness_verdicts", "sanity")


def findings_for_run(run: Any) -> pd.DataFrame:
    """Compute the ledger of an opened :class:`~audit.runs.Run` from its tables (no model needed)."""
    tables = {t: run.table(t) for t in SOURCE_TABLES if run.has_table(t)}
    stats = (run.meta.get("config") or {}).get("stats") or {}
    return build_findings(tables, alpha=float(stats.get("alpha", DEFAULT_ALPHA)),
                          min_group_size=int(stats.get("min_group_size", MIN_GROUP_SIZE)))


def headline(findings: pd.DataFrame, n: int = DEFAULT_HEADLINE) -> list[str]:
    """The first ``n`` sentences of the ledger: what every surface leads with."""
    return [str(t) for t in findings.sort_values("rank")["text"].head(n)]


def summary_line(findings: pd.DataFrame) -> str:
    """One sentence counting the ledger, e.g. "3 of 41 findings are significant after correction"."""
    if findings.empty:
        return "No finding could be computed: the run has no group columns, labels or CLIP tests."
    tested = findings[findings["status"].isin(["significant", "not significant"])]
    sig = int(findings["significant"].sum())
    flagged = int((findings["status"] == "flagged").sum())
    untested = int((findings["status"] == "not tested").sum())
    parts = [f"{sig} of {len(tested)} tested comparisons are significant after correction"]
    if flagged:
        parts.append(f"{flagged} explanation method(s) flagged")
    if untested:
        parts.append(f"{untested} comparison(s) could not be tested")
    return "; ".join(parts) + "."


def format_findings(findings: pd.DataFrame, *, name: str, n: int = DEFAULT_HEADLINE) -> str:
    """The plain-text findings block of the CLI and the demo: the count line, then the first sentences."""
    lines = [f"{name}: {summary_line(findings)}"]
    lines += [f"  {i}. {h}" for i, h in enumerate(headline(findings, n), start=1)]
    return "\n".join(lines)
