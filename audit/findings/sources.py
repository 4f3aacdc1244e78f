"""One builder per analysis table: its rows of the findings ledger, each with its sentence."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from audit.findings.naming import (
    FINDINGS_COLUMNS,
    LOWER_IS_BETTER,
    Tables,
    as_float,
    fmt_n,
    fmt_p,
    gap_sentence,
    metric_label,
    scope_of,
    status_of,
    verdict_phrase,
)
from audit.fmt import fmt


# --------------------------------------------------------------------------- sources
def empty_ledger() -> pd.DataFrame:
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


def performance_rows(tables: Tables, alpha: float) -> list[dict[str, Any]]:
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
        hi_v, lo_v = as_float(r.get("max_value")), as_float(r.get("min_value"))
        if family == "one_vs_rest":  # max_* is the group, min_* the rest; the gap is group - rest
            worst_g, best_g, worst_v, best_v = hi_g, lo_g, hi_v, lo_v
            gap = as_float(r.get("difference"))
            lo, hi = as_float(r.get("diff_ci_low")), as_float(r.get("diff_ci_high"))
            if not lower:
                gap, lo, hi = -gap, -hi, -lo
        else:
            worst_g, best_g = (hi_g, lo_g) if lower else (lo_g, hi_g)
            worst_v, best_v = (hi_v, lo_v) if lower else (lo_v, hi_v)
            gap = as_float(r.get("difference"))
            lo, hi = as_float(r.get("diff_ci_low")), as_float(r.get("diff_ci_high"))
        tested = math.isfinite(as_float(r.get("p_value")))
        sig = bool(r.get("significant")) and tested
        status = status_of(sig, tested)
        correction = str(r.get("correction") or "")
        row = dict(
            kind=kind, attribute=attr, metric=metric, scope=scope, family=family, worst_group=worst_g,
            best_group=best_g, worst_value=worst_v, best_value=best_v, gap=gap, ci_low=lo, ci_high=hi,
            n_worst=ns.get((attr, worst_g, metric, cls)), n_best=ns.get((attr, best_g, metric, cls)),
            p_value=as_float(r.get("p_value")), p_adj=as_float(r.get("p_holm")), correction=correction,
            significant=sig, status=status, source="disparities",
        )
        label = metric_label(metric, scope)
        excl = str(r.get("note") or "")
        if not tested:
            why = excl or "fewer than two groups large enough"
            row["text"] = f"{label} by {attr}: not tested ({why})."
        else:
            what = {"range": f"gap across {int(r.get('k') or 0)} groups", "pairwise": "pairwise gap",
                    "one_vs_rest": "gap to the rest"}.get(family, "gap")
            row["text"] = gap_sentence(f"{label} by {attr}", row, what=what, k=int(r.get("k") or 0),
                                       extra=excl if excl != "pairwise" else "")
        out.append(row)
    return out


def harmful_rows(tables: Tables, alpha: float) -> list[dict[str, Any]]:
    d = tables.get("harmful_disparities")
    if d is None or d.empty:
        return []
    rates = tables.get("harmful_rates")
    val: dict[tuple[str, str], tuple[float, int]] = {}
    if rates is not None and not rates.empty:
        for r in rates.to_dict("records"):
            val[(str(r["attribute"]), str(r["group"]))] = (as_float(r["rate"]), int(r["n"]))
    out = []
    m = len(d)
    for r in d.to_dict("records"):
        attr = str(r["attribute"])
        worst, best = str(r.get("max_group") or ""), str(r.get("min_group") or "")
        wv, wn = val.get((attr, worst), (float("nan"), None))
        bv, bn = val.get((attr, best), (float("nan"), None))
        tested = math.isfinite(as_float(r.get("p_value")))
        sig = bool(r.get("significant")) and tested
        status = status_of(sig, tested)
        correction = f"holm within harmful_label (m={m})"
        row = dict(kind="harmful_label", attribute=attr, metric="harmful_label_rate",
                   scope=f"labels:{r.get('label_set', '')}", family="range", worst_group=worst, best_group=best,
                   worst_value=wv, best_value=bv, gap=as_float(r.get("difference")), ci_low=as_float(r.get("diff_ci_low")),
                   ci_high=as_float(r.get("diff_ci_high")), n_worst=wn, n_best=bn, p_value=as_float(r.get("p_value")),
                   p_adj=as_float(r.get("p_holm")), correction=correction, significant=sig, status=status,
                   source="harmful_disparities")
        if not tested:
            row["text"] = f"harmful-label rate by {attr}: not tested (fewer than two groups large enough)."
        else:
            row["text"] = gap_sentence(f"harmful-label rate ({r.get('label_set', '')}) by {attr}", row,
                                       k=int(r.get("k") or 0))
        out.append(row)
    return out


def association_rows(tables: Tables, alpha: float) -> list[dict[str, Any]]:
    a = tables.get("association")
    if a is None or a.empty:
        return []
    p = a["p_value"].to_numpy(np.float64)
    padj = _holm_within(p)
    out = []
    for r, pa in zip(a.to_dict("records"), padj):
        tested = math.isfinite(as_float(r.get("p_value")))
        sig = bool(tested and pa < alpha)
        correction = f"holm within association (m={len(a)})"
        d = as_float(r.get("effect_size"))
        y = str(r.get("Y") or "")
        lo = as_float(r.get("ci_low")) if "ci_low" in r else float("nan")
        hi = as_float(r.get("ci_high")) if "ci_high" in r else float("nan")
        row = dict(kind="association", attribute=str(r["attribute"]), metric="effect_size",
                   scope=f"test:{r['test']}", family="single" if not y else "pairwise",
                   worst_group=str(r.get("X") or ""), best_group=y, worst_value=float("nan"),
                   best_value=float("nan"), gap=d, ci_low=lo, ci_high=hi, n_worst=r.get("n_x"),
                   n_best=r.get("n_y") if y else None, p_value=as_float(r.get("p_value")), p_adj=float(pa),
                   correction=correction, significant=sig,
                   status=status_of(sig, tested),
                   source="association")
        vs = f" vs {y} (n={fmt_n(r.get('n_y'))})" if y else ""
        a_name, b_name = str(r.get("A") or ""), str(r.get("B") or "")
        if a_name == f"{r['test']} A" and b_name == f"{r['test']} B":  # sets named after the test
            a_name, b_name = "text set A", "text set B"
        ci = f" (95% CI {fmt(lo, 'effect')} to {fmt(hi, 'effect')})" if math.isfinite(lo) else ""
        row["text"] = (
            f"association {r['test']} by {r['attribute']}: images of {r.get('X')} (n={fmt_n(r.get('n_x'))}){vs}, "
            f"closer to {a_name} than to {b_name}: effect size d = {fmt(d, 'effect')}{ci}, "
            f"p_adj = {fmt_p(pa)}, {verdict_phrase(sig, row['status'], correction)}."
        )
        out.append(row)
    return out


def prediction_rows(tables: Tables, alpha: float) -> list[dict[str, Any]]:
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
        tested = math.isfinite(as_float(r.get("p_value")))
        sig = bool(r.get("significant")) and tested
        status = status_of(sig, tested)
        correction = f"holm within prediction_distribution (m={m})"
        hi_g, lo_g = str(r.get("max_group") or ""), str(r.get("min_group") or "")
        row = dict(kind="prediction_distribution", attribute=attr, metric="share",
                   scope="overall" if cls == "__all__" else f"class:{cls}", family="range", worst_group=hi_g,
                   best_group=lo_g, worst_value=as_float(r.get("max_value")), best_value=as_float(r.get("min_value")),
                   gap=as_float(r.get("difference")), ci_low=as_float(r.get("diff_ci_low")),
                   ci_high=as_float(r.get("diff_ci_high")), n_worst=ns.get((attr, hi_g)), n_best=ns.get((attr, lo_g)),
                   p_value=as_float(r.get("p_value")), p_adj=as_float(r.get("p_holm")), correction=correction,
                   significant=sig, status=status, source="prediction_disparities")
        if not tested:
            row["text"] = f"predicted classes by {attr}: not tested ({r.get('note') or 'too few groups'})."
        elif cls == "__all__":
            row["text"] = (f"predicted classes by {attr}: the distribution of predictions differs between groups "
                           f"(distance {fmt(row['gap'])}), p_adj = {fmt_p(row['p_adj'])}, "
                           f"{verdict_phrase(sig, status, correction)}.")
        else:
            row["text"] = gap_sentence(f"share predicted {cls!r} by {attr}", row)
        out.append(row)
    return out


def region_mass_rows(tables: Tables, alpha: float, min_group_size: int) -> list[dict[str, Any]]:
    rm = tables.get("region_mass")
    if rm is None or rm.empty:
        return []
    rows = []
    for (method, attr), g in rm.groupby(["method", "attribute"], sort=True):
        ok = g[~g["small"].astype(bool)]
        small = g[g["small"].astype(bool)]
        p = as_float(ok["p_value"].iloc[0]) if len(ok) and "p_value" in ok else float("nan")
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
                   status=status_of(sig, tested))
        if len(ok) >= 1:
            w = ok.loc[ok["value"].idxmin()]
            b = ok.loc[ok["value"].idxmax()]
            row.update(worst_group=str(w["group"]), best_group=str(b["group"]), worst_value=as_float(w["value"]),
                       best_value=as_float(b["value"]), gap=as_float(b["value"]) - as_float(w["value"]), n_worst=int(w["n"]),
                       n_best=int(b["n"]))
            if "diff_ci_low" in ok.columns:  # the attribute's gap interval, repeated on its rows
                row.update(ci_low=as_float(ok["diff_ci_low"].iloc[0]), ci_high=as_float(ok["diff_ci_high"].iloc[0]))
        if not tested:
            row["text"] = (f"share of {method}'s map on the object by {attr}: not tested "
                           f"({excl or 'fewer than two groups large enough'}).")
        else:
            row["text"] = gap_sentence(f"share of {method}'s map on the object by {attr}", row, extra=excl)
        out.append(row)
    return out


def retrieval_rows(tables: Tables) -> list[dict[str, Any]]:
    rs = tables.get("retrieval_skew")
    if rs is None or rs.empty:
        return []
    out = []
    for (q, attr, k), g in rs.groupby(["query", "attribute", "k"], sort=False):
        over = g.loc[g["skew"].idxmax()]
        under = g.loc[g["skew"].idxmin()]
        mx, mn = as_float(over["skew"]), as_float(under["skew"])
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


def embedding_rows(tables: Tables, alpha: float) -> list[dict[str, Any]]:
    out = []
    lp = tables.get("linear_probe")
    if lp is not None and not lp.empty:
        padj = _holm_within(lp["p_value"].to_numpy(np.float64))
        for r, pa in zip(lp.to_dict("records"), padj):
            tested = math.isfinite(as_float(r.get("p_value")))
            sig = bool(tested and pa < alpha)
            corr = f"holm within linear_probe (m={len(lp)})"
            chance = as_float(r.get("null_mean"))
            out.append(dict(
                kind="embedding", attribute=str(r["attribute"]), metric="probe_balanced_accuracy", scope="overall",
                family="single", worst_group="", best_group="", worst_value=chance,
                best_value=as_float(r.get("balanced_accuracy")), gap=as_float(r.get("balanced_accuracy")) - chance,
                ci_low=as_float(r.get("bacc_ci_low")) - chance, ci_high=as_float(r.get("bacc_ci_high")) - chance,
                n_worst=None, n_best=r.get("n"), p_value=as_float(r.get("p_value")), p_adj=float(pa), correction=corr,
                significant=sig, status=status_of(sig, tested),
                source="linear_probe",
                text=(f"embeddings encode {r['attribute']}: a linear probe recovers it with balanced accuracy "
                      f"{fmt(r.get('balanced_accuracy'))} (95% CI {fmt(r.get('bacc_ci_low'))} to "
                      f"{fmt(r.get('bacc_ci_high'))}; permutation null mean {fmt(chance)}, n={fmt_n(r.get('n'))}), "
                      f"p_adj = {fmt_p(pa)}, {verdict_phrase(sig, 'tested', corr)}."),
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
                best_value=float("nan"), gap=as_float(top["mmd2"]), ci_low=float("nan"), ci_high=float("nan"),
                n_worst=int(top["n_a"]), n_best=int(top["n_b"]), p_value=as_float(top["p_value"]),
                p_adj=as_float(top["_padj"]), correction=corr, significant=sig,
                status=status_of(sig, tested), source="mmd",
                text=(f"embedding distributions by {attr}: not tested ({top['estimator']})." if not tested else
                      f"embedding distributions by {attr}: {len(sig_rows)} of {len(g)} group pairs differ (MMD test); "
                      f"strongest {top['group_a']} (n={fmt_n(top['n_a'])}) vs {top['group_b']} (n={fmt_n(top['n_b'])}), "
                      f"MMD² {fmt(top['mmd2'], 'sig')}, p_adj = {fmt_p(top['_padj'])}, "
                      f"{verdict_phrase(sig, 'tested', corr)}."),
            ))
    return out


def faithfulness_rows(tables: Tables, alpha: float) -> list[dict[str, Any]]:
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
                worst_value=as_float(r.get("random_value")), best_value=as_float(r.get("value")),
                gap=as_float(r.get("difference")), ci_low=as_float(r.get("ci_low")), ci_high=as_float(r.get("ci_high")),
                n_worst=None, n_best=r.get("n"), p_value=as_float(r.get("p_value")), p_adj=as_float(r.get("p_adj")),
                correction="holm within faithfulness", significant=sig,
                status="flagged" if verdict == "fails the sanity check" else
                ("significant" if sig else "not significant"),
                source="faithfulness_verdicts",
                text=(f"explanation method {method}: {verdict}"
                      + (f" ({reason})" if reason else "")
                      + (f"; {r.get('score', 'deletion AUC')} {fmt(r.get('value'))} vs random "
                         f"{fmt(r.get('random_value'))}, difference {fmt(r.get('difference'))} (95% CI "
                         f"{fmt(r.get('ci_low'))} to {fmt(r.get('ci_high'))}, n={fmt_n(r.get('n'))}, "
                         f"{r.get('baseline', '')} baseline), p_adj = {fmt_p(r.get('p_adj'))}"
                         if math.isfinite(as_float(r.get("value"))) else "")
                      + "."),
            ))
        flagged -= set(fv["method"].astype(str))
    for m in sorted(flagged):
        s = sanity[(sanity["method"].astype(str) == m) & sanity["flagged"].astype(bool)]
        worst = s.loc[s["step"].idxmax()]
        out.append(dict(
            kind="sanity", attribute="", metric="spearman", scope=f"method:{m}", family="single", worst_group="",
            best_group="", worst_value=float("nan"), best_value=as_float(worst["spearman"]), gap=as_float(worst["spearman"]),
            ci_low=as_float(worst["ci_low"]), ci_high=as_float(worst["ci_high"]), n_worst=None, n_best=worst.get("n"),
            p_value=float("nan"), p_adj=float("nan"), correction="none", significant=False, status="flagged",
            source="sanity",
            text=(f"explanation method {m}: fails the model-randomisation sanity check (Spearman "
                  f"{fmt(worst['spearman'])}, 95% CI {fmt(worst['ci_low'])} to {fmt(worst['ci_high'])}, after "
                  f"re-initialising blocks {worst['randomized_blocks']}); its maps say little about the model."),
        ))
    return out


def slice_rows(tables: Tables, alpha: float) -> list[dict[str, Any]]:
    """Error slices (table ``slices``): one row per candidate, confirmed or not, tested on the held-out half.

    The slice is the worst "group", the rest of its scope the best; ``n_worst``/``n_best`` are the
    confirmation half's rows; ``p_adj`` is Benjamini-Hochberg over the candidates. ``attribute`` is
    empty: no labelled column defines a slice (its overlap with the labelled groups is in the text).
    """
    s = tables.get("slices")
    if s is None or s.empty:
        return []
    m = int((~s["small"].astype(bool)).sum())
    out = []
    for r in s.to_dict("records"):
        scope = str(r["scope"])
        small = bool(r.get("small"))
        sig = bool(r.get("confirmed")) and not small
        corr = f"bh over the slice candidates (m={m})"
        rest = "the rest" if scope == "overall" else f"the rest of class {scope[6:]!r}"
        name = f"slice {int(r['slice_id'])}"
        row = dict(
            kind="slice", attribute="", metric="error_rate", scope=scope, family="slice_vs_rest",
            worst_group=name, best_group=rest, worst_value=as_float(r.get("error_rate")),
            best_value=as_float(r.get("rest_error_rate")), gap=as_float(r.get("difference")),
            ci_low=as_float(r.get("ci_low")), ci_high=as_float(r.get("ci_high")),
            n_worst=r.get("n_confirm"), n_best=r.get("n_rest"), p_value=as_float(r.get("p_value")),
            p_adj=as_float(r.get("p_adj")), correction=corr, significant=sig, status=status_of(sig, not small),
            source="slices",
        )
        desc = str(r.get("description") or "")
        if small:
            row["text"] = (f"error slice {int(r['slice_id'])} ({desc}): not tested on the held-out half "
                           f"({r.get('note') or 'too few rows'}).")
        else:
            held = "confirmed on the held-out half" if sig else "not confirmed on the held-out half"
            row["text"] = (f"error slice {int(r['slice_id'])} ({desc}): error rate {fmt(row['worst_value'])}, "
                           f"n={fmt_n(row['n_worst'])} vs {fmt(row['best_value'])} for {rest}, "
                           f"n={fmt_n(row['n_best'])}; difference {fmt(row['gap'])} (95% CI {fmt(row['ci_low'])} to "
                           f"{fmt(row['ci_high'])}), p_adj = {fmt_p(row['p_adj'])} (Benjamini-Hochberg), {held}.")
        out.append(row)
    return out


def ablation_rows(tables: Tables, alpha: float) -> list[dict[str, Any]]:
    """Significant rows of table ``ablations`` (audit/components/): the top-k heads that carry a finding
    (an association's effect size, a harmful-label or group-metric gap, a retrieval skew) beyond k random
    heads of the same layers (Holm over the table). Rows that do not beat random heads are not findings:
    nothing is said to live where random heads would do as well."""
    a = tables.get("ablations")
    if a is None or a.empty:
        return []
    m = len(a)
    out = []
    for r in a.to_dict("records"):
        if not bool(r.get("significant")):
            continue
        k = int(r["k"])
        corr = f"holm over the ablations (m={m})"
        metric = str(r.get("metric") or "effect_size")
        label = str(r.get("label") or f"association {r['finding']}")
        unit = "effect" if metric in ("effect_size", "skew") else "rate"
        what = {"effect_size": "d", "skew": "the skew"}.get(metric, "the gap")
        row = dict(kind="component", attribute=str(r.get("attribute") or ""), metric=f"{metric}_reduction",
                   scope=f"finding:{r['finding']}", family="topk_vs_random", worst_group=str(r["components"]),
                   best_group=f"{k} random head(s)", worst_value=as_float(r.get("reduction")),
                   best_value=as_float(r.get("random_mean")),
                   gap=as_float(r.get("reduction")) - as_float(r.get("random_mean")), ci_low=float("nan"),
                   ci_high=float("nan"), n_worst=r.get("n_test"), n_best=None, p_value=as_float(r.get("random_p")),
                   p_adj=as_float(r.get("p_adj")), correction=corr, significant=True, status="significant",
                   source="ablations")
        acc = ""
        if math.isfinite(as_float(r.get("accuracy_before"))):
            acc = (f"; accuracy {fmt(as_float(r['accuracy_before']))} before, "
                   f"{fmt(as_float(r['accuracy_after']))} after")
        row["text"] = (
            f"{label} is carried by head(s) {r['components']}: mean-ablating them changes {what} from "
            f"{fmt(as_float(r['before']), unit)} to {fmt(as_float(r['after']), unit)} on n={fmt_n(r.get('n_test'))} "
            f"held-out images (|{what}| reduced by {fmt(row['worst_value'], unit)}, vs {fmt(row['best_value'], unit)} "
            f"on average for {k} random head(s) of the same layers), p_adj = {fmt_p(row['p_adj'])}, "
            f"{verdict_phrase(True, 'significant', corr)}{acc}."
        )
        out.append(row)
    return out
