"""group_performance / disparity_tests / fairness_summary against independent computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.errors import UsageError
from audit.stats import multiple, resampling
from audit.stats.performance import (
    DISPARITY_COLUMNS,
    GROUP_PERFORMANCE_COLUMNS,
    disparity_tests,
    expected_calibration_error,
    fairness_summary,
    group_performance,
)

# fairlearn user guide, "Common fairness metrics" (docs/user_guide/assessment/common_fairness_metrics.rst)
Y_TRUE = [0, 1, 1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1]
Y_PRED = [0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0]
SF_DATA = ["b", "b", "a", "b", "b", "c", "c", "c", "a", "a", "c", "a", "b", "c", "c", "b", "c", "c"]
# A two-group "sex" column on the same rows (constructed: the user-guide variant with sex groups
# could not be found offline; these rows reproduce its published DP 0.2597 / 0.6364, EO 0.25).
SEX = ["F" if i in (0, 1, 2, 4, 5, 9, 10) else "M" for i in range(18)]


def _frame(sf) -> pd.DataFrame:
    return pd.DataFrame({"label": [str(v) for v in Y_TRUE], "pred": [str(v) for v in Y_PRED], "g": sf})


@pytest.mark.parametrize(
    ("sf", "dpd", "dpr", "eod"),
    [(SF_DATA, 0.25, 2 / 3, 1.0), (SEX, 0.2597, 0.6364, 0.25)],
)
def test_fairness_summary_matches_fairlearn_and_published_values(sf, dpd, dpr, eod):
    from fairlearn.metrics import (
        demographic_parity_difference,
        demographic_parity_ratio,
        equalized_odds_difference,
    )

    t = fairness_summary(_frame(sf), group_cols=["g"], pos_label="1").set_index("metric")["value"]
    assert t["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(Y_TRUE, Y_PRED, sensitive_features=sf))
    assert t["demographic_parity_ratio"] == pytest.approx(demographic_parity_ratio(Y_TRUE, Y_PRED, sensitive_features=sf))
    assert t["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(Y_TRUE, Y_PRED, sensitive_features=sf))
    assert t["demographic_parity_difference"] == pytest.approx(dpd, abs=5e-5)
    assert t["demographic_parity_ratio"] == pytest.approx(dpr, abs=5e-5)
    assert t["equalized_odds_difference"] == pytest.approx(eod, abs=5e-5)


def test_group_rates_match_fairlearn_user_guide_example():
    gp = group_performance(_frame(SEX), group_cols=["g"], pos_label="1", n_boot=50, min_group_size=1,
                           score_col=None)
    sel = gp[(gp.metric == "selection_rate") & (gp.cls == "1")].set_index("group")["value"]
    assert sel["F"] == pytest.approx(5 / 7) and sel["M"] == pytest.approx(5 / 11)


def _random_preds(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    lab = rng.choice(["cat", "dog", "fox"], n)
    pred = np.where(rng.random(n) < 0.7, lab, rng.choice(["cat", "dog", "fox"], n))
    return pd.DataFrame({
        "label": lab, "pred": pred, "score": rng.uniform(0.34, 1.0, n),
        "bg": rng.choice(["grass", "sand"], n), "light": rng.choice(["day", "night", "dusk"], n),
    })


def test_group_performance_values_equal_direct_numpy():
    df = _random_preds()
    gp = group_performance(df, group_cols=["bg", "light"], n_boot=200, seed=1)
    assert list(gp.columns) == GROUP_PERFORMANCE_COLUMNS
    assert set(gp.attribute) == {"bg", "light", "bg×light"}
    sub = df[(df.bg == "sand") & (df.light == "night")]
    row = gp[(gp.attribute == "bg×light") & (gp.group == "sand×night")].set_index(["metric", "cls"])
    y, p = sub.label.to_numpy(), sub.pred.to_numpy()
    pos, ppos = y == "dog", p == "dog"
    assert row.loc[("tpr", "dog"), "value"] == pytest.approx((pos & ppos).sum() / pos.sum())
    assert row.loc[("tpr", "dog"), "n"] == pos.sum()
    assert row.loc[("fpr", "dog"), "value"] == pytest.approx((~pos & ppos).sum() / (~pos).sum())
    assert row.loc[("fpr", "dog"), "n"] == (~pos).sum()
    assert row.loc[("precision", "dog"), "value"] == pytest.approx((pos & ppos).sum() / ppos.sum())
    assert row.loc[("precision", "dog"), "n"] == ppos.sum()
    assert row.loc[("selection_rate", "dog"), "value"] == pytest.approx(ppos.mean())
    assert row.loc[("accuracy", "__all__"), "value"] == pytest.approx((y == p).mean())
    recalls = [((y == c) & (p == c)).sum() / (y == c).sum() for c in ("cat", "dog", "fox")]
    assert row.loc[("balanced_accuracy", "__all__"), "value"] == pytest.approx(np.mean(recalls))
    assert row.loc[("tpr", "__macro__"), "value"] == pytest.approx(np.mean(recalls))
    # ECE written out independently
    conf, corr = sub.score.to_numpy(), y == p
    bins = np.minimum((conf * 15).astype(int), 14)
    ece = sum(abs(corr[bins == b].mean() - conf[bins == b].mean()) * (bins == b).sum() for b in np.unique(bins))
    assert row.loc[("ece", "__all__"), "value"] == pytest.approx(ece / len(sub))
    assert expected_calibration_error(corr, conf) == pytest.approx(ece / len(sub))
    assert (row.n_rows == len(sub)).all()
    ok = gp.dropna(subset=["ci_low"])
    assert ((ok.ci_low <= ok.value + 1e-12) & (ok.value <= ok.ci_high + 1e-12)).mean() > 0.97


def test_small_group_exclusion_counts_the_metric_denominator():
    # group "rare": 400 rows but only 40 positives -> small for tpr, not for accuracy
    rng = np.random.default_rng(3)
    rows = []
    for g, n, npos in (("rare", 400, 40), ("a", 400, 200), ("b", 400, 200)):
        lab = np.array(["1"] * npos + ["0"] * (n - npos))
        pred = np.where(rng.random(n) < 0.8, lab, np.where(lab == "1", "0", "1"))
        rows.append(pd.DataFrame({"label": lab, "pred": pred, "g": g}))
    df = pd.concat(rows, ignore_index=True)
    gp = group_performance(df, group_cols=["g"], pos_label="1", n_boot=100, score_col=None)
    tpr = gp[(gp.metric == "tpr") & (gp.group == "rare")].iloc[0]
    acc = gp[(gp.metric == "accuracy") & (gp.group == "rare")].iloc[0]
    assert tpr.small and tpr.n == 40 and "positives" in tpr.note and tpr.n_rows == 400
    assert not acc.small and acc.n == 400 and acc.note == ""
    dt = disparity_tests(df, group_cols=["g"], pos_label="1", n_boot=100, n_perm=100, score_col=None)
    assert list(dt.columns) == DISPARITY_COLUMNS
    t = dt[(dt.metric == "tpr") & (dt.cls == "1")].iloc[0]
    a = dt[(dt.metric == "accuracy")].iloc[0]
    assert t.k == 2 and t.n_excluded == 1 and "rare" not in (t.max_group, t.min_group)
    assert a.k == 3 and a.n_excluded == 0


def test_disparity_finds_planted_gap_and_adjusts():
    rng = np.random.default_rng(5)
    n = 6000
    g = rng.choice(["x", "y", "z"], n)
    lab = rng.choice(["0", "1"], n)
    p_ok = np.where(g == "z", 0.65, 0.85)
    pred = np.where(rng.random(n) < p_ok, lab, np.where(lab == "1", "0", "1"))
    df = pd.DataFrame({"label": lab, "pred": pred, "g": g, "score": rng.uniform(0.5, 1, n)})
    dt = disparity_tests(df, group_cols=["g"], pos_label="1", n_boot=200, n_perm=2000,
                         comparisons=("range", "pairwise"))
    assert list(dt.columns) == DISPARITY_COLUMNS and set(dt.family) == {"range", "pairwise"}
    acc = dt[(dt.metric == "accuracy") & (dt.family == "range")].iloc[0]
    fixed = disparity_tests(df, group_cols=["g"], pos_label="1", n_boot=200, n_perm=2000, max_perm=2000)
    assert fixed[fixed.metric == "accuracy"].iloc[0].p_value == pytest.approx(1 / 2001)
    # no permutation reaches the gap: the first 2000 draws leave p at its floor 1/2001, so the
    # sequential rule draws more (up to 100,000) and p falls to its new floor
    assert acc.min_group == "z" and acc.significant
    assert acc.p_value == pytest.approx(1 / 100_001) and "100000 perms" in acc.test
    assert acc.diff_ci_low > 0.1 and acc.difference == pytest.approx(acc.max_value - acc.min_value)
    assert acc.diff_ci_low <= acc.difference <= acc.diff_ci_high
    assert acc.ratio == pytest.approx(acc.min_value / acc.max_value)
    assert acc.ratio_ci_low <= acc.ratio <= acc.ratio_ci_high < 0.9
    pw = dt[(dt.metric == "accuracy") & (dt.family == "pairwise")]
    assert len(pw) == 3 and (pw.k == 2).all() and (pw.difference >= 0).all()
    assert ((pw.diff_ci_low <= pw.difference) & (pw.difference <= pw.diff_ci_high)).all()
    xy = pw[(pw[["max_group", "min_group"]].apply(set, axis=1) == {"x", "y"})].iloc[0]
    assert xy.max_group == "x" and xy.max_value > xy.min_value  # the higher value first
    # the pairwise permutation p agrees with a two-proportion z-test on the same pair
    from scipy.stats import norm

    acc_x = (lab == pred)[g == "x"]
    acc_y = (lab == pred)[g == "y"]
    pooled = np.concatenate([acc_x, acc_y]).mean()
    se = np.sqrt(pooled * (1 - pooled) * (1 / len(acc_x) + 1 / len(acc_y)))
    p_z = 2 * norm.sf(abs(acc_x.mean() - acc_y.mean()) / se)
    assert p_z / 3 < xy.p_value < p_z * 3
    # Holm / BH within each family, and the correction column says so
    for fam, sub in dt.groupby("family"):
        np.testing.assert_allclose(sub.p_holm, multiple.holm(sub.p_value))
        np.testing.assert_allclose(sub.p_bh, multiple.bh(sub.p_value))
        m = int(sub.p_value.notna().sum())
        assert (sub.correction.str.startswith(f"holm within family {fam} (m={m})")).all()
    # the deprecated alias gives the same table
    alias = disparity_tests(df, group_cols=["g"], pos_label="1", n_boot=200, n_perm=2000, pairwise=True)
    pd.testing.assert_frame_equal(alias, dt)


def test_null_disparity_false_positive_rate_is_calibrated():
    """200 null datasets, 4 groups with one true rate: the count permutation test's FPR at 0.05."""
    rng = np.random.default_rng(11)
    sizes = np.array([120, 200, 300, 80])
    hits = 0
    for _ in range(200):
        k = rng.binomial(sizes, 0.3)
        counts = np.stack([sizes - k, k], axis=1)  # (G, 2)
        rate = k / sizes
        perm = resampling.hypergeometric_permutation(counts, n_perm=200, seed=rng)
        prate = perm[..., 1] / sizes
        p = resampling.permutation_pvalue(rate.max() - rate.min(), prate.max(1) - prate.min(1))
        hits += p < 0.05
    assert 0.02 <= hits / 200 <= 0.09


def test_count_bootstrap_interval_covers_known_proportion():
    """500 simulated groups of 200 rows at p = 0.3: the 95% count-bootstrap interval covers p >= 92%."""
    rng = np.random.default_rng(12)
    k = rng.binomial(200, 0.3, size=500)
    counts = np.stack([200 - k, k], axis=1)  # (500 datasets, 2 cells)
    boot = resampling.multinomial_bootstrap(counts, n_boot=400, seed=rng)  # (B, 500, 2)
    lo, hi = resampling.percentile_ci(boot[..., 1] / 200)
    assert ((lo <= 0.3) & (0.3 <= hi)).mean() >= 0.92


def test_hypergeometric_permutation_is_a_label_permutation():
    counts = np.array([[30, 10, 5], [20, 20, 0], [5, 5, 40]])
    perm = resampling.hypergeometric_permutation(counts, n_perm=4000, seed=0)
    assert (perm.sum(axis=2) == counts.sum(axis=1)).all()
    assert (perm.sum(axis=1) == counts.sum(axis=0)).all()
    # brute force: permute row labels explicitly and tabulate
    rng = np.random.default_rng(1)
    cells = np.repeat(np.tile(np.arange(3), 3), counts.ravel())
    grp = np.repeat(np.repeat(np.arange(3), 3), counts.ravel())
    brute = np.stack([np.bincount(rng.permutation(grp) * 3 + cells, minlength=9).reshape(3, 3)
                      for _ in range(4000)])
    np.testing.assert_allclose(perm.mean(0), brute.mean(0), atol=0.35)
    np.testing.assert_allclose(perm.std(0), brute.std(0), rtol=0.1, atol=0.1)
    exp = np.outer(counts.sum(1), counts.sum(0)) / counts.sum()
    np.testing.assert_allclose(perm.mean(0), exp, atol=0.35)


def test_holm_and_bh_hand_computed():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    # Holm: sorted 0.005,0.01,0.03,0.04 -> 4*.005=.02, 3*.01=.03, 2*.03=.06, 1*.04=.04->max .06
    np.testing.assert_allclose(multiple.holm(p), [0.03, 0.06, 0.06, 0.02, np.nan])
    # BH: m=4: .005*4/1=.02, .01*4/2=.02, .03*4/3=.04, .04*4/4=.04
    np.testing.assert_allclose(multiple.bh(p), [0.02, 0.04, 0.04, 0.02, np.nan])
    assert (multiple.holm([0.5, 0.9]) == 1.0).all()


def test_errors_name_the_problem():
    df = _random_preds(200)
    with pytest.raises(UsageError, match="'site'.*available columns"):
        group_performance(df, group_cols=["site"])
    with pytest.raises(UsageError, match="unknown metric"):
        group_performance(df, group_cols=["bg"], metrics=("f1",))
    with pytest.raises(UsageError, match="binary"):
        fairness_summary(df, group_cols=["bg"])
    bad = df.assign(score=df.score + 1)
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        group_performance(bad, group_cols=["bg"])


def test_million_row_cost_is_count_based():
    """Intervals depend on counts only: 10x the rows at the same shares gives the same-width CIs / sqrt(10)."""
    df = _random_preds(2000, seed=2)
    big = pd.concat([df] * 10, ignore_index=True)
    a = group_performance(df, group_cols=["bg"], n_boot=300, pos_label="dog", intersections=False)
    b = group_performance(big, group_cols=["bg"], n_boot=300, pos_label="dog", intersections=False)
    np.testing.assert_allclose(a.value, b.value)
    wa, wb = (a.ci_high - a.ci_low).to_numpy(), (b.ci_high - b.ci_low).to_numpy()
    np.testing.assert_allclose(wb / wa, 1 / np.sqrt(10), rtol=0.25)


def _three_groups(seed=7, sizes=(400, 400, 30), acc=(0.9, 0.8, 0.7)):
    rng = np.random.default_rng(seed)
    frames = []
    for name, n, a in zip(("a", "b", "tiny"), sizes, acc, strict=True):
        lab = rng.choice(["0", "1"], n)
        ok = rng.random(n) < a
        frames.append(pd.DataFrame({"label": lab, "pred": np.where(ok, lab, np.where(lab == "1", "0", "1")),
                                    "score": rng.uniform(0.5, 1.0, n), "g": name}))
    return pd.concat(frames, ignore_index=True)


def test_one_vs_rest_rows_compare_each_group_with_every_other_row():
    df = _three_groups()
    dt = disparity_tests(df, group_cols=["g"], metrics=("accuracy", "ece"), classes="none", n_boot=200, n_perm=200,
                         comparisons=("one_vs_rest",))
    assert set(dt.family) == {"one_vs_rest"} and len(dt) == 6  # 2 metrics x 3 groups
    acc = dt[dt.metric == "accuracy"].set_index("max_group")
    correct = (df.label == df.pred).to_numpy()
    for grp in ("a", "b"):
        r = acc.loc[grp]
        mine, rest = correct[df.g == grp], correct[df.g != grp]  # the rest includes the small group's rows
        assert r.min_group == "rest of g" and r.k == 2 and r.n_excluded == 0
        assert r.max_value == pytest.approx(mine.mean()) and r.min_value == pytest.approx(rest.mean())
        assert r.difference == pytest.approx(mine.mean() - rest.mean())  # group - rest, signed
        assert r.diff_ci_low <= r.difference <= r.diff_ci_high
        assert r.ratio == pytest.approx(min(mine.mean(), rest.mean()) / max(mine.mean(), rest.mean()))
        assert r.ratio_ci_low <= r.ratio <= r.ratio_ci_high <= 1
        assert 0 < r.p_value <= 1 and r.test.startswith("permutation group - rest")
    assert acc.loc["b"].difference < 0 < acc.loc["a"].difference
    tiny = acc.loc["tiny"]
    assert tiny.test == "not tested" and "min_group_size=50" in tiny.note and np.isnan(tiny.p_value)
    assert not tiny.significant and np.isnan(tiny.difference)
    # Holm within the family: two tested accuracy rows + two ECE rows
    assert (dt.dropna(subset=["p_value"]).correction == "holm within family one_vs_rest (m=4); "
            "p_bh: Benjamini-Hochberg within the same family").all()
    np.testing.assert_allclose(dt.p_holm, multiple.holm(dt.p_value))


def test_rows_that_could_not_be_tested_say_so():
    df = _three_groups(sizes=(400, 20, 20))
    dt = disparity_tests(df, group_cols=["g"], metrics=("accuracy",), classes="none", n_boot=50, n_perm=50,
                         comparisons=("range", "pairwise", "one_vs_rest"))
    for fam in ("range", "pairwise"):
        r = dt[dt.family == fam].iloc[0]
        assert r.test == "not tested" and "fewer than 2 groups" in r.note and np.isnan(r.p_value)
        assert not r.significant and r.correction == "none (not tested)"
    ovr = dt[dt.family == "one_vs_rest"].set_index("max_group")
    assert ovr.loc["a"].test == "not tested" and "rest of g: n=40" in ovr.loc["a"].note  # the rest is small
    assert (ovr.test == "not tested").all() and not dt.significant.any()
    no_perm = disparity_tests(df, group_cols=["g"], metrics=("accuracy",), classes="none", n_boot=50, n_perm=0,
                              min_group_size=10)
    r = no_perm.iloc[0]
    assert r.test == "not tested" and "n_perm=0" in r.note and np.isnan(r.p_value)
    assert r.diff_ci_low <= r.difference <= r.diff_ci_high  # the interval is still there
    with pytest.raises(UsageError, match="comparisons"):
        disparity_tests(df, group_cols=["g"], comparisons=("ranges",))


def test_ece_resamples_rows_so_an_all_correct_group_has_an_interval():
    rng = np.random.default_rng(8)
    n = 600
    g = np.repeat(["perfect", "other"], n // 2)
    lab = rng.choice(["0", "1"], n)
    ok = (g == "perfect") | (rng.random(n) < 0.8)
    df = pd.DataFrame({"label": lab, "pred": np.where(ok, lab, np.where(lab == "1", "0", "1")),
                       "score": rng.uniform(0.94, 1.0, n), "g": g})  # every row in the top bin
    gp = group_performance(df, group_cols=["g"], metrics=("ece",), classes="none", n_boot=400)
    r = gp.set_index("group").loc["perfect"]
    conf = df.score[df.g == "perfect"]
    assert r.value == pytest.approx(1 - conf.mean())  # all correct, one bin: ECE = 1 - mean confidence
    se = conf.std() / np.sqrt(len(conf))  # resampling rows moves the mean confidence
    assert r.ci_high - r.ci_low == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_ece_cell_approximation_matches_exact_row_resampling(monkeypatch):
    from audit.stats import counts as performance  # the count engine (ECE_EXACT_ROW_DRAWS) lives there

    df = _random_preds(6000, seed=4)
    out = {}
    for limit in (10**15, 0):  # exact row draws, then the cell approximation used for very many rows
        monkeypatch.setattr(performance, "ECE_EXACT_ROW_DRAWS", limit)
        gp = group_performance(df, group_cols=["bg"], metrics=("ece",), classes="none", n_boot=1000,
                               intersections=False)
        dt = disparity_tests(df, group_cols=["bg"], metrics=("ece",), classes="none", n_boot=300, n_perm=1000,
                             max_perm=1000, intersections=False)
        out[limit] = (gp, dt)
    (ga, da), (gb, db) = out[10**15], out[0]
    np.testing.assert_allclose(ga.value, gb.value)
    width_a, width_b = (ga.ci_high - ga.ci_low).to_numpy(), (gb.ci_high - gb.ci_low).to_numpy()
    np.testing.assert_allclose(width_b, width_a, rtol=0.15)
    assert db.p_value.iloc[0] == pytest.approx(da.p_value.iloc[0], abs=0.06)


def test_ece_resampling_memory_is_bounded(monkeypatch):
    """200k rows x 1000 replicates must not hold 200M values at once (the exact path is chunked, too)."""
    import tracemalloc

    from audit.stats import counts as performance  # the count engine lives there

    df = _random_preds(200_000, seed=6)
    prep = performance.prepare(df, group_cols=["bg"], label_col="label", pred_col="pred", score_col="score",
                                metrics=("ece",), classes="none", pos_label=None)
    codes, names = performance.group_codes(prep.df, ("bg",))
    eng = performance.Engine(prep, codes, len(names), 15)
    key = ("ece", "__all__")
    for limit, n_rep in ((performance.ECE_EXACT_ROW_DRAWS, 1000), (10**15, 100)):
        monkeypatch.setattr(performance, "ECE_EXACT_ROW_DRAWS", limit)
        tracemalloc.start()
        boots, _ = eng.bootstrap([key], n_boot=n_rep, rng=np.random.default_rng(0))
        perm, _ = eng.permute([key], np.arange(len(names)), n_perm=n_rep, rng=np.random.default_rng(1))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert boots[key].shape == (n_rep, 2) and perm[key].shape == (n_rep, 2)
        assert np.isfinite(boots[key]).all() and boots[key].std(axis=0).min() > 0
        # unchunked, the exact path would hold 100 x 100k-200k row draws in several arrays: > 200 MB
        assert peak < 60e6, (limit, peak)
