"""Point estimates per group: fairlearn's MetricFrame on the weighted contingency table.

:func:`compute` is the shared first step of :func:`audit.stats.group_performance` and
:func:`audit.stats.disparity_tests`: per attribute, the counts (:class:`audit.stats.counts.Engine`),
the point estimates through the fairlearn / scikit-learn function each metric names in
:mod:`audit.stats.metrics` (checked against the count formulas), the denominators and the
bootstrap replicates. :func:`fairness_summary` gives fairlearn's demographic-parity and
equalized-odds summaries for binary tasks.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit.errors import UsageError
from audit.stats.counts import (
    ALL,
    MACRO,
    SEP,
    Classes,
    Engine,
    Key,
    Prepared,
    attributes,
    group_codes,
    is_calibration,
    keys_for,
    prepare,
)
from audit.stats.metrics import metric_def, nanmean
from audit.stats.resampling import as_rng

__all__ = ["FAIRNESS_SUMMARY_COLUMNS", "AttrResult", "compute", "fairness_summary", "metricframe_values"]

FAIRNESS_SUMMARY_COLUMNS = ["attribute", "metric", "value", "pos_label", "n"]


def metricframe_values(prep: Prepared, eng: Engine, keys: list[Key]) -> dict[Key, np.ndarray]:
    """Point estimates per key -> (G,) through fairlearn.metrics.MetricFrame.

    MetricFrame is given the weighted contingency table rather than the raw rows: one row
    per non-empty (group, label, prediction) cell with its count as ``sample_weight`` (and
    one row per (group, confidence bin, correct) cell for ECE, at the cell's mean
    confidence). Every metric here is a function of those weighted counts, so the values
    are identical to the row-level ones, and the cost is O(cells) instead of O(rows)
    (fairlearn's per-row argument stacking makes a million raw rows take minutes).
    """
    from fairlearn.metrics import MetricFrame

    G, K = eng.G, eng.K
    g_idx, y_idx, p_idx = np.nonzero(eng.cm)
    w = eng.cm[g_idx, y_idx, p_idx].astype(np.float64)
    sf = pd.Series(g_idx, name="group")
    out: dict[Key, np.ndarray] = {}

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
        need_all = [m for m, k in keys if k == ALL and not is_calibration((m, k))]
        if need_all:
            mf = frame({m: metric_def(m).overall.estimator() for m in need_all}, y_idx, p_idx, w, sf)
            for m in need_all:
                out[(m, ALL)] = by_group(mf, m)
        for m in [m for m, k in keys if k == ALL and is_calibration((m, k))] if eng.has_ece else []:
            eg, eb, ec = np.nonzero(eng.ece_counts)
            mf = frame({m: functools.partial(metric_def(m).overall.estimator(), n_bins=eng.ece_bins)},
                       ec.astype(bool), eng.ece_mean[eg, eb, ec], eng.ece_counts[eg, eb, ec].astype(np.float64),
                       pd.Series(eg, name="group"))
            out[(m, ALL)] = by_group(mf, m)
        ovr_needed = sorted({m for m, k in keys if k != ALL})
        class_idx = sorted({k for _, k in keys if isinstance(k, int)})
        all_classes = list(range(K)) if any(k == MACRO for _, k in keys) else class_idx
        per_class: dict[int, dict[str, np.ndarray]] = {}
        for ci in all_classes:
            mf = frame({m: metric_def(m).one_vs_rest.estimator() for m in ovr_needed}, (y_idx == ci).astype(np.int8),
                       (p_idx == ci).astype(np.int8), w, sf)
            per_class[ci] = {m: by_group(mf, m) for m in ovr_needed}
        for m, k in keys:
            if isinstance(k, int):
                out[(m, k)] = per_class[k][m]
            elif k == MACRO:
                out[(m, k)] = nanmean(np.stack([per_class[c][m] for c in all_classes], axis=-1), axis=-1)
    return out


@dataclass
class AttrResult:
    """One attribute's groups, counts, point estimates, denominators and bootstrap replicates."""

    attribute: str
    names: list[str]
    engine: Engine
    keys: list[Key]
    values: dict  # key -> (G,)
    denoms: dict  # key -> (G,)
    boots: dict  # key -> (B, G)
    rest_boots: dict | None = None  # key -> (B, G) replicates of each group's complement (one_vs_rest)


def compute(
    predictions: pd.DataFrame,
    *,
    group_cols: Sequence[str],
    label_col: str,
    pred_col: str,
    score_col: str | None,
    metrics: Sequence[str],
    intersections: bool,
    classes: Classes,
    pos_label: str | None,
    n_boot: int,
    seed: int,
    ece_bins: int,
    rest: bool = False,
) -> tuple[Prepared, list[AttrResult]]:
    """Per attribute: counts, point estimates (checked against the counts) and bootstrap replicates."""
    prep = prepare(
        predictions, group_cols=group_cols, label_col=label_col, pred_col=pred_col, score_col=score_col,
        metrics=metrics, classes=classes, pos_label=pos_label,
    )
    keys = keys_for(metrics, prep.cls_keys)
    if prep.score is None:
        keys = [k for k in keys if not is_calibration(k)]
    rng = as_rng(seed)
    results = []
    for cols in attributes(group_cols, intersections):
        codes, names = group_codes(prep.df, cols)
        eng = Engine(prep, codes, len(names), ece_bins)
        values = metricframe_values(prep, eng, keys)
        denoms = {k: np.asarray(eng.denom(*k), dtype=np.float64) for k in keys}
        for k in keys:  # a zero denominator is undefined, not sklearn's conventional 0
            values[k] = np.where(denoms[k] > 0, values[k], np.nan)
            counted = (eng.value(k, S=eng.ece_S, n=eng.n_rows) if is_calibration(k) else eng.value(k, cm=eng.cm))
            ok = ~np.isnan(values[k]) & ~np.isnan(counted)
            if not np.allclose(values[k][ok], counted[ok], atol=1e-9):  # pragma: no cover - internal check
                raise AssertionError(f"fairlearn and count-based values disagree for {k}")
        boots, rest_boots = (eng.bootstrap(keys, n_boot=n_boot, rng=rng, rest=rest) if n_boot > 0 else ({}, None))
        results.append(AttrResult(SEP.join(cols), names, eng, keys, values, denoms, boots, rest_boots))
    return prep, results


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

    prep = prepare(
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
    for cols in attributes(group_cols, intersections):
        codes, names = group_codes(prep.df, cols)
        sf = np.asarray(names, dtype=object)[codes]
        for name, fn in (("demographic_parity_difference", demographic_parity_difference),
                         ("demographic_parity_ratio", demographic_parity_ratio),
                         ("equalized_odds_difference", equalized_odds_difference)):
            rows.append((SEP.join(cols), name, float(fn(y, yh, sensitive_features=sf)), str(pos_label), len(y)))
    return pd.DataFrame(rows, columns=FAIRNESS_SUMMARY_COLUMNS)
