"""Map mass inside regions by group, and the paired test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from audit.errors import UsageError
from audit.stats.regions import REGION_MASS_COLUMNS, mass_in_region, paired_mass_test, region_mass_by_group


def test_mass_in_region_pools_pixel_masks_to_the_grid():
    maps = np.zeros((1, 2, 2))
    maps[0] = [[1.0, 3.0], [0.0, 4.0]]
    mask = np.zeros((1, 4, 4), bool)
    mask[0, :2, :2] = True  # patch (0,0) fully inside
    mask[0, :2, 2] = True  # half of patch (0,1)
    assert mass_in_region(maps, mask)[0] == pytest.approx((1 + 0.5 * 3) / 8)
    with pytest.raises(UsageError, match="not a multiple"):
        mass_in_region(maps, np.zeros((1, 3, 3), bool))


def test_region_mass_by_group_values_and_gap_test():
    rng = np.random.default_rng(0)
    n = 300
    g = rng.choice(["x", "y"], n)
    masks = np.zeros((n, 8, 8), bool)
    masks[:, 2:6, 2:6] = True
    maps = rng.random((n, 8, 8))
    maps[g == "y", 2:6, 2:6] *= 3.0  # more mass on the object for y
    t = region_mass_by_group(maps, masks, pd.DataFrame({"g": g}), group_cols=["g"], method="rollout",
                             n_boot=300, n_perm=300, min_group_size=20)
    assert list(t.columns) == REGION_MASS_COLUMNS
    share = mass_in_region(maps, masks)
    r = t.set_index("group")
    assert r.loc["x", "value"] == pytest.approx(share[g == "x"].mean())
    assert r.loc["y", "value"] > r.loc["x", "value"] and r.loc["x", "ci_low"] < r.loc["x", "value"] < r.loc["x", "ci_high"]
    assert r.loc["x", "p_value"] == pytest.approx(1 / 301) and not r.small.any()
    null = region_mass_by_group(rng.random((n, 8, 8)), masks, pd.DataFrame({"g": g}), group_cols=["g"],
                                method="m", n_boot=50, n_perm=300, min_group_size=20)
    assert null.p_value.iloc[0] > 0.01


def test_paired_mass_test_is_scipy_wilcoxon():
    rng = np.random.default_rng(1)
    a = rng.random(40)
    b = a - 0.05 + rng.normal(scale=0.05, size=40)
    r = paired_mass_test(a, b)
    ref = wilcoxon(a, b)
    assert r["p_value"] == pytest.approx(ref.pvalue) and r["statistic"] == pytest.approx(ref.statistic)
    assert r["n"] == 40 and r["median_difference"] == pytest.approx(np.median(a - b))


def test_region_mass_gap_excludes_small_groups_and_its_interval_contains_the_estimate():
    rng = np.random.default_rng(2)
    n = 400
    g = np.where(np.arange(n) < 30, "few", rng.choice(["x", "y"], n))
    masks = np.zeros((n, 8, 8), bool)
    masks[:, 2:6, 2:6] = True
    maps = rng.random((n, 8, 8))
    maps[g == "few", 2:6, 2:6] *= 10.0  # a large planted gap, but only in a small group
    t = region_mass_by_group(maps, masks, pd.DataFrame({"g": g}), group_cols=["g"], method="m", n_boot=300,
                             n_perm=300, min_group_size=50)
    assert list(t.columns) == REGION_MASS_COLUMNS and t.small.dtype == bool
    r = t.set_index("group")
    assert r.loc["few", "small"] and np.isnan(r.loc["few", "p_value"]) and np.isnan(r.loc["few", "difference"])
    big = r.loc[["x", "y"]]
    gap = abs(big.value["x"] - big.value["y"])
    np.testing.assert_allclose(big.difference, gap)
    assert not big.small.any()
    assert (big.diff_ci_low <= big.difference).all() and (big.difference <= big.diff_ci_high).all()
    assert big.diff_ci_low.iloc[0] == 0.0  # no gap between x and y: the interval reaches 0
    assert big.p_value.iloc[0] > 0.01  # the small group's planted gap is not tested
    # min_group_size is honoured as given: at 20 the small group takes part
    t20 = region_mass_by_group(maps, masks, pd.DataFrame({"g": g}), group_cols=["g"], method="m", n_boot=100,
                               n_perm=300, min_group_size=20).set_index("group")
    assert not t20.small.any() and t20.loc["few", "p_value"] == pytest.approx(1 / 301)
