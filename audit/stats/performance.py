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
* ECE is resampled through its (confidence bin, correct) cell counts; the mean
  confidence of each cell is held at its observed value (the group's for the
  bootstrap, the pooled one for permutations). With 15 bins the spread of confidence
  inside a cell is small, so this approximation only ignores within-cell jitter.

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
from audit.stats.multiple import bh, holm
from audit.stats.resampling import (
    as_rng,
    hypergeometric_permutation,
    multinomial_bootstrap,
    percentile_ci,
    permutation_pvalue,
)

__all__ = [
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
    "p_value", "p_holm", "p_bh", "significant", "test", "note",
]
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


class _Engine:
    """Counts for one attribute: per-group confusion matrices and ECE cells, and resampling on them."""

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
            b = _bin_index(prep.score, ece_bins)
            cell = (codes * ece_bins + b) * 2 + (prep.y == prep.yhat)
            size = n_groups * ece_bins * 2
            self.ece_counts = np.bincount(cell, minlength=size).reshape(n_groups, ece_bins, 2)
            sums = np.bincount(cell, weights=prep.score, minlength=size).reshape(n_groups, ece_bins, 2)
            self.ece_mean = np.nan_to_num(_div(sums, self.ece_counts))  # (G, bins, 2)
            self.ece_pooled_mean = np.nan_to_num(_div(sums.sum(0), self.ece_counts.sum(0)))  # (bins, 2)

    def value(self, cm: np.ndarray, metric: str, ck: int | str, ece: np.ndarray | None = None,
              ece_mean: np.ndarray | None = None) -> np.ndarray:
        if metric == "ece":
            return _ece_from_cells(ece, ece_mean)
        return _metric_value(cm, metric, ck)

    def denom(self, metric: str, ck: int | str) -> np.ndarray:
        if metric == "ece":
            return self.n_rows
        return _metric_denom(self.cm, metric, ck)

    def bootstrap(self, keys, *, n_boot: int, rng: np.random.Generator) -> dict:
        """(B, G) replicate values per key; every group resampled independently."""
        out = {k: np.full((n_boot, self.G), np.nan) for k in keys}
        cm_flat = self.cm.reshape(self.G, -1)
        for g in range(self.G):
            if self.n_rows[g] == 0:
                continue
            rep = multinomial_bootstrap(cm_flat[g], n_boot=n_boot, seed=rng).reshape(n_boot, self.K, self.K)
            ece_rep = None
            if self.has_ece and any(m == "ece" for m, _ in keys):
                ece_rep = multinomial_bootstrap(self.ece_counts[g].ravel(), n_boot=n_boot, seed=rng)
                ece_rep = ece_rep.reshape(n_boot, self.ece_bins, 2)
            for m, ck in keys:
                out[(m, ck)][:, g] = self.value(rep, m, ck, ece_rep, self.ece_mean[g] if ece_rep is not None else None)
        return out

    def permute(self, keys, groups: np.ndarray, *, n_perm: int, rng: np.random.Generator) -> dict:
        """(P, len(groups)) values per key after permuting labels among ``groups`` only."""
        cm_flat = self.cm[groups].reshape(len(groups), -1)
        rep = hypergeometric_permutation(cm_flat, n_perm=n_perm, seed=rng).reshape(n_perm, len(groups), self.K, self.K)
        ece_rep = None
        if self.has_ece and any(m == "ece" for m, _ in keys):
            e = self.ece_counts[groups].reshape(len(groups), -1)
            ece_rep = hypergeometric_permutation(e, n_perm=n_perm, seed=rng).reshape(
                n_perm, len(groups), self.ece_bins, 2
            )
        pooled = self.ece_pooled_mean if ece_rep is not None else None
        return {(m, ck): self.value(rep, m, ck, ece_rep, pooled) for m, ck in keys}


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
            if k[0] != "ece":
                counted = eng.value(eng.cm, *k)
                ok = ~np.isnan(values[k]) & ~np.isnan(counted)
                if not np.allclose(values[k][ok], counted[ok], atol=1e-9):  # pragma: no cover - internal check
                    raise AssertionError(f"fairlearn and count-based values disagree for {k}")
        boots = eng.bootstrap(keys, n_boot=n_boot, rng=rng) if n_boot > 0 else {}
        results.append(_AttrResult(SEP.join(cols), names, eng, keys, values, denoms, boots))
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
    """Per-group metrics with percentile bootstrap intervals (table ``group_performance``).

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
            lo, hi = (percentile_ci(r.boots[key], alpha=alpha) if r.boots else
                      (np.full(len(r.names), np.nan), np.full(len(r.names), np.nan)))
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
    pairwise: bool = False,
    max_perm: int = 100_000,
) -> pd.DataFrame:
    """Max-min gaps across groups with bootstrap intervals and permutation p-values (table ``disparities``).

    For each (attribute, metric, cls), over the groups that are not small for that metric:
    difference = max - min and ratio = min / max with percentile intervals from independent
    within-group bootstraps, and a permutation p-value of the max-min gap (group labels
    permuted among those groups' rows, done exactly on counts as multivariate hypergeometric
    draws; p = (1 + #{gap* >= gap}) / (n_perm + 1)). Holm and Benjamini-Hochberg adjustments
    are over every test in the returned table; ``significant`` is p_holm < alpha. With
    ``pairwise`` every pair of groups gets its own row (k = 2; max_group / min_group hold the pair).

    A permutation p-value cannot go below 1 / (n_perm + 1), while Holm over m tests asks for
    p < alpha / m; so tests whose first ``n_perm`` draws leave fewer than 10 exceedances get more
    draws, in rounds, until 10 exceedances or ``max_perm`` draws (a sequential Monte Carlo
    p-value in the spirit of Besag & Clifford 1991; the number of draws is in ``test``).

    Args: as :func:`group_performance`, plus ``n_perm``, ``pairwise`` and ``max_perm``.

    Returns:
        DataFrame with columns :data:`DISPARITY_COLUMNS`.
    """
    prep, results = _compute(
        predictions, group_cols=group_cols, label_col=label_col, pred_col=pred_col, score_col=score_col,
        metrics=metrics, intersections=intersections, classes=classes, pos_label=pos_label, n_boot=n_boot,
        seed=seed, ece_bins=ece_bins,
    )
    rng = as_rng(np.random.SeedSequence([seed, 1]))
    rows: list[dict] = []
    test_name = f"permutation max-min gap, {n_perm} perms"
    for r in results:
        # group keys by their set of usable groups, so one permutation draw serves them all
        by_set: dict[tuple[int, ...], list] = {}
        for key in r.keys:
            d = r.denoms[key]
            ok = tuple(int(g) for g in np.flatnonzero((d >= min_group_size) & ~np.isnan(r.values[key])))
            by_set.setdefault(ok, []).append(key)
        for ok, keys in by_set.items():
            idx = np.array(ok, dtype=np.int64)
            perm = r.engine.permute(keys, idx, n_perm=n_perm, rng=rng) if len(idx) >= 2 and n_perm > 0 else None
            extra = (_refine_pvalues(r, keys, idx, perm, n_perm=n_perm, max_perm=max_perm, rng=rng)
                     if perm is not None and max_perm > n_perm else {})
            for key in keys:
                base = {"attribute": r.attribute, "metric": key[0], "cls": _cls_name(prep, key[1]),
                        "n_excluded": len(r.names) - len(idx)}
                vals = r.values[key][idx]
                boots = r.boots[key][:, idx] if r.boots else None
                if len(idx) < 2:
                    rows.append({**base, "k": len(idx), "test": test_name,
                                 "note": f"fewer than 2 groups with n >= min_group_size={min_group_size}"})
                    continue
                row = _gap_row(vals, boots, None if perm is None else perm[key], [r.names[i] for i in idx], alpha)
                name = test_name
                if key in extra:
                    row["p_value"], used = extra[key]
                    name = f"permutation max-min gap, {used} perms (sequential: extended while p was small)"
                rows.append({**base, **row, "test": name,
                             "note": _excl_note(len(r.names) - len(idx), min_group_size)})
                if pairwise:
                    for a, b in itertools.combinations(range(len(idx)), 2):
                        sub = np.array([idx[a], idx[b]])
                        pp = r.engine.permute([key], sub, n_perm=n_perm, rng=rng)[key] if n_perm > 0 else None
                        rows.append({**base, "n_excluded": len(r.names) - 2,
                                     **_gap_row(vals[[a, b]], None if boots is None else boots[:, [a, b]], pp,
                                                [r.names[idx[a]], r.names[idx[b]]], alpha),
                                     "test": f"pairwise permutation gap, {n_perm} perms", "note": "pairwise"})
    out = pd.DataFrame(rows, columns=DISPARITY_COLUMNS)
    p = out["p_value"].to_numpy(np.float64)
    out["p_holm"] = holm(p)
    out["p_bh"] = bh(p)
    out["significant"] = (out["p_holm"] < alpha).fillna(False).astype(bool)
    out["k"] = out["k"].astype("int64")
    out["n_excluded"] = out["n_excluded"].astype("int64")
    for c in ("max_group", "min_group", "test", "note"):
        col = out[c].astype(object)
        out[c] = col.where(col.notna(), "").astype(str)
    return out


def _refine_pvalues(r, keys, idx: np.ndarray, perm: dict, *, n_perm: int, max_perm: int,
                    rng: np.random.Generator, target_exceed: int = 10) -> dict:
    """More permutation draws for keys with fewer than ``target_exceed`` exceedances.

    Returns ``{key: (p, draws)}`` for the keys that were extended (others keep their p).
    """
    def gap(v: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmax(v, axis=1) - np.nanmin(v, axis=1)

    obs: dict = {}
    exceed: dict = {}
    for key in keys:
        vals = r.values[key][idx]
        if np.isnan(vals).all():
            continue
        obs[key] = float(np.nanmax(vals) - np.nanmin(vals))
        exceed[key] = int(np.sum(gap(perm[key]) >= obs[key] - 1e-12))
    todo = [k for k in obs if exceed[k] < target_exceed]
    draws = dict.fromkeys(todo, n_perm)
    while todo:
        m = min(max(n_perm, 10_000), max_perm - draws[todo[0]])
        if m <= 0:
            break
        more = r.engine.permute(todo, idx, n_perm=m, rng=rng)
        for key in todo:
            exceed[key] += int(np.sum(gap(more[key]) >= obs[key] - 1e-12))
            draws[key] += m
        todo = [k for k in todo if exceed[k] < target_exceed]
    return {k: ((1 + exceed[k]) / (1 + d), d) for k, d in draws.items() if d > n_perm}


def _excl_note(n_excl: int, min_size: int) -> str:
    return f"{n_excl} group(s) excluded: n < min_group_size={min_size}" if n_excl else ""


def _gap_row(vals: np.ndarray, boots: np.ndarray | None, perm: np.ndarray | None, names: list[str],
             alpha: float) -> dict:
    imax, imin = int(np.nanargmax(vals)), int(np.nanargmin(vals))
    vmax, vmin = float(vals[imax]), float(vals[imin])
    diff = vmax - vmin
    ratio = vmin / vmax if vmax != 0 else np.nan
    row = {"k": len(vals), "max_group": names[imax], "min_group": names[imin], "max_value": vmax,
           "min_value": vmin, "difference": diff, "ratio": ratio, "diff_ci_low": np.nan, "diff_ci_high": np.nan,
           "ratio_ci_low": np.nan, "ratio_ci_high": np.nan, "p_value": np.nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if boots is not None:
            bmax, bmin = np.nanmax(boots, axis=1), np.nanmin(boots, axis=1)
            lo, hi = percentile_ci(bmax - bmin, alpha=alpha)
            row["diff_ci_low"], row["diff_ci_high"] = float(lo), float(hi)
            lo, hi = percentile_ci(_div(bmin, bmax), alpha=alpha)
            row["ratio_ci_low"], row["ratio_ci_high"] = float(lo), float(hi)
        if perm is not None:
            gaps = np.nanmax(perm, axis=1) - np.nanmin(perm, axis=1)
            row["p_value"] = float(permutation_pvalue(diff, gaps))
    return row


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
