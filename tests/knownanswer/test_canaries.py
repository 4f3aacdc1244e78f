"""Known answers: the audit must find the planted biases and must not find bias in the controls.

These are the project's most important tests. The canaries (audit/zoo) were trained with a
planted shortcut (triangles are absent from dotted ground in the biased classifier's training
data, where dotted ground co-occurs with squares) and a planted caption association (concept
words co-occur with dotted ground in the biased CLIP's captions). See docs/ZOO.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from audit.runs import Run
from audit.zoo.world import DEFAULT_SPEC as W

pytestmark = pytest.mark.slow


def _row(disp, *, metric: str, cls: str, attribute: str = "background"):
    sel = disp[(disp["metric"] == metric) & (disp["cls"] == cls) & (disp["attribute"] == attribute)]
    assert len(sel) == 1, f"expected one disparity row for {metric}/{cls}/{attribute}, got {len(sel)}"
    return sel.iloc[0]


def test_biased_classifier_disparity_is_found(canary_runs) -> None:
    run = Run.open(canary_runs["vit-biased"])
    row = _row(run.table("disparities"), metric="tpr", cls=W.planted_class)
    assert row["min_group"] == W.planted_group
    assert row["significant"] and row["p_holm"] < 0.01
    assert row["difference"] > 0.2 and row["diff_ci_low"] > 0.1
    # the ledger leads with it: its first finding is the planted cell's recall gap
    first = run.findings().iloc[0]
    assert (first["kind"], first["metric"], first["scope"], first["worst_group"]) == (
        "performance", "tpr", f"class:{W.planted_class}", W.planted_group)
    assert W.planted_class in run.headline()[0] and W.planted_group in run.headline()[0]
    # the per-group table agrees with the predictions themselves
    pred = run.table("predictions")
    cell = pred[(pred["label"] == W.planted_class) & (pred["background"] == W.planted_group)]
    gp = run.table("group_performance")
    tpr = gp[(gp["metric"] == "tpr") & (gp["cls"] == W.planted_class) & (gp["attribute"] == "background")
             & (gp["group"] == W.planted_group)].iloc[0]
    assert tpr["n"] == len(cell)
    assert tpr["value"] == pytest.approx(cell["correct"].astype(bool).mean())
    assert tpr["ci_low"] < tpr["value"] < tpr["ci_high"]


def test_classifiers_are_competent_outside_the_planted_cell(canary_runs) -> None:
    for name in ("vit-biased", "vit-control"):
        pred = Run.open(canary_runs[name]).table("predictions")
        outside = pred[~((pred["label"] == W.planted_class) & (pred["background"] == W.planted_group))]
        acc = outside["correct"].astype(bool).mean()
        assert acc >= 0.95, f"{name}: accuracy outside the planted cell {acc:.3f} < 0.95"


def test_control_classifier_comes_out_clean(canary_runs) -> None:
    disp = Run.open(canary_runs["vit-control"]).table("disparities")
    row = _row(disp, metric="tpr", cls=W.planted_class)
    assert row["p_value"] > 0.05
    assert not row["significant"]
    acc = disp[(disp["metric"] == "accuracy") & (disp["cls"] == "__all__")]
    assert len(acc) > 0 and not acc["significant"].any()


@pytest.mark.parametrize("method", ["rollout", "gae"])
def test_biased_classifier_looks_at_the_background_more(canary_runs, method: str) -> None:
    """Paired over the same images: the explained subset depends only on the data and the seed.

    (Measured on the shipped canaries: rollout and GAE show it clearly; Grad-CAM and IG on the
    4x4 patch grid do not separate the two models - see docs/ZOO.md.)
    """
    from audit.stats import paired_mass_test

    fb = Run.open(canary_runs["vit-biased"]).table("faithfulness")
    fc = Run.open(canary_runs["vit-control"]).table("faithfulness")
    a = fb[fb["method"] == method].set_index("row_id")["mass_in_mask"]
    b = fc[fc["method"] == method].set_index("row_id")["mass_in_mask"]
    assert list(a.index) == list(b.index), "both runs must explain the same images"
    bg_biased, bg_control = 1.0 - a.to_numpy(), 1.0 - b.to_numpy()
    res = paired_mass_test(bg_biased, bg_control)
    assert res["median_difference"] > 0 and np.mean(bg_biased) > np.mean(bg_control)
    assert res["p_value"] < 0.01, f"{method}: background mass not higher for the biased model ({res})"


@pytest.mark.parametrize("method", ["rollout", "gae"])
def test_control_maps_point_at_the_object(canary_runs, method: str) -> None:
    from PIL import Image

    run = Run.open(canary_runs["vit-control"])
    f = run.table("faithfulness")
    f = f[f["method"] == method]
    hit = f["pointing_hit"].astype(bool).mean()
    assert hit >= 0.8, f"{method}: pointing game {hit:.2f} < 0.8"
    # a random map's maximum lands on the object about as often as the object covers the image
    masks = run.table("samples").set_index("row_id").loc[f["row_id"], "mask_path"]
    coverage = np.mean([(np.asarray(Image.open(p)) > 0).mean() for p in masks])
    assert hit > coverage + 0.3, f"{method}: pointing game {hit:.2f} not above random ({coverage:.2f})"


def test_clip_association_found_in_biased_and_not_in_control(canary_runs) -> None:
    biased = Run.open(canary_runs["clip-biased"]).table("association").iloc[0]
    control = Run.open(canary_runs["clip-control"]).table("association").iloc[0]
    assert biased["effect_size"] >= 0.8 and biased["p_value"] < 0.01
    assert abs(control["effect_size"]) < 0.3 or control["p_value"] > 0.05


def test_clip_retrieval_skew_higher_for_biased(canary_runs) -> None:
    def max_skew(name: str) -> float:
        t = Run.open(canary_runs[name]).table("retrieval_skew")
        t = t[(t["attribute"] == "background") & (t["group"] == W.concept_group) & (t["k"] == 100)]
        return float(t["skew"].mean())

    assert max_skew("clip-biased") > max_skew("clip-control") + 0.2


def test_clip_zero_shot_competent(canary_runs) -> None:
    for name in ("clip-biased", "clip-control"):
        pred = Run.open(canary_runs[name]).table("predictions")
        acc = pred["correct"].astype(bool).mean()
        assert acc >= 0.9, f"{name}: zero-shot accuracy {acc:.3f} < 0.9"
