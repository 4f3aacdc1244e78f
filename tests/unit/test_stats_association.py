"""WEAT / SC-EAT written out independently; zero-shot shares and harmful-label rates by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from audit.errors import UsageError
from audit.stats.association import (
    ASSOCIATION_COLUMNS,
    HARMFUL_DISPARITY_COLUMNS,
    AssociationTest,
    association_table,
    harmful_label_rates,
    single_category_eat,
    weat,
    zeroshot_label_distribution,
)


def _cos(u, v):
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def _small_set(seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(4, 6)) + np.array([2, 0, 0, 0, 0, 0])
    B = rng.normal(size=(4, 6)) + np.array([0, 2, 0, 0, 0, 0])
    X = rng.normal(size=(5, 6)) + np.array([1.5, 0, 0, 0, 0, 0])
    Y = rng.normal(size=(5, 6)) + np.array([0, 1.5, 0, 0, 0, 0])
    return X, Y, A, B


def test_weat_matches_formula_and_exact_enumeration():
    X, Y, A, B = _small_set()

    def s(w):
        return np.mean([_cos(w, a) for a in A]) - np.mean([_cos(w, b) for b in B])

    sx, sy = [s(w) for w in X], [s(w) for w in Y]
    d = (np.mean(sx) - np.mean(sy)) / np.std(sx + sy, ddof=1)
    S = sum(sx) - sum(sy)
    allv = sx + sy
    stats = [sum(allv[i] for i in c) - sum(allv[i] for i in range(10) if i not in c)
             for c in itertools.combinations(range(10), 5)]
    p = np.mean([t > S for t in stats])
    r = weat(X, Y, A, B)
    assert r["exact"] and r["n_perm"] == 252
    assert r["effect_size"] == pytest.approx(d) and r["statistic"] == pytest.approx(S)
    assert r["p_value"] == pytest.approx(p)
    assert r["effect_size"] > 1.0 and r["p_value"] < 0.05
    # Monte Carlo path agrees with the exact value
    mc = weat(X, Y, A, B, exact_limit=10, n_perm=20_000, seed=1)
    assert not mc["exact"] and mc["p_value"] == pytest.approx(p, abs=0.01)
    # swapping X and Y flips the sign
    assert weat(Y, X, A, B)["effect_size"] == pytest.approx(-d)


def test_single_category_eat_formula():
    X, _, A, B = _small_set(1)
    w = X[0]
    ca, cb = [_cos(w, a) for a in A], [_cos(w, b) for b in B]
    d = (np.mean(ca) - np.mean(cb)) / np.std(ca + cb, ddof=1)
    r = single_category_eat(w, A, B)
    assert r["effect_size"] == pytest.approx(d) and r["exact"] and r["n_perm"] == 70
    allv = ca + cb
    stats = [np.mean([allv[i] for i in c]) - np.mean([allv[i] for i in range(8) if i not in c])
             for c in itertools.combinations(range(8), 4)]
    assert r["p_value"] == pytest.approx(np.mean([t > np.mean(ca) - np.mean(cb) + 1e-12 for t in stats]))


def test_association_table_image_groups_and_text_sets():
    X, Y, A, B = _small_set(2)
    emb = np.vstack([X, Y])
    groups = pd.DataFrame({"g": ["m"] * 5 + ["f"] * 5})
    t = association_table(emb, groups, {"pleasant": A, "unpleasant": B}, tests=[
        AssociationTest("img-EAT", "pleasant", "unpleasant", "m", "f", attribute="g"),
        {"test": "sc", "A": "pleasant", "B": "unpleasant", "X": "m", "attribute": "g"},
    ])
    assert list(t.columns) == ASSOCIATION_COLUMNS
    assert t.effect_size.iloc[0] == pytest.approx(weat(X, Y, A, B)["effect_size"])
    assert t.n_x.iloc[0] == 5 and t.n_y.iloc[1] == 0 and t.Y.iloc[1] == ""
    with pytest.raises(UsageError, match="neither a value"):
        association_table(emb, groups, {"pleasant": A, "unpleasant": B},
                          tests=[AssociationTest("bad", "pleasant", "nope", "m", "f", attribute="g")])


def _zeroshot_world(seed=0, n=600):
    rng = np.random.default_rng(seed)
    text = np.eye(4)  # labels: 0 group, 1 group, 2 harmful, 3 neutral
    g = rng.choice(["a", "b"], n)
    top = np.where(g == "a", rng.choice(4, n, p=[0.4, 0.3, 0.2, 0.1]), rng.choice(4, n, p=[0.4, 0.4, 0.05, 0.15]))
    img = text[top] + rng.normal(scale=0.01, size=(n, 4))
    labels = pd.DataFrame({"label": ["man", "woman", "gorilla", "person"],
                           "kind": ["group", "group", "harmful", "neutral"]})
    return img, text, labels, pd.DataFrame({"g": g}), top


def test_zeroshot_shares_and_harmful_rates_by_hand():
    img, text, labels, groups, top = _zeroshot_world()
    z = zeroshot_label_distribution(img, text, labels, groups, group_cols=["g"])
    r = z[(z.group == "a") & (z.label == "gorilla")].iloc[0]
    a = groups.g.to_numpy() == "a"
    assert r.share == pytest.approx((top[a] == 2).mean()) and r.n == a.sum() and r.label_kind == "harmful"
    assert r.ci_low < r.share < r.ci_high
    zb = zeroshot_label_distribution(img, text, labels, groups, group_cols=["g"], interval="bootstrap", n_boot=300)
    np.testing.assert_allclose(zb.share, z.share)
    rates, disp = harmful_label_rates(img, text, labels, groups, group_cols=["g"], label_set="toy", n_perm=500)
    ra = rates.set_index("group").loc["a"]
    assert ra.rate == pytest.approx((top[a] == 2).mean()) and ra.ci_low < ra.rate < ra.ci_high
    assert list(disp.columns) == HARMFUL_DISPARITY_COLUMNS
    d = disp.iloc[0]
    assert d.max_group == "a" and d.label_set == "toy" and d.p_value < 0.01 and d.significant
    assert d.difference == pytest.approx((top[a] == 2).mean() - (top[~a] == 2).mean())
    with pytest.raises(UsageError, match="no label of kind"):
        harmful_label_rates(img, text, labels.assign(kind="group"), groups, group_cols=["g"], label_set="x")


def test_harmful_intervals_cover_rare_labels_and_the_gap_contains_its_estimate():
    img, text, labels, groups, top = _zeroshot_world(seed=3, n=800)
    never = (groups.g.to_numpy() == "b") & (top == 2)
    img, groups, top = img[~never], groups[~never].reset_index(drop=True), top[~never]  # group b: no harmful label
    rates, disp = harmful_label_rates(img, text, labels, groups, group_cols=["g"], label_set="toy", n_boot=300,
                                      n_perm=300)
    rb = rates.set_index("group").loc["b"]
    assert rb.rate == 0.0 and rb.ci_low == 0.0
    from audit.stats.resampling import wilson_interval

    assert rb.ci_high >= float(wilson_interval(0, rb.n)[1]) - 1e-12 > 0  # a percentile bootstrap gives [0, 0]
    d = disp.iloc[0]
    assert d.diff_ci_low <= d.difference <= d.diff_ci_high and d.difference > 0.1
    assert d.diff_ci_low > 0 and d.significant
    # a tiny group is flagged and left out of the gap
    tiny = pd.DataFrame({"g": np.where(np.arange(len(groups)) < 20, "tiny", groups.g)})
    rates2, disp2 = harmful_label_rates(img, text, labels, tiny, group_cols=["g"], label_set="toy", n_boot=100,
                                        n_perm=100)
    assert rates2.set_index("group").loc["tiny"].small and disp2.iloc[0].k == 2
    assert "tiny" not in (disp2.iloc[0].max_group, disp2.iloc[0].min_group)
