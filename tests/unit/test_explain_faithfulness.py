"""Pointing game, mass in mask and the Chefer perturbation test on hand-made values; the verdicts
against a random map (faithfulness_verdicts): known answers, test level, the CLI's baseline, the run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from audit.errors import ExplainError
from audit.explain import (
    chefer_perturbation,
    deletion_insertion,
    mass_in_mask,
    pointing_game,
    random_map_like,
)
from audit.explain.verdicts import VERDICT_COLUMNS, VERDICTS, faithfulness_verdicts
from audit.stats.multiple import holm
from tests.helpers_models import tiny_timm_vit


def test_pointing_game_with_tolerance() -> None:
    maps = torch.zeros(3, 10, 10)
    maps[0, 2, 2] = 1.0  # inside the mask
    maps[1, 2, 6] = 1.0  # 2 px right of the mask edge (mask cols 1..4)
    maps[2, 9, 9] = 1.0
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[:2, 1:5, 1:5] = True
    hits = pointing_game(maps, masks, tolerance_px=0)
    assert hits[0] == 1.0 and hits[1] == 0.0 and np.isnan(hits[2])  # empty mask -> NaN
    assert pointing_game(maps, masks, tolerance_px=2)[1] == 1.0
    with pytest.raises(ExplainError, match="upsample maps"):
        pointing_game(maps[:, :5, :5], masks)


def test_mass_in_mask_values() -> None:
    maps = torch.tensor([[[1.0, 3.0], [-2.0, 4.0]], [[0.0, 0.0], [0.0, -1.0]]])
    masks = torch.tensor([[[True, False], [True, True]], [[True, True], [True, True]]])
    out = mass_in_mask(maps, masks)
    assert out[0] == pytest.approx(5.0 / 8.0)  # negatives clipped: (1 + 0 + 4) / (1 + 3 + 4)
    assert np.isnan(out[1])
    # a grid map is resized to the mask resolution; a constant map puts the mask's area share inside
    big = torch.zeros(1, 8, 8, dtype=torch.bool)
    big[0, :4, :] = True
    assert mass_in_mask(torch.ones(1, 2, 2), big)[0] == pytest.approx(0.5)


def test_chefer_perturbation_orders_pixels_by_map() -> None:
    a = tiny_timm_vit()
    x = torch.randn(4, 3, 32, 32)
    maps = torch.randn(4, 4, 4)
    pos = chefer_perturbation(a, x, maps, kind="positive", batch_size=7)
    assert pos["correct"][:, 0].all()  # 0 % removed: the prediction agrees with itself
    acc = pos["accuracy"]
    assert pos["auc"] == pytest.approx(
        np.trapezoid(acc, np.arange(10) / 10) * 100
        if hasattr(np, "trapezoid")
        else float(np.sum((acc[1:] + acc[:-1]) / 2 * 0.1)) * 100
    )
    # 50 % removed by map order: the same images must be produced by hand
    black = a.preprocess.normalize(torch.zeros(1, 3, 32, 32))
    up = torch.nn.functional.interpolate(maps[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    order = torch.argsort(-up.flatten(1), dim=1, stable=True)[:, :512]
    xk = x.clone().flatten(2)
    for i in range(4):
        xk[i][:, order[i]] = black.flatten(2)[0][:, order[i]]
    with torch.no_grad():
        same = (a.logits(xk.view_as(x)).argmax(1) == a.logits(x).argmax(1)).numpy()
    np.testing.assert_array_equal(pos["correct"][:, 5], same)


def test_deletion_checks_shapes_and_targets() -> None:
    a = tiny_timm_vit()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ExplainError, match="maps must be"):
        deletion_insertion(a, x, torch.rand(2, 5, 5))
    r = random_map_like(torch.zeros(2, 4, 4), seed=3)
    torch.testing.assert_close(r, random_map_like(torch.zeros(2, 4, 4), seed=3))
    assert not torch.equal(r, random_map_like(torch.zeros(2, 4, 4), seed=4))
    c = deletion_insertion(a, x, r, steps=4)
    assert c.deletion.shape == (2, 5) and c.insertion.shape == (2, 5)
    assert list(c.to_frame().columns) == ["image", "target_index", "deletion_auc", "insertion_auc"]


# --------------------------------------------------------------------------- verdicts against a random map


def _faith(method: str, n: int, rng: np.random.Generator, *, effect: float = 0.0, masks: bool = False) -> pd.DataFrame:
    """A faithfulness table of ``n`` images: image effect + independent noise for both maps, the method's
    AUCs shifted by ``effect`` in the good direction (deletion down, insertion up)."""
    base = rng.uniform(0.2, 0.8, n)
    df = pd.DataFrame({
        "method": method, "row_id": np.arange(n),
        "deletion_auc": base - effect + rng.normal(0, 0.05, n), "random_deletion_auc": base + rng.normal(0, 0.05, n),
        "insertion_auc": base + effect + rng.normal(0, 0.05, n), "random_insertion_auc": base + rng.normal(0, 0.05, n),
        "map_problem": "",
    })
    if masks:
        df["mask_share"] = rng.uniform(0.1, 0.3, n)
        df["pointing_chance"] = np.clip(df["mask_share"] + 0.1, 0, 1)
        df["pointing_hit"] = pd.array(rng.random(n) < df["pointing_chance"], dtype="boolean")
        df["mass_in_mask"] = np.clip(df["mask_share"] + rng.normal(0, 0.05, n), 0, 1)
    return df


def _check_intervals(v: pd.DataFrame) -> None:
    ok = v["n"] > 0
    assert (v.loc[ok, "ci_low"] <= v.loc[ok, "difference"]).all()
    assert (v.loc[ok, "difference"] <= v.loc[ok, "ci_high"]).all()


def test_verdict_columns_and_one_verdict_per_method() -> None:
    rng = np.random.default_rng(0)
    faith = pd.concat([_faith("good", 30, rng, effect=0.1, masks=True), _faith("noise", 30, rng, masks=True)])
    v = faithfulness_verdicts(faith, None, n_boot=500, n_perm=999, perturbation="black")
    assert list(v.columns) == VERDICT_COLUMNS
    assert v.groupby("method")["verdict"].nunique().eq(1).all()  # repeated on every row of a method
    per = v.drop_duplicates("method").set_index("method")
    assert per.loc["good", "verdict"] == "better than random"
    assert per.loc["noise", "verdict"] == "not distinguishable from random"
    assert "sanity check not run" in per.loc["good", "reason"]
    assert set(v["score"]) == {"deletion_auc", "insertion_auc", "pointing_hit", "mass_in_mask"}
    dele = v[(v.method == "good") & (v.score == "deletion_auc")].iloc[0]
    assert dele["better"] and dele["difference"] < 0 and dele["perturbation"] == "black"
    assert dele["baseline"] == "random map" and dele["n"] == 30
    assert v[v.score == "insertion_auc"]["perturbation"].eq("blur").all()
    # Holm over every row of the table
    np.testing.assert_allclose(v["p_adj"], holm(v["p_value"].to_numpy()))
    _check_intervals(v)


def test_true_importance_map_is_better_and_noise_is_not() -> None:
    """Real deletion/insertion curves on a tiny ViT: a map that is each patch's measured importance
    (the probability drop when that patch alone is deleted) against a map of random noise."""
    from audit.explain import ClassTarget, faithfulness_table
    from audit.explain.captum_methods import make_baseline

    a = tiny_timm_vit()
    x = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        probs = a.logits(x).softmax(1)
        pred = probs.argmax(1)
        p0 = probs[torch.arange(24), pred]
        blur = make_baseline(a, x, "blur")
        truth = torch.zeros(24, 4, 4)  # (B, gh, gw)
        for k in range(16):
            r, c = divmod(k, 4)
            xk = x.clone()
            xk[:, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = blur[:, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8]
            truth[:, r, c] = p0 - a.logits(xk).softmax(1)[torch.arange(24), pred]
    tgt = ClassTarget(index=pred.tolist())
    faith = pd.concat([
        faithfulness_table(a, x, truth, method="truth", target=tgt, steps=8, seed=7),
        faithfulness_table(a, x, random_map_like(truth, seed=123), method="noise", target=tgt, steps=8, seed=7),
    ])
    v = faithfulness_verdicts(faith, None, n_perm=999, n_boot=500, perturbation="blur")
    per = v.drop_duplicates("method").set_index("method")
    assert per.loc["truth", "verdict"] == "better than random", per.loc["truth", "reason"]
    assert per.loc["noise", "verdict"] == "not distinguishable from random", per.loc["noise", "reason"]
    assert v.set_index(["method", "score"]).loc[("truth", "deletion_auc"), "better"]
    _check_intervals(v)


def test_flagged_sanity_check_fails_the_method() -> None:
    rng = np.random.default_rng(1)
    faith = pd.concat([_faith("rollout", 30, rng, effect=0.1), _faith("gae", 30, rng, effect=0.1)])
    sanity = pd.DataFrame({"method": ["rollout", "rollout", "gae", "gae"], "step": [0, 1, 0, 1],
                           "spearman": [1.0, 0.93, 1.0, 0.1], "flagged": [True, True, False, False]})
    per = faithfulness_verdicts(faith, sanity, n_perm=999, n_boot=200).drop_duplicates("method").set_index("method")
    assert per.loc["rollout", "verdict"] == "fails the sanity check"  # however well it deletes
    assert "0.93" in per.loc["rollout", "reason"]
    assert per.loc["gae", "verdict"] == "better than random"
    assert "sanity" not in per.loc["gae", "reason"]


def test_mostly_unusable_maps_are_not_distinguishable_and_counted() -> None:
    rng = np.random.default_rng(2)
    faith = _faith("gradcam", 48, rng, effect=0.2)
    bad = np.arange(48) < 26
    faith.loc[bad, "map_problem"] = "constant map: every value is 0"
    faith.loc[bad, ["deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc"]] = np.nan
    v = faithfulness_verdicts(faith, None, n_perm=999, n_boot=200)
    assert (v["verdict"] == "not distinguishable from random").all()
    assert (v["n_unusable"] == 26).all() and (v["n_maps"] == 48).all() and (v["n"] == 22).all()
    assert "26 of 48" in v["reason"].iloc[0] and "constant map" in v["reason"].iloc[0]
    # a few unusable maps are left out and named, the verdict comes from the rest
    faith2 = _faith("gae", 40, rng, effect=0.2)
    faith2.loc[:2, "map_problem"] = "NaN/Inf in the map"
    faith2.loc[:2, ["deletion_auc", "random_deletion_auc"]] = np.nan
    v2 = faithfulness_verdicts(faith2, None, n_perm=999, n_boot=200)
    assert v2["verdict"].iloc[0] == "better than random" and "3 of 40 maps unusable" in v2["reason"].iloc[0]
    assert v2.set_index("score").loc["deletion_auc", "n"] == 37


def test_significantly_worse_is_not_better() -> None:
    rng = np.random.default_rng(3)
    faith = _faith("inverted", 40, rng, effect=0.0)
    faith["deletion_auc"] = faith["random_deletion_auc"] + 0.1 + rng.normal(0, 0.02, 40)  # removes the wrong patches
    faith["insertion_auc"] = faith["random_insertion_auc"] + 0.1 + rng.normal(0, 0.02, 40)
    v = faithfulness_verdicts(faith, None, n_perm=999, n_boot=200).set_index("score")
    assert v.loc["deletion_auc", "worse"] and v.loc["insertion_auc", "better"]
    assert v["verdict"].iloc[0] == "not distinguishable from random"
    assert "significantly worse" in v["reason"].iloc[0]


def test_verdict_tests_hold_their_level_and_intervals_cover_under_the_null() -> None:
    """200 simulated null data sets (method and random map exchangeable on every image; the pointing
    hits Bernoulli at their chance): each test rejects at most ~5%, the verdict is rarely "better",
    and the interval of the mean difference covers the true 0."""
    rng = np.random.default_rng(20240601)
    reps, n = 200, 24
    rejects = {"deletion_auc": 0, "insertion_auc": 0, "pointing_hit": 0, "mass_in_mask": 0}
    better = covered = 0
    for k in range(reps):
        faith = _faith("null", n, rng, masks=True)
        if k % 2:  # skewed noise, still exchangeable between the two maps
            e = rng.exponential(0.05, (2, n))
            faith["deletion_auc"] = faith["random_deletion_auc"] - rng.normal(0, 0.05, n) + e[0] - e[1]
        v = faithfulness_verdicts(faith, None, n_boot=200, n_perm=499, seed=k).set_index("score")
        for s in rejects:
            rejects[s] += bool(v.loc[s, "p_value"] < 0.05)
        better += v["verdict"].iloc[0] == "better than random"
        d = v.loc["deletion_auc"]
        covered += bool(d["ci_low"] <= 0 <= d["ci_high"])
        assert d["ci_low"] <= d["difference"] <= d["ci_high"]
    rates = {s: r / reps for s, r in rejects.items()}
    assert all(r <= 0.08 for r in rates.values()), rates
    assert better / reps <= 0.08
    assert covered / reps >= 0.90, covered / reps


def test_explain_cli_names_the_baseline_and_black_changes_the_auc(tmp_path, monkeypatch, capsys) -> None:
    from PIL import Image

    import audit.explain_cli as cli_mod
    from audit.cli import build_parser, main
    from audit.config import ExplainConfig
    from audit.zoo.world import render

    assert build_parser().parse_args(["explain", "a.png", "--model", "m"]).baseline == ExplainConfig().baseline
    paths = []
    for i, shape in enumerate(["triangle", "circle"]):
        img, _ = render(shape, "dotted", "red", 14.0, False, np.random.default_rng(i))
        p = tmp_path / f"{shape}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p))
    seen: dict[str, tuple] = {}
    original = cli_mod.overlay_grid

    def capture(pil, x, adapter, results, **kw):
        fig = original(pil, x, adapter, results, **kw)
        seen[kw["baseline"]] = (results, [ax.get_title() for ax in fig.axes])
        return fig

    monkeypatch.setattr(cli_mod, "overlay_grid", capture)
    for b in (None, "black"):
        extra = [] if b is None else ["--baseline", b]
        out = tmp_path / f"grid-{b}.png"
        assert main(["explain", *paths, "--model", "zoo:vit-biased", "--method", "rollout", "--out", str(out),
                     "--steps", "4", *extra]) == 0
    printed = capsys.readouterr().out
    assert set(seen) == {"blur", "black"}
    for b, (_, titles) in seen.items():
        maps = [t for t in titles if "deletion AUC" in t]
        assert len(maps) == 2 and all(f", {b} baseline)" in t for t in maps), titles
        assert all(t.startswith("rollout: ") and "random" in t for t in maps)  # the verdict heads the title
    blur_auc = seen["blur"][0]["rollout"][1]
    black_auc = seen["black"][0]["rollout"][1]
    assert not np.allclose(blur_auc, black_auc)
    assert "rollout: not distinguishable from random" in printed or "rollout: better than random" in printed
    with pytest.raises(SystemExit):
        main(["explain", *paths, "--model", "zoo:vit-biased", "--baseline", "grey"])


def test_run_writes_faithfulness_verdicts_and_its_baseline(tmp_path) -> None:
    from PIL import Image

    from audit.config import parse_config
    from audit.pipeline import run_audit
    from tests.integration.conftest import config_dict, make_dataset

    manifest = make_dataset(tmp_path / "data", 8, size=32)
    df = pd.read_csv(manifest)
    masks = []
    for i in range(len(df)):
        m = np.zeros((32, 32), np.uint8)
        m[4 + i : 16 + i, 6:20] = 255
        p = tmp_path / "data" / f"mask{i}.png"
        Image.fromarray(m).save(p)
        masks.append(p.name)
    df["mask"] = masks
    df.to_csv(manifest, index=False)
    cfg = config_dict(manifest, tmp_path / "run", batch_size=4)
    cfg["data"]["columns"]["mask"] = "mask"
    cfg["explain"] = {"methods": ["rollout"], "max_images": 8, "faithfulness": True, "faithfulness_steps": 4,
                      "baseline": "black", "sanity": True, "sanity_images": 2}
    run = run_audit(parse_config(cfg))
    assert run.meta["faithfulness"]["baseline"] == "black" and run.meta["faithfulness"]["steps"] == 4
    faith = run.table("faithfulness")
    assert faith["mask_share"].between(0, 1).all() and faith["pointing_chance"].between(0, 1).all()
    v = run.table("faithfulness_verdicts")
    assert list(v.columns) == VERDICT_COLUMNS
    assert set(v["score"]) == {"deletion_auc", "insertion_auc", "pointing_hit", "mass_in_mask"}
    assert v["verdict"].isin(VERDICTS).all() and v["method"].eq("rollout").all()
    assert v.set_index("score").loc["deletion_auc", "perturbation"] == "black"
    assert (v["n"] == 8).all() and "sanity check not run" not in v["reason"].iloc[0]
    _check_intervals(v)


def test_report_overlay_figure_titles_carry_the_verdict_when_given() -> None:
    from audit.viz.figures import overlay_figure

    img = np.zeros((32, 32, 3), np.uint8)
    raw = np.random.default_rng(0).random((4, 4)).astype(np.float32)
    maps = {"gae": raw, "rollout": raw, "gradcam": np.zeros((4, 4), np.float32)}
    fig = overlay_figure(img, maps, verdicts={"gae": "better than random", "gradcam": "not distinguishable from random"})
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("better than random" in t for t in titles) == 2  # map and overlay of gae
    assert sum("not distinguishable from random" in t for t in titles) == 2  # the unusable map names it too
    assert not any("rollout" in t and "random" in t for t in titles)  # no verdict passed: none made up
    plain = [ax.get_title() for ax in overlay_figure(img, maps).axes]
    assert not any("random" in t for t in plain)
