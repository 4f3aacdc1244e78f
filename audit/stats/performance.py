"""Group-wise classification performance with bootstrap intervals and disparity tests.

Point estimates come from fairlearn's :class:`~fairlearn.metrics.MetricFrame`
(fairlearn / scikit-learn metric functions per group). Uncertainty is computed from
*counts*:

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
  :data:`ECE_EXACT_ROW_DRAWS` rows x resamples, the (bin, correct) cell counts are still
  drawn exactly (multinomial / multivariate hypergeometric) and each cell's confidence sum
  is a normal draw with the moments of sampling its rows with (bootstrap) or without
  (permutation, finite-population corrected) replacement: the large-sample limit of the
  row resampling, which keeps a million rows cheap.

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

import functools
import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from audit.errors import UsageError
from audit.stats.intervals import difference_interval, group_intervals, range_interval, ratio_interval
from audit.stats.multiple import bh, holm
from audit.stats.resampling import (
    as_rng,
    hypergeometric_permutation,
    multinomial_bootstrap,
    permutation_counts,
    tie_broken_pvalue,
)

__all__ = [
    "COMPARISONS",
    "DISPARITY_COLUMNS",
    "FAIRNESS_SUMMARY_COLUMNS",
    "GROUP_PERFORMANCE_COLUMNS",
    "METRICS",
    "disparity_tests",
    "expected_calibration_error",
    "fairness_summary",
    "group_performance",
]

Metric = Literal["accuracy", "balanced_accuracy", "tpr", "fnr", "fpr", "precision", "selection_rate", "ece"]
METRICS: tuple[str, ...] = (
    "accuracy", "balanced_accuracy", "tpr", "fnr", "fpr", "precision", "selection_rate", "ece",
)
_OVR = ("balanced_accuracy", "tpr", "fnr", "fpr", "precision", "selection_rate")
_ALL = ("accuracy", "balanced_accuracy", "ece")
ALL, MACRO = "__all__", "__macro__"
SEP = "×"
MAX_CLASSES_JOINT = 64  # above this the K x K joint bootstrap is too large; see _Engine

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
FAIRNESS_SUMMARY_COLUMNS = ["attribute", "metric", "value", "pos_label", "n"]

_DENOM_NAME = {
    "tpr": "positives", "fnr": "positives", "fpr": "negatives", "precision": "predicted positives",
    "balanced_accuracy": "min(positives, negatives)", "accuracy": "rows", "selection_rate": "rows",
    "ece": "rows",
}


# --------------------------------------------------------------------------- metrics from counts


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def _ovr_parts(cm: np.ndarray) -> tuple[np.ndarray, ...]:
    """tp, fn, fp, tn per class from (..., K, K) confusion matrices (rows: true, cols: pred)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)  # (..., K)
    pos = cm.sum(axis=-1).astype(np.float64)  # (..., K) true count per class
    ppos = cm.sum(axis=-2).astype(np.float64)  # (..., K) predicted count per class
    n = cm.sum(axis=(-2, -1)).astype(np.float64)[..., None]  # (..., 1)
    fn = pos - tp
    fp = ppos - tp
    tn = n - tp - fn - fp
    return tp, fn, fp, tn


def _ovr_metric(cm: np.ndarray, metric: str) -> np.ndarray:
    """One-vs-rest metric for every class: (..., K, K) -> (..., K)."""
    tp, fn, fp, tn = _ovr_parts(cm)
    if metric == "tpr":
        return _div(tp, tp + fn)
    if metric == "fnr":
        return _div(fn, tp + fn)
    if metric == "fpr":
        return _div(fp, fp + tn)
    if metric == "precision":
        return _div(tp, tp + fp)
    if metric == "selection_rate":
        return _div(tp + fp, tp + fn + fp + tn)
    if metric == "balanced_accuracy":
        return 0.5 * (_div(tp, tp + fn) + _div(tn, tn + fp))
    raise ValueError(metric)


def _ovr_denom(cm: np.ndarray, metric: str) -> np.ndarray:
    tp, fn, fp, tn = _ovr_parts(cm)
    return {
        "tpr": tp + fn, "fnr": tp + fn, "fpr": fp + tn, "precision": tp + fp,
        "selection_rate": tp + fn + fp + tn, "balanced_accuracy": np.minimum(tp + fn, fp + tn),
    }[metric]


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _all_metric(cm: np.ndarray, metric: str) -> np.ndarray:
    """Multiclass accuracy / balanced accuracy (mean recall over present classes)."""
    if metric == "accuracy":
        return _div(np.trace(cm, axis1=-2, axis2=-1), cm.sum(axis=(-2, -1)))
    if metric == "balanced_accuracy":
        tp = np.diagonal(cm, axis1=-2, axis2=-1)
        return _nanmean(_div(tp, cm.sum(axis=-1)), axis=-1)
    raise ValueError(metric)


def _ece_from_cells(counts: np.ndarray, conf_mean: np.ndarray) -> np.ndarray:
    """ECE from (..., n_bins, 2) counts of (bin, correct) and (..., n_bins, 2) mean confidences."""
    c = counts.astype(np.float64)
    nb = c.sum(axis=-1)  # (..., n_bins)
    acc = _div(c[..., 1], nb)
    conf = _div((c * conf_mean).sum(axis=-1), nb)
    gap = np.where(nb > 0, np.abs(acc - conf), 0.0)
    n = nb.sum(axis=-1)
    return _div((nb * gap).sum(axis=-1), n)


def _bin_index(score: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width confidence bins [i/B, (i+1)/B), the last one closed at 1."""
    return np.clip((np.asarray(score, dtype=np.float64) * n_bins).astype(np.int64), 0, n_bins - 1)


def expected_calibration_error(correct: Sequence[bool], confidence: Sequence[float], *, n_bins: int = 15) -> float:
    """Top-label expected calibration error, sum_b |B_b|/n * |acc(B_b) - conf(B_b)|.

    Args:
        correct: (n,) whether the prediction was right.
        confidence: (n,) probability of the predicted class, in [0, 1].
        n_bins: equal-width bins on [0, 1].
    """
    corr = np.asarray(correct, dtype=bool)
    conf = np.asarray(confidence, dtype=np.float64)
    if corr.size == 0:
        return float("nan")
    b = _bin_index(conf, n_bins)
    cell = b * 2 + corr
    counts = np.bincount(cell, minlength=2 * n_bins).reshape(n_bins, 2)
    sums = np.bincount(cell, weights=conf, minlength=2 * n_bins).reshape(n_bins, 2)
    return float(_ece_from_cells(counts, _div(sums, counts)))


def _metric_value(cm: np.ndarray, metric: str, cls_i: int | str) -> np.ndarray:
    if cls_i == ALL:
        return _all_metric(cm, metric)
    if cls_i == MACRO:
        return _nanmean(_ovr_metric(cm, metric), axis=-1)
    return _ovr_metric(cm, metric)[..., cls_i]


def _metric_denom(cm: np.ndarray, metric: str, cls_i: int | str) -> np.ndarray:
    if cls_i == ALL:
        if metric == "balanced_accuracy":
            pos = cm.sum(axis=-1).astype(np.float64)
            return np.where(pos > 0, pos, np.inf).min(axis=-1)
        return cm.sum(axis=(-2, -1))
    d = _ovr_denom(cm, metric)
    if cls_i == MACRO:
        return d.min(axis=-1)
    return d[..., cls_i]


# --------------------------------------------------------------------------- input handling


def _check_columns(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UsageError(
            f"{what}: column(s) {missing} not found in the predictions table; "
            f"available columns: {list(df.columns)}. Pass the right names (e.g. group_cols=[...])."
        )


def _attributes(group_cols: Sequence[str], intersections: bool) -> list[tuple[str, ...]]:
    cols = list(group_cols)
    out: list[tuple[str, ...]] = [(c,) for c in cols]
    if intersections:
        for r in range(2, len(cols) + 1):
            out.extend(itertools.combinations(cols, r))
    return out


def _group_codes(df: pd.DataFrame, cols: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """Integer group code per row and the group names (values joined with '×'), sorted."""
    codes = np.zeros(len(df), dtype=np.int64)
    level_names: list[np.ndarray] = []
    for c in cols:
        cc, uniq = pd.factorize(df[c], use_na_sentinel=True)
        names_c = [str(v) for v in uniq] + ["<missing>"]
        cc = np.where(cc < 0, len(uniq), cc)  # missing values form their own group
        order = np.argsort(names_c, kind="stable")  # sort groups by name
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        codes = codes * len(names_c) + rank[cc]
        level_names.append(np.asarray(names_c, dtype=object)[order])
    present, inv = np.unique(codes, return_inverse=True)
    names = []
    for code in present:
        parts = []
        rem = int(code)
        for lv in reversed(level_names):
            parts.append(str(lv[rem % len(lv)]))
            rem //= len(lv)
        names.append(SEP.join(reversed(parts)))
    return inv.astype(np.int64), names


@dataclass
class _Prepared:
    df: pd.DataFrame
    y: np.ndarray  # (n,) int class index of the label
    yhat: np.ndarray  # (n,) int class index of the prediction
    score: np.ndarray | None  # (n,) confidence of the prediction
    classes: list[str]
    cls_keys: list[int | str]  # class indices, plus MACRO / ALL
    n_dropped: int


def _prepare(
    predictions: pd.DataFrame,
    *,
    group_cols: Sequence[str],
    label_col: str,
    pred_col: str,
    score_col: str | None,
    metrics: Sequence[str],
    classes: Literal["ovr+macro", "ovr", "macro", "none"],
    pos_label: str | None,
) -> _Prepared:
    if not isinstance(predictions, pd.DataFrame):
        raise UsageError(f"predictions must be a pandas DataFrame, got {type(predictions).__name__}")
    if not group_cols:
        raise UsageError("group_cols is empty: name at least one group column (e.g. group_cols=['background'])")
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise UsageError(f"unknown metric(s) {bad}; known: {list(METRICS)}")
    need = [*group_cols, label_col, pred_col]
    if "ece" in metrics and score_col is not None:
        need.append(score_col)
    _check_columns(predictions, need, "group_performance")
    df = predictions
    keep = df[label_col].notna() & df[pred_col].notna()
    n_dropped = int((~keep).sum())
    df = df.loc[keep]
    if len(df) == 0:
        raise UsageError(
            f"no labelled rows: column {label_col!r} is empty/null in every row; "
            "group performance needs ground-truth labels"
        )
    # hash-based factorize of the raw columns, then map the few uniques (sorting 1e6 strings is slow)
    lab_codes, lab_uniq = pd.factorize(df[label_col])
    prd_codes, prd_uniq = pd.factorize(df[pred_col])
    lab_names = [str(v) for v in lab_uniq]
    prd_names = [str(v) for v in prd_uniq]
    cls_names = sorted(set(lab_names) | set(prd_names))
    index = {c: i for i, c in enumerate(cls_names)}
    y = np.array([index[c] for c in lab_names], dtype=np.int64)[lab_codes]
    yhat = np.array([index[c] for c in prd_names], dtype=np.int64)[prd_codes]
    score = None
    if "ece" in metrics and score_col is not None:
        score = df[score_col].to_numpy(np.float64)
        if np.isnan(score).any() or (score < 0).any() or (score > 1).any():
            i = int(np.flatnonzero(np.isnan(score) | (score < 0) | (score > 1))[0])
            raise UsageError(
                f"column {score_col!r} must hold probabilities in [0, 1]; row {df.index[i]!r} has {score[i]!r}"
            )
    keys: list[int | str] = []
    if pos_label is not None:
        if str(pos_label) not in index:
            raise UsageError(f"pos_label {pos_label!r} is not among the classes {cls_names}")
        keys = [index[str(pos_label)]]
    else:
        if classes in ("ovr+macro", "ovr"):
            keys.extend(range(len(cls_names)))
        if classes in ("ovr+macro", "macro"):
            keys.append(MACRO)
    keys.append(ALL)
    return _Prepared(df.reset_index(drop=True), y, yhat, score, cls_names, keys, n_dropped)


def _keys_for(metrics: Sequence[str], cls_keys: list[int | str]) -> list[tuple[str, int | str]]:
    out = []
    for ck in cls_keys:
        for m in metrics:
            if ck == ALL and m in _ALL or ck != ALL and m in _OVR:
                out.append((m, ck))
    return out


# --------------------------------------------------------------------------- fairlearn point estimates


def _fl_metrics():
    from fairlearn.metrics import false_negative_rate, false_positive_rate, selection_rate, true_positive_rate
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_score

    ovr = {
        "tpr": functools.partial(true_positive_rate, pos_label=1),
        "fnr": functools.partial(false_negative_rate, pos_label=1),
        "fpr": functools.partial(false_positive_rate, pos_label=1),
        "precision": functools.partial(precision_score, pos_label=1, zero_division=np.nan),
        "selection_rate": functools.partial(selection_rate, pos_label=1),
        "balanced_accuracy": balanced_accuracy_score,
    }
    return ovr, {"accuracy": accuracy_score, "balanced_accuracy": balanced_accuracy_score}


def _metricframe_values(
    prep: _Prepared, eng: _Engine, keys: list[tuple[str, int | str]]
) -> dict[tuple[str, int | str], np.ndarray]:
    """Point estimates per key -> (G,) through fairlearn.metrics.MetricFrame.

    MetricFrame is given the weighted contingency table rather than the raw rows: one row
    per non-empty (group, label, prediction) cell with its count as ``sample_weight`` (and
    one row per (group, confidence bin, correct) cell for ECE, at the cell's mean
    confidence). Every metric here is a function of those weighted counts, so the values
    are identical to the row-level ones, and the cost is O(cells) instead of O(rows)
    (fairlearn's per-row argument stacking makes a million raw rows take minutes).
    """
    from fairlearn.metrics import MetricFrame

    ovr_fns, all_fns = _fl_metrics()
    G, K = eng.G, eng.K
    g_idx, y_idx, p_idx = np.nonzero(eng.cm)
    w = eng.cm[g_idx, y_idx, p_idx].astype(np.float64)
    sf = pd.Series(g_idx, name="group")
    out: dict[tuple[str, int | str], np.ndarray] = {}

    def by_group(mf: MetricFrame, name: str) -> np.ndarray:
        s = mf.by_group[name]
        v = np.full(G, np.nan)
        v[np.asarray(s.index, dtype=np.int64)] = s.to_numpy(np.float64)
        return v

    def frame(fns: dict, y_true: np.ndarray, y_pred: np.ndarray, weight: np.ndarray, groups: pd.Series):
        return MetricFrame(
            metrics=fns, y_true=y_true, y_pred=y_pred, sensitive_features=groups,
            sample_params={name: {"sample_weight": weight} for name in fns},
        )

    with warnings.catch_warnings():
        # sklearn warns on groups where a class is absent; those cells are set to NaN by the caller
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        need_all = [m for m, k in keys if k == ALL and m in all_fns]
        if need_all:
            mf = frame({m: all_fns[m] for m in need_all}, y_idx, p_idx, w, sf)
            for m in need_all:
                out[(m, ALL)] = by_group(mf, m)
        if ("ece", ALL) in keys and eng.has_ece:
            eg, eb, ec = np.nonzero(eng.ece_counts)
            mf = frame({"ece": functools.partial(_ece_metric, n_bins=eng.ece_bins)}, ec.astype(bool),
                       eng.ece_mean[eg, eb, ec], eng.ece_counts[eg, eb, ec].astype(np.float64),
                       pd.Series(eg, name="group"))
            out[("ece", ALL)] = by_group(mf, "ece")
        ovr_needed = sorted({m for m, k in keys if k != ALL})
        class_idx = sorted({k for _, k in keys if isinstance(k, int)})
        all_classes = list(range(K)) if any(k == MACRO for _, k in keys) else class_idx
        per_class: dict[int, dict[str, np.ndarray]] = {}
        for ci in all_classes:
            mf = frame({m: ovr_fns[m] for m in ovr_needed}, (y_idx == ci).astype(np.int8),
                       (p_idx == ci).astype(np.int8), w, sf)
            per_class[ci] = {m: by_group(mf, m) for m in ovr_needed}
        for m, k in keys:
            if isinstance(k, int):
                out[(m, k)] = per_class[k][m]
            elif k == MACRO:
                out[(m, k)] = _nanmean(np.stack([per_class[c][m] for c in all_classes], axis=-1), axis=-1)
    return out


def _ece_metric(y_true, y_pred, *, sample_weight=None, n_bins: int) -> float:
    """Weighted top-label ECE (y_true: correct, y_pred: confidence) for MetricFrame."""
    corr = np.asarray(y_true, dtype=bool)
    conf = np.asarray(y_pred, dtype=np.float64)
    w = np.ones_like(conf) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    b = _bin_index(conf, n_bins)
    acc_sum = np.bincount(b, weights=w * corr, minlength=n_bins)
    conf_sum = np.bincount(b, weights=w * conf, minlength=n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / w.sum()) if w.sum() > 0 else float("nan")


# --------------------------------------------------------------------------- the engine

#: ECE resampling draws rows exactly (confidence and correctness together) while rows x
#: resamples stays at or below this; above it, the cell approximation is used (module docstring).
ECE_EXACT_ROW_DRAWS = 50_000_000
_CHUNK = 1 << 20  # elements per vectorised chunk: bounds the memory of every resampling step


def _score_parts(cm: np.ndarray, metric: str, ck: int | str) -> tuple[np.ndarray, np.ndarray] | None:
    """(successes, trials), each (..., J): the J rates whose mean is the metric (None for ECE)."""
    if metric == "ece":
        return None
    if ck == ALL:
        if metric == "accuracy":
            return (np.trace(cm, axis1=-2, axis2=-1)[..., None].astype(np.float64),
                    cm.sum(axis=(-2, -1))[..., None].astype(np.float64))
        return np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64), cm.sum(axis=-1).astype(np.float64)
    tp, fn, fp, tn = _ovr_parts(cm)  # (..., K)
    if metric == "balanced_accuracy":
        x, n = np.stack([tp, tn], axis=-1), np.stack([tp + fn, tn + fp], axis=-1)  # (..., K, 2)
    else:
        x, n = {"tpr": (tp, tp + fn), "fnr": (fn, tp + fn), "fpr": (fp, fp + tn), "precision": (tp, tp + fp),
                "selection_rate": (tp + fp, tp + fn + fp + tn)}[metric]
        x, n = x[..., None], n[..., None]  # (..., K, 1)
    if ck == MACRO:
        return x.reshape(*x.shape[:-2], -1), n.reshape(*n.shape[:-2], -1)
    return x[..., ck, :], n[..., ck, :]


class _Engine:
    """Counts for one attribute (per-group confusion matrices, ECE rows and cells) and resampling on them.

    ECE is carried as S (..., n_bins): the sum over a bin's rows of (correct - confidence), so
    that ECE = sum_b |S_b| / n. Resampling rows resamples S exactly.
    """

    def __init__(self, prep: _Prepared, codes: np.ndarray, n_groups: int, ece_bins: int) -> None:
        K = len(prep.classes)
        if K > MAX_CLASSES_JOINT:
            raise UsageError(
                f"{K} classes: count-based intervals resample the K x K confusion matrix and support at most "
                f"{MAX_CLASSES_JOINT} classes; pass pos_label=... for a one-class audit or map rare classes "
                "to 'other' before calling group_performance"
            )
        self.K, self.G, self.ece_bins = K, n_groups, ece_bins
        flat = (codes * K + prep.y) * K + prep.yhat
        self.cm = np.bincount(flat, minlength=n_groups * K * K).reshape(n_groups, K, K)  # (G, K, K)
        self.n_rows = self.cm.sum(axis=(1, 2))
        self.has_ece = prep.score is not None
        if self.has_ece:
            nb = ece_bins
            b = _bin_index(prep.score, nb)
            corr = prep.y == prep.yhat
            cell = (codes * nb + b) * 2 + corr
            size = n_groups * nb * 2
            self.ece_counts = np.bincount(cell, minlength=size).reshape(n_groups, nb, 2)
            self._ece_sum = np.bincount(cell, weights=prep.score, minlength=size).reshape(n_groups, nb, 2)
            self._ece_sumsq = np.bincount(cell, weights=prep.score ** 2, minlength=size).reshape(n_groups, nb, 2)
            self.ece_mean = np.nan_to_num(_div(self._ece_sum, self.ece_counts))  # (G, bins, 2)
            self.ece_S = self.ece_counts[..., 1] - self._ece_sum.sum(axis=-1)  # (G, bins)
            order = np.argsort(codes, kind="stable")  # rows grouped by group, for exact row resampling
            self._row_bin = b[order]
            self._row_d = (corr.astype(np.float64) - prep.score)[order]
            self._start = np.concatenate([[0], np.cumsum(self.n_rows)])
            edges = np.arange(nb + 1) / nb
            self._cell_lo = np.repeat(edges[:-1], 2).reshape(nb, 2)  # confidence range of each cell
            self._cell_hi = np.repeat(edges[1:], 2).reshape(nb, 2)

    # ---- values

    def value(self, key: tuple[str, int | str], cm: np.ndarray | None = None, S: np.ndarray | None = None,
              n: np.ndarray | None = None) -> np.ndarray:
        """Metric ``key`` from confusion matrices ``cm`` (..., K, K), or for ECE from S (..., bins) and sizes n."""
        metric, ck = key
        if metric == "ece":
            return _div(np.abs(S).sum(axis=-1), n)
        return _metric_value(cm, metric, ck)

    def denom(self, metric: str, ck: int | str) -> np.ndarray:
        if metric == "ece":
            return self.n_rows
        return _metric_denom(self.cm, metric, ck)

    def rest(self, key: tuple[str, int | str]) -> tuple[np.ndarray, np.ndarray, tuple | None]:
        """Value, denominator and score parts of "every other row of the attribute", per group: (G,) each."""
        if key[0] == "ece":
            n_rest = self.n_rows.sum() - self.n_rows
            return self.value(key, S=self.ece_S.sum(axis=0)[None] - self.ece_S, n=n_rest), n_rest, None
        cm_rest = self.cm.sum(axis=0)[None] - self.cm
        return (self.value(key, cm=cm_rest), np.asarray(_metric_denom(cm_rest, *key), dtype=np.float64),
                _score_parts(cm_rest, *key))

    def score_parts(self, key: tuple[str, int | str]) -> tuple[np.ndarray, np.ndarray] | None:
        return _score_parts(self.cm, *key)

    # ---- bootstrap

    def bootstrap(self, keys, *, n_boot: int, rng: np.random.Generator, rest: bool = False) -> tuple[dict, dict | None]:
        """(B, G) replicate values per key, every group resampled independently.

        With ``rest`` also (B, G) replicates of each group's complement within the attribute
        (the sum of the other groups' replicates: a stratified bootstrap of the rest).
        """
        B, G, K = int(n_boot), self.G, self.K
        cm_keys = [k for k in keys if k[0] != "ece"]
        ece_keys = [k for k in keys if k[0] == "ece"] if self.has_ece else []
        kids = np.random.SeedSequence(int(rng.integers(2**63))).spawn(2 * G)
        vals = {k: np.full((B, G), np.nan) for k in keys}
        rest_vals = {k: np.full((B, G), np.nan) for k in keys} if rest else None
        if cm_keys:
            cm_flat = self.cm.reshape(G, -1)
            total = np.zeros((B, K * K), dtype=np.int64) if rest else None
            for g in range(G):
                if self.n_rows[g] == 0:
                    continue
                rep = multinomial_bootstrap(cm_flat[g], n_boot=B, seed=np.random.default_rng(kids[g]))
                if total is not None:
                    total += rep
                rep = rep.reshape(B, K, K)
                for k in cm_keys:
                    vals[k][:, g] = self.value(k, cm=rep)
            if rest_vals is not None:
                for g in range(G):  # the same draws again (same seeds): rest = total - own
                    own = (multinomial_bootstrap(cm_flat[g], n_boot=B, seed=np.random.default_rng(kids[g]))
                           if self.n_rows[g] else 0)
                    rep = (total - own).reshape(B, K, K)
                    for k in cm_keys:
                        rest_vals[k][:, g] = self.value(k, cm=rep)
        if ece_keys:
            S = np.stack([self._ece_boot(g, B, np.random.default_rng(kids[G + g])) for g in range(G)], axis=1)
            for k in ece_keys:
                vals[k] = self.value(k, S=S, n=self.n_rows[None, :])
                if rest_vals is not None:
                    rest_vals[k] = self.value(k, S=S.sum(axis=1, keepdims=True) - S,
                                              n=(self.n_rows.sum() - self.n_rows)[None, :])
        return vals, rest_vals

    def _ece_boot(self, g: int, B: int, gen: np.random.Generator) -> np.ndarray:
        """(B, bins) S of B row bootstraps of group g."""
        nb = self.ece_bins
        s, e = int(self._start[g]), int(self._start[g + 1])
        n = e - s
        if n == 0:
            return np.zeros((B, nb))
        if n * B <= ECE_EXACT_ROW_DRAWS:
            bins, d = self._row_bin[s:e], self._row_d[s:e]
            out = np.empty((B, nb))
            step = max(1, _CHUNK // n)
            for a in range(0, B, step):
                m = min(step, B - a)
                idx = gen.integers(0, n, size=(m, n))
                key = bins[idx] + nb * np.arange(m)[:, None]
                out[a:a + m] = np.bincount(key.ravel(), weights=d[idx].ravel(), minlength=m * nb).reshape(m, nb)
            return out
        # cell approximation: exact multinomial (bin, correct) counts, normal confidence sums
        cnt = multinomial_bootstrap(self.ece_counts[g].ravel(), n_boot=B, seed=gen).reshape(B, nb, 2)
        c = self.ece_counts[g]
        var = np.maximum(np.nan_to_num(_div(self._ece_sumsq[g], c)) - self.ece_mean[g] ** 2, 0.0)
        conf = cnt * self.ece_mean[g] + np.sqrt(cnt * var) * gen.standard_normal(cnt.shape)
        conf = np.clip(conf, cnt * self._cell_lo, cnt * self._cell_hi)
        return cnt[..., 1] - conf.sum(axis=-1)

    # ---- permutations

    def permute(self, keys, groups: np.ndarray, *, n_perm: int, rng: np.random.Generator,
                rest: bool = False) -> tuple[dict, dict | None]:
        """(P, len(groups)) values per key after permuting group labels among the rows of ``groups``.

        With ``rest`` also (P, len(groups)) values of each group's complement among those rows.
        Confusion-matrix metrics are drawn on counts (multivariate hypergeometric); ECE permutes
        rows (confidence with correctness), or uses the cell approximation for very many rows.
        """
        groups = np.asarray(groups, dtype=np.int64)
        k, K, P = len(groups), self.K, int(n_perm)
        cm_keys = [key for key in keys if key[0] != "ece"]
        ece_keys = [key for key in keys if key[0] == "ece"] if self.has_ece else []
        vals = {key: np.empty((P, k)) for key in keys}
        rest_vals = {key: np.empty((P, k)) for key in keys} if rest else None
        if cm_keys:
            cm_flat = self.cm[groups].reshape(k, -1)
            pool = cm_flat.sum(axis=0)
            step = max(1, 4 * _CHUNK // (k * K * K))
            for a in range(0, P, step):
                m = min(step, P - a)
                rep = hypergeometric_permutation(cm_flat, n_perm=m, seed=rng)  # (m, k, K*K)
                for key in cm_keys:
                    vals[key][a:a + m] = self.value(key, cm=rep.reshape(m, k, K, K))
                    if rest_vals is not None:
                        rest_vals[key][a:a + m] = self.value(key, cm=(pool - rep).reshape(m, k, K, K))
        if ece_keys:
            n = self.n_rows[groups]
            step = max(1, 4 * _CHUNK // (k * 2 * self.ece_bins))
            for a in range(0, P, step):
                m = min(step, P - a)
                S = self._ece_perm(groups, m, rng)  # (m, k, bins)
                for key in ece_keys:
                    vals[key][a:a + m] = self.value(key, S=S, n=n)
                    if rest_vals is not None:
                        rest_vals[key][a:a + m] = self.value(key, S=self.ece_S[groups].sum(axis=0) - S, n=n.sum() - n)
        return vals, rest_vals

    def _ece_perm(self, groups: np.ndarray, P: int, rng: np.random.Generator) -> np.ndarray:
        """(P, k, bins) S of each group after permuting labels among the rows of ``groups``."""
        nb, k = self.ece_bins, len(groups)
        sizes = self.n_rows[groups]
        n = int(sizes.sum())
        if n * P <= ECE_EXACT_ROW_DRAWS:
            sl = [slice(int(self._start[g]), int(self._start[g + 1])) for g in groups]
            bins = np.concatenate([self._row_bin[s] for s in sl])
            d = np.concatenate([self._row_d[s] for s in sl])
            lab = np.repeat(np.arange(k), sizes)
            out = np.empty((P, k, nb))
            step = max(1, _CHUNK // max(n, 1))
            for a in range(0, P, step):
                m = min(step, P - a)
                pl = rng.permuted(np.broadcast_to(lab, (m, n)), axis=1)  # (m, n) permuted labels
                key = (pl + k * np.arange(m)[:, None]) * nb + bins[None, :]
                out[a:a + m] = np.bincount(key.ravel(), weights=np.broadcast_to(d, (m, n)).ravel(),
                                           minlength=m * k * nb).reshape(m, k, nb)
            return out
        # cell approximation: exact hypergeometric (bin, correct) counts; each group's confidence
        # sum in a cell is a normal draw with the moments of sampling without replacement from
        # what the previous groups left of the pooled cell
        cells = self.ece_counts[groups].reshape(k, -1)  # (k, 2 bins)
        cnt = hypergeometric_permutation(cells, n_perm=P, seed=rng).astype(np.float64)  # (P, k, C)
        N = np.broadcast_to(cells.sum(axis=0).astype(np.float64), (P, cells.shape[1])).copy()
        R = np.broadcast_to(self._ece_sum[groups].reshape(k, -1).sum(axis=0), N.shape).copy()
        tot_n = cells.sum(axis=0)
        mean = _div(self._ece_sum[groups].reshape(k, -1).sum(axis=0), tot_n)
        var = np.maximum(np.nan_to_num(_div(self._ece_sumsq[groups].reshape(k, -1).sum(axis=0), tot_n)
                                        - np.nan_to_num(mean) ** 2), 0.0)
        lo, hi = self._cell_lo.ravel(), self._cell_hi.ravel()
        conf = np.empty_like(cnt)
        for j in range(k - 1):
            m = cnt[:, j, :]
            fpc = (N - m) / np.maximum(N - 1, 1)
            x = m * np.nan_to_num(_div(R, N))
            x = x + np.sqrt(np.maximum(m * var * fpc, 0.0)) * rng.standard_normal(m.shape)
            x = np.clip(x, m * lo, m * hi)
            x = np.clip(x, R - (N - m) * hi, R - (N - m) * lo)
            conf[:, j, :] = x
            R -= x
            N -= m
        conf[:, k - 1, :] = R
        cnt = cnt.reshape(P, k, nb, 2)
        return cnt[..., 1] - conf.reshape(P, k, nb, 2).sum(axis=-1)


def _cls_name(prep: _Prepared, ck: int | str) -> str:
    return prep.classes[ck] if isinstance(ck, int) else ck


@dataclass
class _AttrResult:
    attribute: str
    names: list[str]
    engine: _Engine
    keys: list[tuple[str, int | str]]
    values: dict  # key -> (G,)
    denoms: dict  # key -> (G,)
    boots: dict  # key -> (B, G)
    rest_boots: dict | None = None  # key -> (B, G) replicates of each group's complement (one_vs_rest)


def _compute(
    predictions: pd.DataFrame,
    *,
    group_cols: Sequence[str],
    label_col: str,
    pred_col: str,
    score_col: str | None,
    metrics: Sequence[str],
    intersections: bool,
    classes: Literal["ovr+macro", "ovr", "macro", "none"],
    pos_label: str | None,
    n_boot: int,
    seed: int,
    ece_bins: int,
    rest: bool = False,
) -> tuple[_Prepared, list[_AttrResult]]:
    prep = _prepare(
        predictions, group_cols=group_cols, label_col=label_col, pred_col=pred_col, score_col=score_col,
        metrics=metrics, classes=classes, pos_label=pos_label,
    )
    keys = _keys_for(metrics, prep.cls_keys)
    if prep.score is None:
        keys = [k for k in keys if k[0] != "ece"]
    rng = as_rng(seed)
    results = []
    for cols in _attributes(group_cols, intersections):
        codes, names = _group_codes(prep.df, cols)
        eng = _Engine(prep, codes, len(names), ece_bins)
        values = _metricframe_values(prep, eng, keys)
        denoms = {k: np.asarray(eng.denom(*k), dtype=np.float64) for k in keys}
        for k in keys:  # a zero denominator is undefined, not sklearn's conventional 0
            values[k] = np.where(denoms[k] > 0, values[k], np.nan)
            counted = (eng.value(k, S=eng.ece_S, n=eng.n_rows) if k[0] == "ece" else eng.value(k, cm=eng.cm))
            ok = ~np.isnan(values[k]) & ~np.isnan(counted)
            if not np.allclose(values[k][ok], counted[ok], atol=1e-9):  # pragma: no cover - internal check
                raise AssertionError(f"fairlearn and count-based values disagree for {k}")
        boots, rest_boots = (eng.bootstrap(keys, n_boot=n_boot, rng=rng, rest=rest) if n_boot > 0 else ({}, None))
        results.append(_AttrResult(SEP.join(cols), names, eng, keys, values, denoms, boots, rest_boots))
    return prep, results


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
    classes: Literal["ovr+macro", "ovr", "macro", "none"] = "ovr+macro",
    pos_label: str | None = None,
    min_group_size: int = 50,
    n_boot: int = 1000,
    alpha: float = 0.05,
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
    prep, results = _compute(
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
                    note = (f"n={n_int} {_DENOM_NAME[m]} < min_group_size={min_group_size}; "
                            "excluded from comparisons")
                rows.append((
                    r.attribute, name, m, _cls_name(prep, ck), float(r.values[key][g]), float(lo[g]), float(hi[g]),
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
    classes: Literal["ovr+macro", "ovr", "macro", "none"] = "ovr+macro",
    pos_label: str | None = None,
    min_group_size: int = 50,
    n_boot: int = 1000,
    n_perm: int = 1000,
    alpha: float = 0.05,
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
    prep, results = _compute(
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
    prep: _Prepared
    min_size: int
    n_perm: int
    max_perm: int
    alpha: float
    rng: np.random.Generator


def _base(ctx: _FamilyArgs, r: _AttrResult, key, family: str) -> dict:
    return {"attribute": r.attribute, "metric": key[0], "cls": _cls_name(ctx.prep, key[1]), "family": family}


def _not_tested(base: dict, *, k: int, n_excluded: int, why: str, **extra) -> dict:
    return {**base, "k": k, "n_excluded": n_excluded, **extra, "p_value": np.nan, "test": "not tested", "note": why}


def _nangap(v: np.ndarray) -> np.ndarray:
    """max - min over axis 1 ignoring NaN; NaN where fewer than two values are defined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g = np.nanmax(v, axis=1) - np.nanmin(v, axis=1)
    return np.where((~np.isnan(v)).sum(axis=1) >= 2, g, np.nan)


def _parts(r: _AttrResult, key, idx) -> tuple[np.ndarray, np.ndarray] | None:
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


def _range_family(ctx: _FamilyArgs, r: _AttrResult, by_set: dict, usable: dict) -> dict:
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


def _pairwise_family(ctx: _FamilyArgs, r: _AttrResult, by_set: dict, usable: dict) -> dict:
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


def _ovr_family(ctx: _FamilyArgs, r: _AttrResult, by_set: dict, usable: dict) -> dict:
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
                    why=f"{name}: n={n_int} {_DENOM_NAME[key[0]]} < min_group_size={ctx.min_size}"))
                continue
            if (key, g) not in tested:
                n_int = int(rd[g]) if np.isfinite(rd[g]) else 0
                out.setdefault(key, []).append(_not_tested(
                    base, k=2, n_excluded=0,
                    why=f"{rest_name}: n={n_int} {_DENOM_NAME[key[0]]} < min_group_size={ctx.min_size}"))
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


def fairness_summary(
    predictions: pd.DataFrame,
    *,
    group_cols: Sequence[str],
    label_col: str = "label",
    pred_col: str = "pred",
    pos_label: str | None = None,
    intersections: bool = False,
) -> pd.DataFrame:
    """Demographic-parity difference/ratio and equalized-odds difference via fairlearn (binary tasks).

    Args:
        predictions: labelled predictions.
        group_cols: attributes (intersections joined with "×" when ``intersections``).
        pos_label: the positive class; required unless there are exactly two classes
            (then the second in sorted order is positive).

    Returns:
        DataFrame with columns :data:`FAIRNESS_SUMMARY_COLUMNS`; metric is one of
        demographic_parity_difference, demographic_parity_ratio, equalized_odds_difference.
    """
    from fairlearn.metrics import (
        demographic_parity_difference,
        demographic_parity_ratio,
        equalized_odds_difference,
    )

    prep = _prepare(
        predictions, group_cols=group_cols, label_col=label_col, pred_col=pred_col, score_col=None,
        metrics=("accuracy",), classes="none", pos_label=pos_label,
    )
    if pos_label is None:
        if len(prep.classes) != 2:
            raise UsageError(
                f"fairness_summary is for binary tasks; found {len(prep.classes)} classes {prep.classes[:10]}; "
                "pass pos_label=... to audit one class against the rest"
            )
        pos_label = prep.classes[1]
    pos = prep.classes.index(str(pos_label))
    y = (prep.y == pos).astype(int)
    yh = (prep.yhat == pos).astype(int)
    rows = []
    for cols in _attributes(group_cols, intersections):
        codes, names = _group_codes(prep.df, cols)
        sf = np.asarray(names, dtype=object)[codes]
        for name, fn in (("demographic_parity_difference", demographic_parity_difference),
                         ("demographic_parity_ratio", demographic_parity_ratio),
                         ("equalized_odds_difference", equalized_odds_difference)):
            rows.append((SEP.join(cols), name, float(fn(y, yh, sensitive_features=sf)), str(pos_label), len(y)))
    return pd.DataFrame(rows, columns=FAIRNESS_SUMMARY_COLUMNS)
