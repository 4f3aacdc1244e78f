"""Embedding statistics against direct computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.errors import UsageError
from audit.stats.embeddings import (
    EMBEDDING_DISTANCE_COLUMNS,
    EMBEDDING_GROUP_COLUMNS,
    LINEAR_PROBE_COLUMNS,
    MMD_COLUMNS,
    embedding_group_stats,
    linear_probe,
    mmd_test,
    projection,
)


def _world(n=600, d=16, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.choice(["a", "b", "c"], n)
    x = rng.normal(size=(n, d)) + 1.0
    x[g == "a", 0] += shift
    return x, pd.DataFrame({"g": g})


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_dispersion_and_distance_equal_direct_formulas():
    x, groups = _world(shift=1.5)
    eg, ed = embedding_group_stats(x, groups, group_cols=["g"], n_perm=300, n_boot=300)
    assert list(eg.columns) == EMBEDDING_GROUP_COLUMNS and list(ed.columns) == EMBEDDING_DISTANCE_COLUMNS
    u = _unit(x)
    for name in "abc":
        ug = u[groups.g == name]
        c = ug.mean(0)
        direct = np.mean(1 - ug @ c / np.linalg.norm(c))
        row = eg.set_index("group").loc[name]
        assert row.dispersion == pytest.approx(direct, rel=1e-5)
        assert row.dispersion_ci_low <= row.dispersion <= row.dispersion_ci_high
    ca, cb = u[groups.g == "a"].mean(0), u[groups.g == "b"].mean(0)
    ab = ed[(ed.group_a == "a") & (ed.group_b == "b")].iloc[0]
    assert ab.cosine_distance == pytest.approx(1 - ca @ cb / np.linalg.norm(ca) / np.linalg.norm(cb), rel=1e-4)
    assert ab.p_value == pytest.approx(1 / 301) and ab.p_holm <= 3 / 301 + 1e-12
    bc = ed[(ed.group_a == "b") & (ed.group_b == "c")].iloc[0]
    assert bc.p_value > 0.01  # b and c come from one distribution


def test_centroid_permutation_null_is_calibrated():
    ps = []
    for s in range(40):
        x, groups = _world(n=120, d=8, seed=100 + s)
        _, ed = embedding_group_stats(x, groups, group_cols=["g"], n_perm=99, n_boot=0, seed=s, min_group_size=10)
        ps.append(ed.p_value.iloc[0])
    assert 0.25 < np.mean(ps) < 0.75 and np.mean(np.array(ps) < 0.05) <= 0.15


def test_small_groups_are_flagged_and_not_tested():
    x, groups = _world(n=120, d=8, seed=7)  # 40 rows per group
    eg, ed = embedding_group_stats(x, groups, group_cols=["g"], n_perm=50, n_boot=50, seed=0, min_group_size=50)
    assert eg["small"].all() and eg["dispersion"].notna().all()  # shown, flagged
    assert ed["p_value"].isna().all() and ed["note"].str.startswith("not tested: n < min_group_size=50").all()
    m = mmd_test(x, groups, attribute="g", n_perm=20, seed=0, min_group_size=50)
    assert m["p_value"].isna().all() and m["estimator"].str.startswith("not tested").all()
    with pytest.raises(UsageError, match="at least 2 groups with >= 50 rows"):
        linear_probe(x, groups, attribute="g", n_perm=10, min_group_size=50)
    probe = linear_probe(x, groups, attribute="g", n_perm=10, min_group_size=30)
    assert probe["k"].iloc[0] == 3


def test_linear_probe_separable_and_null():
    x, groups = _world(n=400, shift=3.0, seed=1)
    lp = linear_probe(x, groups.assign(g=np.where(groups.g == "a", "a", "rest")), attribute="g", n_perm=19,
                      n_boot=200)
    assert list(lp.columns) == LINEAR_PROBE_COLUMNS
    r = lp.iloc[0]
    assert r.balanced_accuracy > 0.9 and r.auc > 0.95 and r.p_value == pytest.approx(1 / 20)
    assert r.bacc_ci_low <= r.balanced_accuracy <= r.bacc_ci_high and 0.35 < r.null_mean < 0.65
    assert "5-fold" in r.note
    x0, g0 = _world(n=300, shift=0.0, seed=2)
    r0 = linear_probe(x0, g0, attribute="g", n_perm=19, n_boot=100).iloc[0]
    assert r0.balanced_accuracy < 0.5 and r0.k == 3 and r0.majority_rate == pytest.approx(g0.g.value_counts().max() / 300)


def test_mmd_unbiased_estimate_written_out():
    x, groups = _world(n=90, d=5, shift=2.0, seed=3)
    t = mmd_test(x, groups, attribute="g", n_perm=200)
    assert list(t.columns) == MMD_COLUMNS
    u = _unit(x)
    a, b = u[groups.g == "a"], u[groups.g == "b"]
    z = np.vstack([a, b])
    dist = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    bw = np.median(dist[np.triu_indices(len(z), 1)])
    k = np.exp(-(dist**2) / (2 * bw**2))
    na, nb = len(a), len(b)
    kaa, kbb, kab = k[:na, :na], k[na:, na:], k[:na, na:]
    mmd = ((kaa.sum() - na) / (na * (na - 1)) + (kbb.sum() - nb) / (nb * (nb - 1)) - 2 * kab.mean())
    r = t[(t.group_a == "a") & (t.group_b == "b")].iloc[0]
    assert r.mmd2 == pytest.approx(mmd, rel=1e-3) and r.estimator == "unbiased" and r.p_value < 0.02
    sub = mmd_test(x, groups, attribute="g", n_perm=50, max_exact=40)
    assert sub.estimator.str.startswith("subsampled n=").all()


def test_projection_and_errors():
    x, groups = _world(n=50)
    meta = groups.assign(row_id=np.arange(50) + 7, label="cat")
    p = projection(x, meta)
    assert list(p.columns[:4]) == ["row_id", "x", "y", "method"] and p.row_id.iloc[0] == 7
    assert {"g", "label", "pred", "correct"} <= set(p.columns)
    from sklearn.decomposition import PCA

    ref = PCA(2, random_state=0).fit_transform(_unit(x))
    np.testing.assert_allclose(np.abs(p[["x", "y"]].to_numpy()), np.abs(ref), rtol=1e-3, atol=1e-5)
    with pytest.raises(UsageError, match="umap"):
        projection(x, meta, method="umap")
    with pytest.raises(UsageError, match="'nope' not found"):
        embedding_group_stats(x, groups, group_cols=["nope"])


def test_ridge_probe_scores_equal_sklearn_ridge_classifier():
    """The closed-form out-of-fold scores are scikit-learn's RidgeClassifier, fold by fold."""
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.model_selection import StratifiedKFold

    from audit.stats.embeddings import _ridge_oof_scores

    rng = np.random.default_rng(5)
    z = rng.normal(size=(150, 6))
    y = (z[:, 0] + 0.5 * z[:, 1] + rng.normal(scale=0.8, size=150) > 0).astype(int) + (z[:, 2] > 1).astype(int)
    k = 3
    ours = _ridge_oof_scores(z, y[None, :], k, cv=5, seed=3, ridge=2.0)[0]
    sk_pred = np.empty(150, dtype=int)
    lr_pred = np.empty(150, dtype=int)
    for tr, te in StratifiedKFold(n_splits=5, shuffle=True, random_state=3).split(z, y):
        sk_pred[te] = RidgeClassifier(alpha=2.0).fit(z[tr], y[tr]).predict(z[te])
        lr_pred[te] = LogisticRegression(max_iter=500).fit(z[tr], y[tr]).predict(z[te])
    np.testing.assert_array_equal(ours.argmax(1), sk_pred)
    # ridge and logistic probes answer the same question: they agree on most predictions
    assert (sk_pred == lr_pred).mean() > 0.85
