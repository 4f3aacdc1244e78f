"""Predictions by group without labels: shares, intervals, gap and independence tests (audit.stats.distribution)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.stats import prediction_distribution
from audit.stats.distribution import DISTRIBUTION_COLUMNS, PREDICTION_DISPARITY_COLUMNS

CLASSES = ["cat", "dog", "bird", "fish"]


def _frame(n: int, shares: dict[str, list[float]], rng: np.random.Generator, **extra: np.ndarray) -> pd.DataFrame:
    groups = rng.choice(list(shares), size=n)
    pred = np.empty(n, dtype=object)
    for g, p in shares.items():
        pred[groups == g] = rng.choice(CLASSES, size=int((groups == g).sum()), p=p)
    return pd.DataFrame({"pred": pred, "g": groups, **extra})


def test_columns_shares_and_intervals() -> None:
    rng = np.random.default_rng(0)
    df = _frame(400, {"a": [0.4, 0.3, 0.3, 0.0], "b": [0.5, 0.2, 0.3, 0.0]}, rng,
                h=rng.choice(["x", "y", "tiny"], size=400, p=[0.5, 0.45, 0.05]))
    dist, disp = prediction_distribution(df, group_cols=["g", "h"], classes=CLASSES, n_boot=300, n_perm=300)
    assert list(dist.columns) == DISTRIBUTION_COLUMNS
    assert list(disp.columns) == PREDICTION_DISPARITY_COLUMNS
    # every class of every group, shares sum to 1, counts match the data
    assert len(dist) == (2 + 3) * len(CLASSES)
    sums = dist.groupby(["attribute", "group"])["share"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0)
    a_cat = dist[(dist.attribute == "g") & (dist.group == "a") & (dist.cls == "cat")].iloc[0]
    sel = df[df.g == "a"]
    assert a_cat["n"] == len(sel) and a_cat["count"] == (sel.pred == "cat").sum()
    assert a_cat["share"] == pytest.approx((sel.pred == "cat").mean())
    # intervals contain the estimate; a never-predicted class has a non-degenerate upper end
    assert ((dist.ci_low <= dist.share) & (dist.share <= dist.ci_high)).all()
    fish = dist[dist.cls == "fish"]
    assert (fish["share"] == 0).all() and (fish["ci_high"] > 0).all()
    # the small group is flagged and left out of the tests
    tiny = dist[(dist.attribute == "h") & (dist.group == "tiny")]
    assert tiny["small"].all() and not dist[dist.group != "tiny"]["small"].any()
    h_rows = disp[disp.attribute == "h"]
    assert (h_rows["k"] == 2).all() and h_rows["note"].str.contains("1 group(s) excluded", regex=False).all()
    assert "tiny" not in set(h_rows.max_group) | set(h_rows.min_group)
    # the gap interval contains the gap; "fish" has nothing to test (NaN p, not counted by Holm)
    cls_rows = disp[(disp.cls != "__all__") & disp.p_value.notna()]
    assert ((cls_rows.diff_ci_low <= cls_rows.difference) & (cls_rows.difference <= cls_rows.diff_ci_high)).all()
    assert (cls_rows.diff_ci_low >= 0).all()
    f = disp[disp.cls == "fish"]
    assert f.p_value.isna().all() and f.p_holm.isna().all() and not f.significant.any()
    assert f.note.str.contains("never predicted").all()
    assert set(disp.cls) == {"__all__", *CLASSES}


def test_planted_difference_is_found() -> None:
    rng = np.random.default_rng(1)
    df = _frame(600, {"a": [0.3, 0.3, 0.3, 0.1], "b": [0.3, 0.3, 0.3, 0.1], "c": [0.55, 0.2, 0.15, 0.1]}, rng)
    _, disp = prediction_distribution(df, group_cols=["g"], classes=CLASSES, n_boot=300, n_perm=500)
    d = disp.set_index("cls")
    assert d.loc["__all__", "significant"] and d.loc["__all__", "p_holm"] < 0.01
    assert d.loc["cat", "significant"] and d.loc["cat", "max_group"] == "c"
    assert d.loc["cat", "diff_ci_low"] > 0.05  # the interval excludes 0
    assert not d.loc["fish", "significant"]
    assert "sequential" in d.loc["cat", "test"]  # p below 1 / (n_perm + 1) took more draws


def test_too_few_groups_is_a_note_not_a_test() -> None:
    df = pd.DataFrame({"pred": ["cat", "dog"] * 30, "g": ["a"] * 55 + ["b"] * 5})
    dist, disp = prediction_distribution(df, group_cols=["g"], n_boot=100, n_perm=100)
    assert disp.p_value.isna().all() and (disp.k == 1).all()
    assert disp.note.str.contains("fewer than 2 groups").all()
    assert set(dist.cls) == {"cat", "dog"}


def test_exchangeable_groups_reject_at_the_nominal_rate() -> None:
    """Level by simulation with known truth: the group does not change the predictions."""
    rng = np.random.default_rng(2)
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    indep, gaps = [], []
    for s in range(300):
        g = rng.choice(["a", "b", "c"], size=240)
        pred = rng.choice(CLASSES, size=240, p=probs)
        _, disp = prediction_distribution(pd.DataFrame({"pred": pred, "g": g}), group_cols=["g"], classes=CLASSES,
                                          n_boot=50, n_perm=200, max_perm=200, seed=s)
        p = disp.set_index("cls")["p_value"]
        indep.append(p["__all__"] < 0.05)
        gaps.extend(p.drop("__all__").dropna() < 0.05)
    assert np.mean(indep) <= 0.08, np.mean(indep)
    assert np.mean(gaps) <= 0.08, np.mean(gaps)


def test_gap_interval_covers_the_true_range() -> None:
    rng = np.random.default_rng(3)
    truth = {"a": [0.5, 0.3, 0.15, 0.05], "b": [0.4, 0.35, 0.2, 0.05], "c": [0.3, 0.4, 0.2, 0.1]}
    m = np.array(list(truth.values()))
    true_range = dict(zip(CLASSES, m.max(axis=0) - m.min(axis=0)))
    hits = []
    for s in range(100):
        df = _frame(300, truth, rng)
        _, disp = prediction_distribution(df, group_cols=["g"], classes=CLASSES, n_boot=200, n_perm=50,
                                          max_perm=50, seed=s)
        for _, r in disp[disp.cls != "__all__"].iterrows():
            hits.append(r.diff_ci_low <= true_range[r.cls] <= r.diff_ci_high)
    assert np.mean(hits) >= 0.93


def test_an_unlabelled_run_writes_both_tables(tmp_path: Path) -> None:
    from PIL import Image

    from audit.config import parse_config
    from audit.pipeline import run_audit

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    lines = ["path,group"]
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,{'ab'[i % 2]}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    cfg = parse_config({
        "model": {"spec": "timm:vit_tiny_patch16_224", "class_names": ["cat", "dog", "bird"],
                  "options": {"pretrained": False, "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
                              "num_heads": 2, "num_classes": 3}},
        "data": {"manifest": str(tmp_path / "m.csv"), "columns": {"label": None, "groups": ["group"]}},
        "explain": {"methods": [], "faithfulness": False, "sanity": False},
        "stats": {"n_boot": 50, "n_perm": 50, "embeddings": False, "min_group_size": 5},
        "run": {"output": str(tmp_path / "run"), "batch_size": 8},
    })
    run = run_audit(cfg)
    assert not run.has_table("group_performance")  # no labels: no performance by group
    dist = run.table("prediction_distribution")
    disp = run.table("prediction_disparities")
    assert list(dist.columns) == DISTRIBUTION_COLUMNS and list(disp.columns) == PREDICTION_DISPARITY_COLUMNS
    assert set(dist.group) == {"a", "b"} and set(dist.cls) == {"cat", "dog", "bird"} and (dist.n == 12).all()
    pred = run.table("predictions")
    assert dist.groupby("group")["count"].sum().to_dict() == pred.groupby("group").size().to_dict()
    assert set(disp.cls) == {"__all__", "cat", "dog", "bird"} and (disp.k == 2).all()


def test_equal_shares_name_two_different_groups() -> None:
    df = pd.DataFrame({"pred": ["cat"] * 4 + ["dog"] * 4, "g": list("abcd") * 2}).loc[np.tile(np.arange(8), 15)]
    _, disp = prediction_distribution(df, group_cols=["g"], min_group_size=10, n_boot=100, n_perm=100)
    assert (disp.difference == 0).all() and (disp.max_group != disp.min_group).all()
    assert (disp.diff_ci_low.dropna() == 0).all() and (disp.p_value == 1).all()
