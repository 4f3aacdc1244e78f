"""Group statistics with honest uncertainty: pure functions over DataFrames and arrays.

Every function returns a tidy DataFrame whose columns are fixed by docs/RUN_FORMAT.md.
Submodules: metrics (the metric table, registered in :data:`audit.registry.METRICS`), rules
(the minimum group size and alpha every statistic defaults to), performance (group metrics,
disparity tests) over counts (count engine: bootstrap and permutations of confusion matrices)
and estimates (fairlearn point estimates, fairness_summary), intervals (gap, ratio and
difference intervals that cover), resampling (count bootstrap, permutations, intervals),
multiple (Holm, BH), embeddings, association (WEAT, zero-shot, harmful labels), distribution
(predictions by group), retrieval (skew, NDKL), regions (explanation mass by group), prompts,
sets (shipped label / query / word / prompt sets).

The names below are imported on first use, so that reading a default (``audit.stats.rules``)
or the metric table costs no scipy import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, for readers and type checkers
    from audit.stats.association import (
        AssociationTest,
        association_table,
        harmful_label_rates,
        single_category_eat,
        weat,
        zeroshot_label_distribution,
    )
    from audit.stats.distribution import prediction_distribution
    from audit.stats.embeddings import embedding_group_stats, linear_probe, mmd_test, projection
    from audit.stats.intervals import difference_interval, group_intervals, range_interval, ratio_interval
    from audit.stats.metrics import MetricDef, metric_def, metric_definitions
    from audit.stats.multiple import bh, holm
    from audit.stats.performance import (
        disparity_tests,
        expected_calibration_error,
        fairness_summary,
        group_performance,
    )
    from audit.stats.regions import mass_in_region, paired_mass_test, region_mass_by_group
    from audit.stats.retrieval import ndkl, retrieval_skew, skew_at_k
    from audit.stats.rules import ALPHA, MIN_GROUP_SIZE
    from audit.stats.sets import load_set, shipped_sets

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "ALPHA": "rules",
    "AssociationTest": "association",
    "MIN_GROUP_SIZE": "rules",
    "MetricDef": "metrics",
    "association_table": "association",
    "bh": "multiple",
    "difference_interval": "intervals",
    "disparity_tests": "performance",
    "embedding_group_stats": "embeddings",
    "expected_calibration_error": "performance",
    "fairness_summary": "performance",
    "group_intervals": "intervals",
    "group_performance": "performance",
    "harmful_label_rates": "association",
    "holm": "multiple",
    "linear_probe": "embeddings",
    "load_set": "sets",
    "mass_in_region": "regions",
    "metric_def": "metrics",
    "metric_definitions": "metrics",
    "mmd_test": "embeddings",
    "ndkl": "retrieval",
    "paired_mass_test": "regions",
    "prediction_distribution": "distribution",
    "projection": "embeddings",
    "range_interval": "intervals",
    "ratio_interval": "intervals",
    "region_mass_by_group": "regions",
    "retrieval_skew": "retrieval",
    "shipped_sets": "sets",
    "single_category_eat": "association",
    "skew_at_k": "retrieval",
    "weat": "association",
    "zeroshot_label_distribution": "association",
}

__all__ = [
    "ALPHA",
    "MIN_GROUP_SIZE",
    "AssociationTest",
    "MetricDef",
    "association_table",
    "bh",
    "difference_interval",
    "disparity_tests",
    "embedding_group_stats",
    "expected_calibration_error",
    "fairness_summary",
    "group_intervals",
    "group_performance",
    "harmful_label_rates",
    "holm",
    "linear_probe",
    "load_set",
    "mass_in_region",
    "metric_def",
    "metric_definitions",
    "mmd_test",
    "ndkl",
    "paired_mass_test",
    "prediction_distribution",
    "projection",
    "range_interval",
    "ratio_interval",
    "region_mass_by_group",
    "retrieval_skew",
    "shipped_sets",
    "single_category_eat",
    "skew_at_k",
    "weat",
    "zeroshot_label_distribution",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if not name.startswith("__"):
            try:  # a submodule reached as an attribute (audit.stats.performance after import audit.stats)
                return importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{__name__}.{name}":
                    raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
