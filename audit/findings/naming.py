"""The ledger's columns, kinds and the words it uses: metric names that never collide, numbers
formatted once (:mod:`audit.fmt`), the verdict phrase."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from audit.fmt import fmt
from audit.stats.metrics import metric_definitions
from audit.stats.rules import ALPHA

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
NO_DIRECTION = frozenset({d.name for d in metric_definitions() if d.higher_is_better is None} | {"share"})
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


def fmt_n(v: Any) -> str:
    try:
        return str(int(v))
    except (TypeError, ValueError):
        return "?"


def as_float(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def verdict_phrase(sig: bool, status: str, correction: str) -> str:
    if status == "not tested":
        return "not tested"
    method = correction.split(" ")[0] if correction and correction != "none" else ""
    after = f" after {method.capitalize()} correction" if method in ("holm", "bh") else ""
    return ("significant" if sig else "not significant") + after
