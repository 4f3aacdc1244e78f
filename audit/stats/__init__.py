"""Group statistics with honest uncertainty: pure functions over DataFrames and arrays.

Every function returns a tidy DataFrame whose columns are fixed by docs/RUN_FORMAT.md.
Submodules: performance (group metrics, disparity tests), intervals (gap, ratio and
difference intervals that cover), resampling (count bootstrap, permutations, intervals),
multiple (Holm, BH), embeddings, association (WEAT, zero-shot,
harmful labels), retrieval (skew, NDKL), regions (explanation mass by group), sets
(shipped label / query / word / prompt sets).
"""

from __future__ import annotations

from audit.stats.association import (
    AssociationTest,
    association_table,
    harmful_label_rates,
    single_category_eat,
    weat,
    zeroshot_label_distribution,
)
from audit.stats.embeddings import embedding_group_stats, linear_probe, mmd_test, projection
from audit.stats.intervals import difference_interval, group_intervals, range_interval, ratio_interval
from audit.stats.multiple import bh, holm
from audit.stats.performance import (
    disparity_tests,
    expected_calibration_error,
    fairness_summary,
    group_performance,
)
from audit.stats.regions import mass_in_region, paired_mass_test, region_mass_by_group
from audit.stats.retrieval import ndkl, retrieval_skew, skew_at_k
from audit.stats.sets import load_set, shipped_sets

__all__ = [
    "AssociationTest",
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
    "mmd_test",
    "ndkl",
    "paired_mass_test",
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

from audit.stats.distribution import prediction_distribution  # appended: predictions by group

__all__ += ["prediction_distribution"]
