"""The ledger's columns, kinds and the words it uses: metric names that never collide, numbers
formatted once (:mod:`audit.fmt`), the verdict phrase."""

from __future__ import annotations

import math
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
    "harmful_label_rate": "harmful-label rate", "share": "share of predictions", "error_rate": "error rate",
}
KIND_ORDER = ("performance", "calibration", "harmful_label", "association", "slice", "prediction_distribution",
              "region_mass", "retrieval_skew", "embedding", "faithfulness", "sanity", "component")
#: what the model does to people and groups (its outputs) is read before how it does it (its
#: representation and explanations): tier 0 kinds rank before tier 1 kinds of the same status
OUTCOME_KINDS = frozenset({"performance", "calibration", "harmful_label", "association", "slice",
                           "prediction_distribution"})
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


def status_of(sig: bool, tested: bool) -> str:
    """A row's status: significant, not significant, or not tested."""
    return "significant" if sig else ("not significant" if tested else "not tested")


def gap_sentence(subject: str, row: dict[str, Any], *, what: str = "gap", k: int | None = None,
                 extra: str = "") -> str:
    """The ledger's sentence for a comparison of two ends: "<subject>: 0.137 for dotted, n=102 vs 1.000
    for plain, n=102; gap 0.863 (95% CI 0.790 to 0.923), p_adj = 7.9e-04, significant after Holm
    correction." When every group compared has the same value (``k`` groups), it says so instead of
    naming a worst-vs-best pair. n and the interval are left out where unknown."""
    verdict = verdict_phrase(row["significant"], row["status"], row["correction"])
    if k is not None and row["worst_group"] == row["best_group"]:
        return (f"{subject}: {fmt(row['worst_value'])} in each of the {k} groups compared (no gap), "
                f"p_adj = {fmt_p(row['p_adj'])}, {verdict}.")
    nw = "" if row.get("n_worst") is None else f", n={fmt_n(row['n_worst'])}"
    nb = "" if row.get("n_best") is None else f", n={fmt_n(row['n_best'])}"
    ci = (f" (95% CI {fmt(row['ci_low'])} to {fmt(row['ci_high'])})"
          if math.isfinite(as_float(row.get("ci_low"))) else "")
    return (f"{subject}: {fmt(row['worst_value'])} for {row['worst_group']}{nw} vs {fmt(row['best_value'])} for "
            f"{row['best_group']}{nb}; {what} {fmt(row['gap'])}{ci}, p_adj = {fmt_p(row['p_adj'])}, {verdict}"
            + (f"; {extra}" if extra else "") + ".")
