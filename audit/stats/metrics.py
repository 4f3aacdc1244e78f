"""The metric table: one definition per group metric, registered in :data:`audit.registry.METRICS`.

A group metric is a function of a group's K x K confusion matrix (rows: true class, columns:
predicted class), or, for calibration, of its rows' (confidence bin, correct) cells. Its
definition (:class:`MetricDef`) says everything the rest of the library needs:

* the rows it has: ``"__all__"`` (multiclass, :attr:`MetricDef.overall`) and/or one-vs-rest
  (one row per class plus ``"__macro__"``, their mean; :attr:`MetricDef.one_vs_rest`);
* per scope a :class:`Formula`: the value from counts, the denominator the minimum-size rule
  counts, the (successes, trials) score parts the intervals use (Wilson floor, MOVER), and the
  fairlearn / scikit-learn function that gives the point estimate through ``MetricFrame``;
* ``denominator``: the denominator's name in notes ("n=12 positives < min_group_size=50");
* ``higher_is_better``: True, False, or None where no direction is better (selection rate);
* ``display_name``: the name every surface prints.

Adding a metric is one definition here plus :func:`register` (or ``METRICS.register(name, defn)``
from any module): :func:`audit.stats.group_performance`, :func:`audit.stats.disparity_tests`,
the config (``stats.metrics``) and the findings ledger read the table.

Example:
    >>> from audit.stats.metrics import metric_def
    >>> d = metric_def("fnr")
    >>> d.display_name, d.denominator, d.higher_is_better, d.scopes
    ('miss rate (FNR)', 'positives', False, ('one_vs_rest',))
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from audit.registry import METRICS as REGISTRY

__all__ = [
    "BUILTIN",
    "Counts",
    "Formula",
    "Metric",
    "MetricDef",
    "expected_calibration_error",
    "metric_def",
    "metric_definitions",
    "metric_names",
    "register",
]

#: the built-in metric names (a static type; the registry may hold more)
Metric = Literal["accuracy", "balanced_accuracy", "tpr", "fnr", "fpr", "precision", "selection_rate", "ece"]
Scope = Literal["__all__", "one_vs_rest"]


# --------------------------------------------------------------------------- arithmetic on counts


def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b elementwise, NaN where b <= 0 (an undefined rate, not 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN, NaN (without a warning) where every value is NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


class Counts(NamedTuple):
    """One-vs-rest cells per class, each (..., K) float64: true/false positives/negatives."""

    tp: np.ndarray
    fn: np.ndarray
    fp: np.ndarray
    tn: np.ndarray


def ovr_counts(cm: np.ndarray) -> Counts:
    """tp, fn, fp, tn per class from (..., K, K) confusion matrices (rows: true, cols: pred)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)  # (..., K)
    pos = cm.sum(axis=-1).astype(np.float64)  # (..., K) true count per class
    ppos = cm.sum(axis=-2).astype(np.float64)  # (..., K) predicted count per class
    n = cm.sum(axis=(-2, -1)).astype(np.float64)[..., None]  # (..., 1)
    fn = pos - tp
    fp = ppos - tp
    tn = n - tp - fn - fp
    return Counts(tp, fn, fp, tn)


# --------------------------------------------------------------------------- the definition


@dataclass(frozen=True)
class Formula:
    """How a metric is computed on one scope from counts.

    For the one-vs-rest scope the inputs are :class:`Counts` ((..., K) each) and the outputs
    are per class: value (..., K), denominator (..., K), score parts (..., K, J). For the
    ``"__all__"`` scope the input is the (..., K, K) confusion matrix and the outputs drop the
    class axis. ``value``, ``denominator`` and ``score_parts`` are None for a calibration metric,
    which the engine computes from rows (:attr:`MetricDef.calibration`).

    Attributes:
        estimator: returns the fairlearn / scikit-learn function of (y_true, y_pred,
            sample_weight=...) used for the point estimate through ``MetricFrame`` (binary 0/1
            labels for one-vs-rest, class indices for ``"__all__"``); a factory, so that
            fairlearn is imported only when a metric is computed.
        value: the metric from counts (checked against the estimator on every call).
        denominator: what the minimum group size counts.
        score_parts: (successes, trials), each (..., J): the J rates whose mean is the metric;
            the intervals' score (Wilson) floor and MOVER differences use them.
    """

    estimator: Callable[[], Callable]
    value: Callable | None = None
    denominator: Callable | None = None
    score_parts: Callable | None = None


@dataclass(frozen=True)
class MetricDef:
    """One group metric: what it is, which rows it has, and how it is computed.

    Attributes:
        name: the key in tables and in ``stats.metrics``.
        display_name: the name every surface prints ("recall (TPR)").
        denominator: the name of what the minimum-size rule counts ("positives").
        higher_is_better: True, False, or None where neither direction is better.
        overall: formula of the ``"__all__"`` row (None: the metric has no such row).
        one_vs_rest: formula of the per-class rows and their ``"__macro__"`` mean (None: none).
        calibration: computed from the rows' confidence bins and correctness (top-label ECE:
            bootstrap and permutations resample rows) instead of from the confusion matrix;
            needs a score column.
    """

    name: str
    display_name: str
    denominator: str
    higher_is_better: bool | None
    overall: Formula | None = None
    one_vs_rest: Formula | None = None
    calibration: bool = False

    def __post_init__(self) -> None:
        if self.overall is None and self.one_vs_rest is None:
            raise ValueError(f"metric {self.name!r} needs an overall or a one_vs_rest formula")
        if self.one_vs_rest is not None and self.calibration:
            raise ValueError(f"metric {self.name!r}: a calibration metric has only the overall row")
        for f in (self.overall, self.one_vs_rest):
            if f is not None and not self.calibration and (f.value is None or f.denominator is None):
                raise ValueError(f"metric {self.name!r}: a count formula needs value and denominator")

    @property
    def scopes(self) -> tuple[Scope, ...]:
        """The rows the metric has: ``"__all__"`` and/or ``"one_vs_rest"`` (classes and macro)."""
        out: list[Scope] = []
        if self.overall is not None:
            out.append("__all__")
        if self.one_vs_rest is not None:
            out.append("one_vs_rest")
        return tuple(out)


def register(defn: MetricDef) -> MetricDef:
    """Register ``defn`` in :data:`audit.registry.METRICS` under its name; returns it."""
    REGISTRY.register(defn.name, defn)
    return defn


def metric_def(name: str) -> MetricDef:
    """The registered definition of ``name`` (a :class:`~audit.errors.UsageError` names the known ones)."""
    return REGISTRY.get(name)


def metric_definitions() -> list[MetricDef]:
    """Every registered metric: the built-in table's order, then later registrations by name."""
    names = REGISTRY.names()
    builtin = [d.name for d in BUILTIN]
    return [REGISTRY.get(n) for n in builtin if n in names] + [
        REGISTRY.get(n) for n in names if n not in builtin
    ]


def metric_names() -> tuple[str, ...]:
    """Names of :func:`metric_definitions`, in that order."""
    return tuple(d.name for d in metric_definitions())


# --------------------------------------------------------------------------- calibration (ECE)


def bin_index(score: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width confidence bins [i/B, (i+1)/B), the last one closed at 1."""
    return np.clip((np.asarray(score, dtype=np.float64) * n_bins).astype(np.int64), 0, n_bins - 1)


def _ece_from_cells(counts: np.ndarray, conf_mean: np.ndarray) -> np.ndarray:
    """ECE from (..., n_bins, 2) counts of (bin, correct) and (..., n_bins, 2) mean confidences."""
    c = counts.astype(np.float64)
    nb = c.sum(axis=-1)  # (..., n_bins)
    acc = div(c[..., 1], nb)
    conf = div((c * conf_mean).sum(axis=-1), nb)
    gap = np.where(nb > 0, np.abs(acc - conf), 0.0)
    n = nb.sum(axis=-1)
    return div((nb * gap).sum(axis=-1), n)


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
    b = bin_index(conf, n_bins)
    cell = b * 2 + corr
    counts = np.bincount(cell, minlength=2 * n_bins).reshape(n_bins, 2)
    sums = np.bincount(cell, weights=conf, minlength=2 * n_bins).reshape(n_bins, 2)
    return float(_ece_from_cells(counts, div(sums, counts)))


def ece_estimator(y_true, y_pred, *, sample_weight=None, n_bins: int) -> float:
    """Weighted top-label ECE (y_true: correct, y_pred: confidence) for MetricFrame."""
    corr = np.asarray(y_true, dtype=bool)
    conf = np.asarray(y_pred, dtype=np.float64)
    w = np.ones_like(conf) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    b = bin_index(conf, n_bins)
    acc_sum = np.bincount(b, weights=w * corr, minlength=n_bins)
    conf_sum = np.bincount(b, weights=w * conf, minlength=n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / w.sum()) if w.sum() > 0 else float("nan")


# --------------------------------------------------------------------------- estimators (lazy imports)


def _fairlearn(name: str, **kw) -> Callable[[], Callable]:
    def make() -> Callable:
        import fairlearn.metrics

        return functools.partial(getattr(fairlearn.metrics, name), **kw)

    return make


def _sklearn(name: str, **kw) -> Callable[[], Callable]:
    def make() -> Callable:
        import sklearn.metrics

        fn = getattr(sklearn.metrics, name)
        return functools.partial(fn, **kw) if kw else fn

    return make


# --------------------------------------------------------------------------- the table


def _rate(num: Callable[[Counts], np.ndarray], den: Callable[[Counts], np.ndarray],
          estimator: Callable[[], Callable]) -> Formula:
    """A one-vs-rest rate num / den: one score part (num, den) per class."""
    return Formula(
        estimator=estimator,
        value=lambda c: div(num(c), den(c)),
        denominator=den,
        score_parts=lambda c: (num(c)[..., None], den(c)[..., None]),  # (..., K, 1)
    )


def _trace(cm: np.ndarray) -> np.ndarray:
    return np.trace(cm, axis1=-2, axis2=-1)


def _total(cm: np.ndarray) -> np.ndarray:
    return cm.sum(axis=(-2, -1))


def _smallest_present_class(cm: np.ndarray) -> np.ndarray:
    pos = cm.sum(axis=-1).astype(np.float64)
    return np.where(pos > 0, pos, np.inf).min(axis=-1)


ACCURACY = MetricDef(
    "accuracy", "accuracy", "rows", True,
    overall=Formula(
        estimator=_sklearn("accuracy_score"),
        value=lambda cm: div(_trace(cm), _total(cm)),
        denominator=_total,
        score_parts=lambda cm: (_trace(cm)[..., None].astype(np.float64), _total(cm)[..., None].astype(np.float64)),
    ),
)
BALANCED_ACCURACY = MetricDef(
    "balanced_accuracy", "balanced accuracy", "min(positives, negatives)", True,
    # multiclass: mean recall over the classes present; its denominator is the smallest present class
    overall=Formula(
        estimator=_sklearn("balanced_accuracy_score"),
        value=lambda cm: nanmean(div(np.diagonal(cm, axis1=-2, axis2=-1), cm.sum(axis=-1)), axis=-1),
        denominator=_smallest_present_class,
        score_parts=lambda cm: (np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64),
                                cm.sum(axis=-1).astype(np.float64)),
    ),
    one_vs_rest=Formula(
        estimator=_sklearn("balanced_accuracy_score"),
        value=lambda c: 0.5 * (div(c.tp, c.tp + c.fn) + div(c.tn, c.tn + c.fp)),
        denominator=lambda c: np.minimum(c.tp + c.fn, c.fp + c.tn),
        score_parts=lambda c: (np.stack([c.tp, c.tn], axis=-1), np.stack([c.tp + c.fn, c.tn + c.fp], axis=-1)),
    ),
)
TPR = MetricDef("tpr", "recall (TPR)", "positives", True, one_vs_rest=_rate(
    lambda c: c.tp, lambda c: c.tp + c.fn, _fairlearn("true_positive_rate", pos_label=1)))
FNR = MetricDef("fnr", "miss rate (FNR)", "positives", False, one_vs_rest=_rate(
    lambda c: c.fn, lambda c: c.tp + c.fn, _fairlearn("false_negative_rate", pos_label=1)))
FPR = MetricDef("fpr", "false-positive rate", "negatives", False, one_vs_rest=_rate(
    lambda c: c.fp, lambda c: c.fp + c.tn, _fairlearn("false_positive_rate", pos_label=1)))
PRECISION = MetricDef("precision", "precision", "predicted positives", True, one_vs_rest=_rate(
    lambda c: c.tp, lambda c: c.tp + c.fp, _sklearn("precision_score", pos_label=1, zero_division=np.nan)))
SELECTION_RATE = MetricDef("selection_rate", "selection rate", "rows", None, one_vs_rest=_rate(
    lambda c: c.tp + c.fp, lambda c: c.tp + c.fn + c.fp + c.tn, _fairlearn("selection_rate", pos_label=1)))
ECE = MetricDef(
    "ece", "calibration error (ECE)", "rows", False, calibration=True,
    overall=Formula(estimator=lambda: ece_estimator),  # called with n_bins=...
)

#: the built-in table, in the order of every metric list and table
BUILTIN: tuple[MetricDef, ...] = (ACCURACY, BALANCED_ACCURACY, TPR, FNR, FPR, PRECISION, SELECTION_RATE, ECE)
for _d in BUILTIN:
    register(_d)
del _d
