"""Mean-ablation effects and the test against random heads: a hand-built head that copies a group
signal is found and its ablation removes the gap; a null of exchangeable heads is not significant."""

from __future__ import annotations

import numpy as np
import pytest

from audit.components.ablate import (
    ABLATION_COLUMNS,
    EFFECT_COLUMNS,
    accuracy_gap_finding,
    adjust,
    association_finding,
    component_effects,
    prediction_share_finding,
    random_head_test,
)
from audit.components.decompose import decompose
from audit.errors import UsageError
from tests.helpers_models import group_head_vit


def test_constructed_group_head_is_ranked_first_and_its_ablation_removes_the_gap() -> None:
    adapter, x, groups = group_head_vit()
    d = decompose(adapter, x)
    g = np.asarray(groups)
    finding = prediction_share_finding("class-1 share b - a", g, lambda o: o, 1, "b", "a")
    eff = component_effects(d.contributions.numpy(), d.rest.numpy(), finding, names=d.names, layers=d.layers,
                            heads=d.heads, n_boot=200, seed=0)
    assert list(eff.columns) == EFFECT_COLUMNS
    top = eff.iloc[0]
    assert top["component"] == "L1.H1" and top["rank"] == 1
    assert top["before"] > 0.4  # the planted gap
    assert abs(top["after"]) < 0.1  # ... gone when head 1 is mean-ablated
    assert top["ci_low"] > 0 and top["ci_low"] <= top["effect"] <= top["ci_high"]
    h0 = eff.set_index("component").loc["L1.H0"]
    assert h0["effect"] < 0  # the object head carries none of the gap (ablating it widens it)


def _synthetic(n: int, k: int, signal_head: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k exchangeable random 'heads' writing into 8-d outputs; optionally one writes a group signal."""
    rng = np.random.default_rng(seed)
    groups = np.where(np.arange(n) % 2 == 0, "x", "y")
    C = rng.normal(size=(n, k, 8))
    if signal_head is not None:
        C[:, signal_head, 0] += np.where(groups == "x", 1.5, -1.5)
    rest = np.zeros((n, 8))
    rest[:, 1] = 3.0
    return C, rest, groups


def _assoc(groups: np.ndarray) -> object:
    A = np.array([[1.0, 1.0] + [0.0] * 6])
    B = np.array([[-1.0, 1.0] + [0.0] * 6])
    return association_finding("d", groups, "x", "y", A, B)


def test_random_test_finds_a_planted_head_and_holm_adjusts() -> None:
    C, rest, groups = _synthetic(400, 24, signal_head=5, seed=1)
    names = [f"L0.H{i}" for i in range(24)]
    t = random_head_test(C, rest, _assoc(groups), names=names, heads=list(range(24)), ks=(1, 2, 4, 8), n_random=200,
                         seed=0)
    assert list(t.columns) == ABLATION_COLUMNS
    assert list(t["k"]) == [1, 2, 4, 8]
    assert all("L0.H5" in c for c in t["components"])
    assert t["random_p"].iloc[0] == pytest.approx(1 / 24)  # exact: the best of the 24 single heads
    # random k-sets that happen to contain head 5 reduce as much: p grows with k / 24
    assert (t["random_p"] < 0.5).all() and (t["reduction"] > t["random_mean"]).all()
    assert (t["p_adj"] >= t["random_p"]).all()
    C, rest, groups = _synthetic(400, 80, signal_head=7, seed=2)
    t = random_head_test(C, rest, _assoc(groups), names=[f"H{i}" for i in range(80)], heads=list(range(80)), ks=(1,),
                         n_random=200, seed=0)
    assert t["components"].iloc[0] == "H7" and t["random_p"].iloc[0] == pytest.approx(1 / 80)
    assert bool(t["significant"].iloc[0])


def test_random_test_holds_its_level_when_no_head_carries_more_than_another() -> None:
    """Null with known truth: 40 exchangeable heads, each writing the same share of the group signal plus
    noise, 200 datasets. The top head(s) chosen on one half are no better than random ones on the other, so
    p < 0.05 at most 5% of the time (plus 3 Monte Carlo SE). 40 heads so that p can go below 0.05 at all:
    k = 1 is enumerated exactly (p >= 1/40), k = 2 draws 200 of the 780 pairs."""
    n_heads, n_sets = 40, 200
    ps = {1: [], 2: []}
    for seed in range(n_sets):
        C, rest, groups = _synthetic(200, n_heads, signal_head=None, seed=1000 + seed)
        C[:, :, 0] += np.where(groups == "x", 0.3, -0.3)[:, None]  # the same share in every head
        t = random_head_test(C, rest, _assoc(groups), names=[f"H{i}" for i in range(n_heads)],
                             heads=list(range(n_heads)), ks=(1, 2), n_random=200, seed=seed)
        assert list(t["exact"]) == [True, False]
        for k, p in zip(t["k"], t["random_p"]):
            ps[k].append(float(p))
    bound = 0.05 + 3 * np.sqrt(0.05 * 0.95 / n_sets)
    for k, p in ps.items():
        p = np.asarray(p)
        assert np.mean(p < 0.05) <= bound, (k, np.mean(p < 0.05))
        assert 0.3 <= np.mean(p < 0.5) <= 0.7, (k, np.mean(p < 0.5))  # p spread over [0, 1], not stuck at 1


def test_exact_enumeration_when_few_sets_and_ks_too_large_are_skipped() -> None:
    C, rest, groups = _synthetic(100, 4, signal_head=0, seed=3)
    t = random_head_test(C, rest, _assoc(groups), names=["a", "b", "c", "d"], heads=[0, 1, 2, 3], ks=(1, 2, 4, 8),
                         n_random=200)
    assert list(t["k"]) == [1, 2] and t["exact"].all() and list(t["n_random"]) == [4, 6]
    assert t["random_p"].min() >= 1 / 6 - 1e-12  # no p below 1 / C(H, k)


def test_accuracy_gap_and_cost_columns() -> None:
    C, rest, groups = _synthetic(200, 10, signal_head=2, seed=4)
    labels = np.ones(len(groups), dtype=int)  # head 2 pushes group x towards the right class, y away from it

    def to_logits(o: np.ndarray) -> np.ndarray:
        return np.stack([-o[:, 0], o[:, 0]], axis=1)

    f = accuracy_gap_finding("acc gap", groups, labels, to_logits, "x", "y")

    def acc(o: np.ndarray, rows: np.ndarray) -> float:
        return float((to_logits(o).argmax(1) == labels[rows]).mean())

    t = random_head_test(C, rest, f, names=[f"H{i}" for i in range(10)], heads=list(range(10)), ks=(1,), accuracy=acc)
    row = t.iloc[0]
    assert row["components"] == "H2" and row["before"] > 0.3 and row["reduction"] > 0.2
    assert 0 <= row["accuracy_after"] <= 1 and 0 <= row["accuracy_before"] <= 1
    assert row["accuracy_after"] != row["accuracy_before"]


def test_bad_findings_are_refused() -> None:
    with pytest.raises(UsageError, match="group 'z' has no images"):
        _ = association_finding("d", np.array(["x", "y"]), "x", "z", np.ones((1, 2)), np.ones((1, 2)))
    empty = adjust(random_head_test(*_synthetic(50, 2, None, 0)[:2], _assoc(_synthetic(50, 2, None, 0)[2]),
                                    names=["a", "b"], heads=[0, 1], ks=(4,)))
    assert empty.empty
