"""Group-wise classification performance with bootstrap intervals and disparity tests.

The metrics are the table of :mod:`audit.stats.metrics` (formula from counts, denominator,
fairlearn function, direction). Point estimates come from fairlearn's
:class:`~fairlearn.metrics.MetricFrame` (:mod:`audit.stats.estimates`). Uncertainty is
computed from *counts* (:mod:`audit.stats.counts`):

* every confusion-matrix metric is a function of the group's K x K confusion matrix,
  so the within-group nonparametric bootstrap is a Multinomial(n_g, cell shares) draw
  of that matrix (:func:`audit.stats.resampling.multinomial_bootstrap`), and the
  group-label permutation null is a multivariate hypergeometric draw of each group's
  cells from the pooled cells (:func:`audit.stats.resampling.hypergeometric_permutation`).
  A million rows cost what a thousand do.
* ECE resamples rows, confidence together with correctness, in the bootstrap (rows drawn
  with replacement within the group) and in the permutation null (group labels permuted
  over rows). ECE = sum_b |S_b| / n with S_b the sum over bin b of (correct - confidence),
  so a resample is one weighted bincount over (replicate, group, bin) cells, in chunks
  that bound the memory. (Holding each cell's mean confidence fixed, as an earlier
  version did, made pairwise ECE tests reject about 25% of exchangeable groups at 97%
  accuracy and gave an all-correct group an interval of width 0.) Above
  :data:`audit.stats.counts.ECE_EXACT_ROW_DRAWS` rows x resamples, the (bin, correct) cell
  counts are still drawn exactly (multinomial / multivariate hypergeometric) and each cell's
  confidence sum is a normal draw with the moments of sampling its rows with (bootstrap) or
  without (permutation, finite-population corrected) replacement: the large-sample limit of
  the row resampling, which keeps a million rows cheap.

Gaps (:func:`disparity_tests`, families "range", "pairwise", "one_vs_rest"): intervals from
:mod:`audit.stats.intervals` (simultaneous per-group intervals, never narrower than the
Wilson score interval for rates: they cover the true range / ratio, contain 0 when the
groups overlap, and always contain the estimate); permutation p-values with ties broken
at random (the gap between a few errors ties often; counting ties in full rejected 2% of
exchangeable pairs at alpha = 5%), refined sequentially while small.

Metric rows per ``cls``: ``"__all__"`` carries multiclass accuracy, balanced accuracy
(mean recall over the classes present) and top-label ECE; a class name carries the
one-vs-rest metrics (tpr, fnr, fpr, precision, selection_rate, balanced_accuracy);
``"__macro__"`` their mean over classes. One-vs-rest "accuracy" is not reported (it is
dominated by true negatives).

Minimum group size is counted on each metric's denominator: positives for tpr/fnr,
negatives for fpr, predicted positives for precision, min(positives, negatives) for
one-vs-rest balanced accuracy, the smallest present class for multiclass balanced
accuracy, rows otherwise. Small groups are flagged and left out of comparisons.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from audit.errors import UsageError
from audit.stats.counts import Classes, Prepared, cls_name
from audit.stats.estimates import FAIRNESS_SUMMARY_COLUMNS, AttrResult, compute, fairness_summary
from audit.stats.intervals import difference_interval, group_intervals, range_interval, ratio_interval
from audit.stats.metrics import Metric, expected_calibration_error, metric_def, metric_names
from audit.stats.multiple import bh, holm
from audit.stats.resampling import as_rng, permutation_counts, tie_broken_pvalue
from audit.stats.rules import ALPHA, MIN_GROUP_SIZE

__all__ = [
    "COMPARISONS",
    "DISPARITY_COLUMNS",
    "FAIRNESS_SUMMARY_COLUMNS",
    "GROUP_PERFORMANCE_COLUMNS",
    "METRICS",
    "Metric",
    "disparity_tests",
    "expected_calibration_error",
    "fairness_summary",
    "group_performance",
]

#: the metrics of the table (:mod:`audit.stats.metrics`), in its order: the default of every metric list
METRICS: tuple[str, ...] = metric_names()

GROUP_PERFORMANCE_COLUMNS = [
    "attribute", "group", "metric", "cls", "value", "ci_low", "ci_high", "n", "n_rows", "small", "note",
]
DISPARITY_COLUMNS = [
    "attribute", "metric", "cls", "k", "n_excluded", "max_group", "min_group", "max_value", "min_value",
    "difference", "diff_ci_low", "diff_ci_high", "ratio", "ratio_ci_low", "ratio_ci_high",
    "p_value", "p_holm", "p_bh", "significant", "family", "correction", "test", "note",
]
COMPARISONS: tuple[str, ...] = ("range", "pairwise", "one_vs_rest")
Comparison = Literal["range", "pairwise", "one_vs_rest"]


# --------------------------------------------------------------------------- public API


def group_performance(
    predictions: pd.DataFrame,
    *,
    group_cols: Sequence[str],
    label_col: str = "label",
    pred_col: str = "pred",
    score_col: str | None = "score",
    metrics: Sequence[Metric] = METRICS,
    intersections: bool = True,
    classes: Classes = "ovr+macro",
    pos_label: str | None = None,
    min_group_size: int = MIN_GROUP_SIZE,
    n_boot: int = 1000,
    alpha: float = ALPHA,
    seed: int = 0,
    ece_bins: int = 15,
) -> pd.DataFrame:
    """Per-group metrics with 95% intervals (table ``group_performance``).

    Each interval is the hull of the bootstrap percentile and normal intervals and, for rates, the
    Wilson score interval (:func:`audit.stats.intervals.group_intervals`), so it contains its estimate
    and an all-correct group still gets a real interval.

    Args:
        predictions: one row per image with label, prediction, confidence and group columns
            (the run's ``predictions`` table). Rows with a null label are ignored.
        group_cols: attributes to break down by; each alone and, with ``intersections``, every
            combination of two or more (attribute names joined with "×").
        label_col, pred_col, score_col: column names (score = probability of the prediction,
            used for ECE; ``None`` skips ECE).
        metrics: subset of :data:`METRICS`.
        classes: which one-vs-rest rows to report besides ``"__all__"``.
        pos_label: for a binary audit, report one-vs-rest rows for this class only.
        min_group_size: groups whose metric denominator is below this are flagged ``small``.
        n_boot: bootstrap replicates (0 = no intervals).
        alpha: 1 - interval coverage.
        seed: random seed.
        ece_bins: equal-width confidence bins for ECE.

    Returns:
        DataFrame with columns :data:`GROUP_PERFORMANCE_COLUMNS`.

    Example:
        >>> df = pd.DataFrame({"label": ["a", "b"] * 50, "pred": ["a"] * 100, "score": 0.9, "bg": "x"})
        >>> t = group_performance(df, group_cols=["bg"], n_boot=10)
        >>> float(t.query("metric == 'accuracy'").value.iloc[0])
        0.5
    """
    prep, results = compute(
        predictions, group_cols=group_cols, label_col=label_col, pred_col=pred_col, score_col=score_col,
        metrics=metrics, intersections=intersections, classes=classes, pos_label=pos_label, n_boot=n_boot,
        seed=seed, ece_bins=ece_bins,
    )
    rows = []
    for r in results:
        for key in r.keys:
            m, ck = key
            # the same per-group construction as the gap intervals, at level 1 - alpha: never narrower than the
            # score (Wilson) interval for rates, so an all-correct group gets a real interval, not [1, 1]
            lo, hi = (group_intervals(r.values[key], r.boots[key], alpha=alpha, score_parts=r.engine.score_parts(key))
                      if r.boots else (np.full(len(r.names), np.nan), np.full(len(r.names), np.nan)))
            for g, name in enumerate(r.names):
                n = r.denoms[key][g]
                n_int = int(n) if np.isfinite(n) else 0
                small = n_int < min_group_size
                note = ""
                if small:
                    note = (f"n={n_int} {metric_def(m).denominator} < min_group_size={min_group_size}; "
                            "excluded from comparisons")
                rows.append((
                    r.attribute, name, m, cls_name(prep, ck), float(r.values[key][g]), float(lo[g]), float(hi[g]),
                    n_int, int(r.engine.n_rows[g]), bool(small), note,
                ))
    out = pd.DataFrame(rows, columns=GROUP_PERFORMANCE_COLUMNS)
    return out.astype({"n": "int64", "n_rows": "int64", "small": "bool"})


def disparity_tests(
    predictions: pd.DataFrame,
    *,
    group_cols: Sequence[str],
    label_col: str = "label",
    pred_col: str = "pred",
    score_col: str | None = "score",
    metrics: Sequence[Metric] = METRICS,
    intersections: bool = True,
    classes: Classes = "ovr+macro",
    pos_label: str | None = None,
    min_group_size: int = MIN_GROUP_SIZE,
    n_boot: int = 1000,
    n_perm: int = 1000,
    alpha: float = ALPHA,
    seed: int = 0,
    ece_bins: int = 15,
    comparisons: Sequence[Comparison] = ("range",),
    max_perm: int = 100_000,
    pairwise: bool = False,
) -> pd.DataFrame:
    """Gaps between groups with covering intervals and permutation p-values (table ``disparities``).

    For each (attribute, metric, cls), over the groups that are not small for that metric
    ("usable"), one or more families of tests (``comparisons``):

    * ``"range"``: the max-min gap over the k usable groups (one row; today's default).
      p: permutation test of max - min, group labels permuted among those groups' rows.
    * ``"pairwise"``: every pair of usable groups (k = 2; max_group / min_group hold the pair,
      the higher value first; difference = max_value - min_value >= 0).
      p: permutation test of |a - b| among the pair's rows.
    * ``"one_vs_rest"``: each usable group against every other row of the attribute (the rest
      includes the rows of small groups). max_group / max_value are the group, min_group is
      ``"rest of <attribute>"`` and min_value the rest's value, whatever their order;
      difference = group - rest and may be negative; k = 2, n_excluded = 0.
      p: two-sided permutation test of |group - rest|, labels permuted over all the attribute's rows.

    Intervals (:mod:`audit.stats.intervals`): the range's and the ratio's come from
    simultaneous (Bonferroni) per-group intervals, never narrower than the Wilson score
    interval for rates, so that they cover at their level, contain 0 when the groups overlap
    and always contain the estimate; a difference of two (pairwise: max_group - min_group,
    one_vs_rest: group - rest) has a MOVER interval, which may extend below 0. ratio is always
    min / max of the two or k values compared (<= 1).

    p-values: Monte Carlo permutation p with the +1 correction; permuted statistics tied with
    the observed one count half (mid-p: the expected value of random tie-breaking), because
    gaps between a few errors tie often and counting ties in full makes the test conservative.
    Confusion-matrix metrics are permuted exactly on counts (multivariate hypergeometric
    draws); ECE permutes rows, confidence together with correctness. A permutation p cannot go
    below 1 / (n_perm + 1), while Holm over m tests asks for p < alpha / m; so tests whose first
    ``n_perm`` draws leave fewer than 10 exceedances get more draws, in rounds, until 10
    exceedances or ``max_perm`` draws (a sequential Monte Carlo p-value in the spirit of Besag
    & Clifford 1991; the number of draws is in ``test``).

    Multiple testing: p_holm and p_bh are computed within each family (the ``correction``
    column says which and over how many tests); ``significant`` is p_holm < alpha.
    A row whose test could not run (fewer than two usable groups, a small group or rest,
    ``n_perm = 0``) has ``test`` "not tested", the reason in ``note``, p NaN, significant False.

    Args: as :func:`group_performance`, plus
        n_perm: permutations per test (0: intervals only).
        comparisons: any of "range", "pairwise", "one_vs_rest".
        max_perm: cap of the sequential refinement.
        pairwise: deprecated alias: True adds "pairwise" to ``comparisons``.

    Returns:
        DataFrame with columns :data:`DISPARITY_COLUMNS`; rows ordered by attribute, then
        family (range, pairwise, one_vs_rest), then metric.
    """
    fams = _families(comparisons, pairwise)
    prep, results = compute(
        predictions, group_cols=group_cols, label_col=label_col, pred_col=pred_col, score_col=score_col,
        metrics=metrics, intersections=intersections, classes=classes, pos_label=pos_label, n_boot=n_boot,
        seed=seed, ece_bins=ece_bins, rest="one_vs_rest" in fams,
    )
    rng = as_rng(np.random.SeedSequence([seed, 1]))
    ctx = _FamilyArgs(prep, min_group_size, n_perm, max_perm, alpha, rng)
    rows: list[dict] = []
    for r in results:
        usable = {key: np.flatnonzero((r.denoms[key] >= min_group_size) & ~np.isnan(r.values[key])) for key in r.keys}
        by_set: dict[tuple[int, ...], list] = {}  # keys with the same usable groups share permutation draws
        for key in r.keys:
            by_set.setdefault(tuple(int(g) for g in usable[key]), []).append(key)
        for fam, fn in (("range", _range_family), ("pairwise", _pairwise_family), ("one_vs_rest", _ovr_family)):
            if fam in fams:
                per_key = fn(ctx, r, by_set, usable)
                for key in r.keys:
                    rows.extend(per_key.get(key, []))
    return _finish(rows, alpha)


def _families(comparisons: Sequence[str], pairwise: bool) -> list[str]:
    comps = [comparisons] if isinstance(comparisons, str) else list(comparisons)
    if pairwise:
        comps.append("pairwise")
    bad = [c for c in comps if c not in COMPARISONS]
    if bad or not comps:
        raise UsageError(f"comparisons must name one or more of {list(COMPARISONS)}; got {list(comparisons)!r}")
    return list(dict.fromkeys(comps))


@dataclass
class _FamilyArgs:
    prep: Prepared
    min_size: int
    n_perm: int
    max_perm: int
    alpha: float
    rng: np.random.Generator


def _base(ctx: _FamilyArgs, r: AttrResult, key, family: str) -> dict:
    return {"attribute": r.attribute, "metric": key[0], "cls": cls_name(ctx.prep, key[1]), "family": family}


def _not_tested(base: dict, *, k: int, n_excluded: int, why: str, **extra) -> dict:
    return {**base, "k": k, "n_excluded": n_excluded, **extra, "p_value": np.nan, "test": "not tested", "note": why}


def _nangap(v: np.ndarray) -> np.ndarray:
    """max - min over axis 1 ignoring NaN; NaN where fewer than two values are defined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g = np.nanmax(v, axis=1) - np.nanmin(v, axis=1)
    return np.where((~np.isnan(v)).sum(axis=1) >= 2, g, np.nan)


def _parts(r: AttrResult, key, idx) -> tuple[np.ndarray, np.ndarray] | None:
    sp = r.engine.score_parts(key)
    return None if sp is None else (sp[0][idx], sp[1][idx])


def _with_test(row: dict, name: str, res: tuple[float, int] | None, n_perm: int) -> dict:
    """Fill p_value / test (and the reason in note when the test did not run)."""
    if res is None or np.isnan(res[0]):
        why = ("n_perm=0: no permutation test was requested" if n_perm <= 0
               else "no permutation gave a defined statistic")
        note = f"{why}; {row['note']}" if row.get("note") else why
        return {**row, "p_value": np.nan, "test": "not tested", "note": note}
    p, used = res
    text = f"{name}, {used} perms"
    if used > n_perm:
        text += " (sequential: extended while p was small)"
    return {**row, "p_value": p, "test": text + "; ties broken at random"}


def _range_family(ctx: _FamilyArgs, r: AttrResult, by_set: dict, usable: dict) -> dict:
    out: dict = {}
    G = len(r.names)
    for ok, keys in by_set.items():
        idx = np.array(ok, dtype=np.int64)
        k = len(idx)
        if k < 2:
            for key in keys:
                out[key] = [_not_tested(_base(ctx, r, key, "range"), k=k, n_excluded=G - k,
                                        why=f"fewer than 2 groups with n >= min_group_size={ctx.min_size}")]
            continue
        obs = {key: float(_nangap(r.values[key][idx][None, :])[0]) for key in keys}

        def draw(m: int, todo: list, rng: np.random.Generator, idx: np.ndarray = idx) -> dict:
            vals, _ = r.engine.permute(todo, idx, n_perm=m, rng=rng)
            return {key: _nangap(vals[key]) for key in todo}

        pv = _perm_pvalues(draw, obs, n_perm=ctx.n_perm, max_perm=ctx.max_perm, rng=ctx.rng)
        names = [r.names[i] for i in idx]
        for key in keys:
            boots = r.boots[key][:, idx] if r.boots else None
            row = {**_base(ctx, r, key, "range"), "n_excluded": G - k,
                   **_range_row(r.values[key][idx], boots, _parts(r, key, idx), names, ctx.alpha),
                   "note": _excl_note(G - k, ctx.min_size)}
            out[key] = [_with_test(row, "permutation max-min gap", pv.get(key), ctx.n_perm)]
    return out


def _pairwise_family(ctx: _FamilyArgs, r: AttrResult, by_set: dict, usable: dict) -> dict:
    out: dict = {}
    G = len(r.names)
    for ok, keys in by_set.items():
        if len(ok) < 2:
            for key in keys:
                out[key] = [_not_tested(_base(ctx, r, key, "pairwise"), k=len(ok), n_excluded=G - len(ok),
                                        why=f"fewer than 2 groups with n >= min_group_size={ctx.min_size}")]
            continue
        for a, b in itertools.combinations(ok, 2):
            sub = np.array([a, b], dtype=np.int64)
            obs = {key: abs(float(r.values[key][a] - r.values[key][b])) for key in keys}

            def draw(m: int, todo: list, rng: np.random.Generator, sub: np.ndarray = sub) -> dict:
                vals, _ = r.engine.permute(todo, sub, n_perm=m, rng=rng)
                return {key: np.abs(vals[key][:, 0] - vals[key][:, 1]) for key in todo}

            pv = _perm_pvalues(draw, obs, n_perm=ctx.n_perm, max_perm=ctx.max_perm, rng=ctx.rng)
            for key in keys:
                boots = r.boots[key][:, sub] if r.boots else None
                row = {**_base(ctx, r, key, "pairwise"), "n_excluded": G - 2,
                       **_pair_row(r.values[key][sub], boots, _parts(r, key, sub), [r.names[a], r.names[b]],
                                   ctx.alpha), "note": ""}
                out.setdefault(key, []).append(_with_test(row, "permutation pair gap |a - b|", pv.get(key),
                                                          ctx.n_perm))
    return out


def _ovr_family(ctx: _FamilyArgs, r: AttrResult, by_set: dict, usable: dict) -> dict:
    out: dict = {}
    G = len(r.names)
    rest_name = f"rest of {r.attribute}"
    info = {key: r.engine.rest(key) for key in r.keys}  # key -> (value, denom, score parts), each per group
    tested: dict = {}
    for key in r.keys:
        rv, rd, _ = info[key]
        for g in usable[key]:
            if rd[g] >= ctx.min_size and not np.isnan(rv[g]):
                tested[(key, int(g))] = abs(float(r.values[key][g] - rv[g]))
    everyone = np.arange(G)

    def draw(m: int, todo: list, rng: np.random.Generator) -> dict:
        ks = list(dict.fromkeys(t[0] for t in todo))
        vals, rvals = r.engine.permute(ks, everyone, n_perm=m, rng=rng, rest=True)
        return {(key, g): np.abs(vals[key][:, g] - rvals[key][:, g]) for key, g in todo}

    pv = _perm_pvalues(draw, tested, n_perm=ctx.n_perm, max_perm=ctx.max_perm, rng=ctx.rng)
    for key in r.keys:
        rv, rd, rparts = info[key]
        gparts = r.engine.score_parts(key)
        ok = {int(g) for g in usable[key]}
        for g, name in enumerate(r.names):
            base = {**_base(ctx, r, key, "one_vs_rest"), "max_group": name, "min_group": rest_name}
            if g not in ok:
                n = r.denoms[key][g]
                n_int = int(n) if np.isfinite(n) else 0
                out.setdefault(key, []).append(_not_tested(
                    base, k=2, n_excluded=0,
                    why=f"{name}: n={n_int} {metric_def(key[0]).denominator} < min_group_size={ctx.min_size}"))
                continue
            if (key, g) not in tested:
                n_int = int(rd[g]) if np.isfinite(rd[g]) else 0
                out.setdefault(key, []).append(_not_tested(
                    base, k=2, n_excluded=0,
                    why=f"{rest_name}: n={n_int} {metric_def(key[0]).denominator} < min_group_size={ctx.min_size}"))
                continue
            boots = None
            if r.boots and r.rest_boots is not None:
                boots = np.stack([r.boots[key][:, g], r.rest_boots[key][:, g]], axis=1)
            parts = None
            if gparts is not None:
                parts = (np.stack([gparts[0][g], rparts[0][g]]), np.stack([gparts[1][g], rparts[1][g]]))
            row = {**base, **_ovr_row(float(r.values[key][g]), float(rv[g]), boots, parts, ctx.alpha),
                   "n_excluded": 0,
                   "note": f"rest = the other {G - 1} group(s) of {r.attribute}, "
                           f"{int(r.engine.n_rows.sum() - r.engine.n_rows[g])} rows"}
            out.setdefault(key, []).append(_with_test(row, "permutation group - rest, two-sided", pv.get((key, g)),
                                                      ctx.n_perm))
    return out


def _perm_pvalues(draw, observed: dict, *, n_perm: int, max_perm: int, rng: np.random.Generator) -> dict:
    """Permutation p-values, ties broken at random, for several tests sharing one draw function.

    ``draw(m, test_ids, rng)`` returns ``{test_id: (m,) permuted statistics}`` (statistics are
    >= 0, larger = more extreme). Returns ``{test_id: (p, draws)}``; p is NaN where no permuted
    statistic was defined. See :func:`audit.stats.resampling.tie_broken_pvalue`.
    """
    ids = [t for t, o in observed.items() if not np.isnan(o)]
    if not ids or n_perm <= 0:
        return {}
    tally = {t: [0, 0, 0, 0] for t in ids}  # greater, tied, valid, draws

    def add(m: int, todo: list) -> None:
        null = draw(m, todo, rng)
        for t in todo:
            gt, tie, valid = permutation_counts(observed[t], null[t])
            tally[t][0] += int(gt)
            tally[t][1] += int(tie)
            tally[t][2] += int(valid)
            tally[t][3] += m

    add(n_perm, ids)
    _refine_pvalues(add, tally, ids, n_perm=n_perm, max_perm=max_perm)
    out = {}
    for t in ids:
        gt, tie, valid, used = tally[t]
        p = tie_broken_pvalue(gt, tie, valid, seed=rng, zero=abs(observed[t]) <= 1e-12)
        out[t] = (float(p), used)
    return out


def _refine_pvalues(add, tally: dict, ids: list, *, n_perm: int, max_perm: int, target_exceed: int = 10) -> None:
    """More permutation draws, in rounds, for tests with fewer than ``target_exceed`` exceedances
    (ties count half here)."""
    def few(t) -> bool:
        return tally[t][0] + 0.5 * tally[t][1] < target_exceed

    todo = [t for t in ids if few(t)]
    while todo:
        m = min(max(n_perm, 10_000), max_perm - tally[todo[0]][3])
        if m <= 0:
            break
        add(m, todo)
        todo = [t for t in todo if few(t)]


def _excl_note(n_excl: int, min_size: int) -> str:
    return f"{n_excl} group(s) excluded: n < min_group_size={min_size}" if n_excl else ""


def _ratio(vmin: float, vmax: float) -> float:
    return vmin / vmax if vmax > 0 else float("nan")


def _intervals(kind: str, vals: np.ndarray, boots: np.ndarray | None, parts, alpha: float) -> tuple[float, float]:
    if boots is None:
        return float("nan"), float("nan")
    fn = {"range": range_interval, "ratio": ratio_interval, "diff": difference_interval}[kind]
    return fn(vals, boots, alpha=alpha, score_parts=parts)


def _range_row(vals: np.ndarray, boots: np.ndarray | None, parts, names: list[str], alpha: float) -> dict:
    imax, imin = int(np.argmax(vals)), int(np.argmin(vals))
    vmax, vmin = float(vals[imax]), float(vals[imin])
    ratio = _ratio(vmin, vmax)
    dlo, dhi = _intervals("range", vals, boots, parts, alpha)
    rlo, rhi = _intervals("ratio", vals, boots, parts, alpha) if not np.isnan(ratio) else (np.nan, np.nan)
    return {"k": len(vals), "max_group": names[imax], "min_group": names[imin], "max_value": vmax,
            "min_value": vmin, "difference": vmax - vmin, "diff_ci_low": dlo, "diff_ci_high": dhi,
            "ratio": ratio, "ratio_ci_low": rlo, "ratio_ci_high": rhi}


def _pair_row(vals: np.ndarray, boots: np.ndarray | None, parts, names: list[str], alpha: float) -> dict:
    o = [0, 1] if vals[0] >= vals[1] else [1, 0]  # higher value first
    v = vals[o]
    b = None if boots is None else boots[:, o]
    p = None if parts is None else (parts[0][o], parts[1][o])
    ratio = _ratio(float(v[1]), float(v[0]))
    dlo, dhi = _intervals("diff", v, b, p, alpha)
    rlo, rhi = _intervals("ratio", v, b, p, alpha) if not np.isnan(ratio) else (np.nan, np.nan)
    return {"k": 2, "max_group": names[o[0]], "min_group": names[o[1]], "max_value": float(v[0]),
            "min_value": float(v[1]), "difference": float(v[0] - v[1]), "diff_ci_low": dlo, "diff_ci_high": dhi,
            "ratio": ratio, "ratio_ci_low": rlo, "ratio_ci_high": rhi}


def _ovr_row(v_g: float, v_rest: float, boots: np.ndarray | None, parts, alpha: float) -> dict:
    v = np.array([v_g, v_rest])
    ratio = _ratio(min(v_g, v_rest), max(v_g, v_rest))
    dlo, dhi = _intervals("diff", v, boots, parts, alpha)
    rlo, rhi = _intervals("ratio", v, boots, parts, alpha) if not np.isnan(ratio) else (np.nan, np.nan)
    return {"k": 2, "max_value": v_g, "min_value": v_rest, "difference": v_g - v_rest, "diff_ci_low": dlo,
            "diff_ci_high": dhi, "ratio": ratio, "ratio_ci_low": rlo, "ratio_ci_high": rhi}


def _finish(rows: list[dict], alpha: float) -> pd.DataFrame:
    num = ("max_value", "min_value", "difference", "diff_ci_low", "diff_ci_high", "ratio", "ratio_ci_low",
           "ratio_ci_high", "p_value")
    cols: dict[str, np.ndarray] = {c: np.array([r.get(c, np.nan) for r in rows], dtype=np.float64) for c in num}
    for c in ("attribute", "metric", "cls", "max_group", "min_group", "family", "test", "note"):
        cols[c] = np.array([str(r.get(c) or "") for r in rows], dtype=object)
    for c in ("k", "n_excluded"):
        cols[c] = np.array([r[c] for r in rows], dtype=np.int64)
    p = cols["p_value"]
    cols["p_holm"] = np.full(len(rows), np.nan)
    cols["p_bh"] = np.full(len(rows), np.nan)
    correction = np.full(len(rows), "none (not tested)", dtype=object)
    for fam in COMPARISONS:
        sel = cols["family"] == fam
        if not sel.any():
            continue
        cols["p_holm"][sel] = holm(p[sel])
        cols["p_bh"][sel] = bh(p[sel])
        m = int((~np.isnan(p[sel])).sum())
        correction[sel & ~np.isnan(p)] = (f"holm within family {fam} (m={m}); "
                                          "p_bh: Benjamini-Hochberg within the same family")
    cols["correction"] = correction
    with np.errstate(invalid="ignore"):
        cols["significant"] = np.nan_to_num(cols["p_holm"], nan=1.0) < alpha
    out = pd.DataFrame({c: cols[c] for c in DISPARITY_COLUMNS})
    for c in ("attribute", "metric", "cls", "max_group", "min_group", "family", "correction", "test", "note"):
        out[c] = out[c].astype(str)
    return out
