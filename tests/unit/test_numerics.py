"""NaN/Inf and constant maps or outputs are detected and reported per image, never drawn or scored.

An fp16 overflow is simulated with NaN pixels in one image of a batch: a ViT processes images
independently, so exactly that image's outputs, gradients and maps become non-finite.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from audit.errors import NumericsError
from audit.explain import ClassTarget, explain
from audit.explain.faithfulness import faithfulness_table
from audit.explain.quality import CONSTANT, NONFINITE, map_problem, map_problems
from audit.pipeline import forward_batch, forward_collated
from audit.runs import Run
from helpers_models import tiny_timm_vit


@pytest.fixture(scope="module")
def vit():
    return tiny_timm_vit()


@pytest.fixture(scope="module")
def batch_with_nan_image() -> torch.Tensor:
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x[1, :, 4:9, 4:9] = float("nan")  # image 1 only
    return x


def test_map_problem_names_each_kind() -> None:
    ok = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert map_problem(ok) == ""
    nan = ok.copy()
    nan[0, 0] = np.nan
    inf = ok.copy()
    inf[1, 2] = np.inf
    assert map_problem(nan).startswith(NONFINITE) and "1 of 16 cells" in map_problem(nan)
    assert map_problem(inf).startswith(NONFINITE)
    assert map_problem(np.zeros((4, 4))).startswith(CONSTANT)
    assert map_problem(np.full((4, 4), 3.5)).startswith(CONSTANT) and "3.5" in map_problem(np.full((4, 4), 3.5))
    assert map_problem(np.zeros((0, 4))) == "empty map"
    assert map_problems(torch.stack([torch.tensor(ok), torch.zeros(4, 4)])) == ["", map_problem(np.zeros((4, 4)))]


@pytest.mark.parametrize("method", ["rollout", "gae", "gradcam", "saliency", "ig"])
def test_explain_reports_the_nan_image_and_keeps_the_others(vit, batch_with_nan_image: torch.Tensor, method: str) -> None:
    kw = {"n_steps": 4} if method == "ig" else {}
    e = explain(vit, batch_with_nan_image, method=method, target=ClassTarget(index=[0, 0, 0]), **kw)
    assert e.problems[1].startswith(NONFINITE), e.problems
    assert e.problems[0] == "" and e.problems[2] == ""
    assert e.valid.tolist() == [True, False, True]
    assert torch.isfinite(e.grid_maps[[0, 2]]).all()
    assert e.summary()["problems"] == {1: e.problems[1]}
    # the same images alone give the same maps: the bad image does not contaminate the batch
    alone = explain(vit, batch_with_nan_image[[0, 2]], method=method, target=ClassTarget(index=[0, 0]), **kw)
    torch.testing.assert_close(alone.grid_maps, e.grid_maps[[0, 2]], rtol=1e-4, atol=1e-6)


def test_explanation_figure_names_the_bad_map_instead_of_drawing_it(vit, batch_with_nan_image) -> None:
    e = explain(vit, batch_with_nan_image, method="rollout", keep_images=True)
    fig = e.figure()
    ax = fig.axes[1]
    assert ax.get_title() == "1: invalid"
    assert any("no usable map" in t.get_text() for t in ax.texts)
    assert not ax.images or all(im.get_alpha() == 0.35 for im in ax.images)  # only the faded photo


def test_forward_batch_raises_naming_the_row(vit, batch_with_nan_image) -> None:
    with pytest.raises(NumericsError, match=r"row ids \[11\]"):
        forward_batch(vit, vit, batch_with_nan_image, [10, 11, 12])


def test_forward_collated_records_the_bad_image_as_skipped(vit, batch_with_nan_image) -> None:
    batch = {"row_id": torch.tensor([10, 11, 12]), "image": batch_with_nan_image,
             "path": ["a.png", "b.png", "c.png"], "skipped": [{"row": 6, "row_id": 5, "path": "x.png", "reason": "truncated"}]}
    ids, probs, emb, skipped = forward_collated(vit, batch, device="cpu", precision="fp32", skip_bad=True)
    assert ids.tolist() == [10, 12]
    assert probs.shape == (2, 3) and np.isfinite(probs).all() and np.isfinite(emb).all()
    assert [s["row_id"] for s in skipped] == [5, 11]
    assert skipped[1]["path"] == "b.png" and "NaN/Inf" in skipped[1]["reason"]
    with pytest.raises(NumericsError, match=r"row id 11 \(b\.png\).*--skip-bad"):
        forward_collated(vit, batch, device="cpu", precision="fp32", skip_bad=False)


def test_faithfulness_of_unusable_maps_is_not_scored(vit) -> None:
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(2))
    maps[1, 0, 0] = float("inf")
    maps[2] = 0.25  # constant
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    df = faithfulness_table(vit, x, maps, method="m", target=ClassTarget(index=[0, 1, 2]), masks=masks, steps=4)
    assert df["map_problem"].iloc[0] == ""
    assert df["map_problem"].iloc[1].startswith(NONFINITE) and df["map_problem"].iloc[2].startswith(CONSTANT)
    assert np.isfinite(df["deletion_auc"].iloc[0]) and df["mass_in_mask"].iloc[0] is not None
    scores = ["deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc"]
    assert df.loc[1:, scores].isna().all().all()
    assert df.loc[1:, ["pointing_hit", "mass_in_mask"]].isna().all().all()


def test_stored_maps_never_turn_finite_values_into_inf(tmp_path) -> None:
    run = Run.create(tmp_path / "r")
    small = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    big = small * 1e6  # beyond float16's 65504
    run.write_maps("small", small, [0, 1])
    run.write_maps("big", big, [0, 1])
    m_small, _ = run.maps("small")
    m_big, _ = run.maps("big")
    assert m_small.dtype == np.float16
    assert np.isfinite(m_big).all()
    np.testing.assert_allclose(m_big, big, rtol=1e-6)


def test_report_overlay_figure_names_unusable_maps() -> None:
    from audit.viz.figures import overlay_figure

    img = np.zeros((32, 32, 3), np.uint8)
    maps = {"ok": np.arange(16.0).reshape(4, 4), "nan": np.full((4, 4), np.nan), "flat": np.ones((4, 4))}
    fig = overlay_figure(img, maps)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum("no usable map" in t for t in texts) == 4  # map + overlay panels of the two bad maps
    assert any("non-finite" in t for t in texts) and any("constant map" in t for t in texts)
    drawn = pd.Series([len(ax.images) for ax in fig.axes])
    assert drawn.tolist() == [1, 1, 1, 0, 0, 0, 0]


def test_cli_overlay_grid_names_the_bad_map(vit, batch_with_nan_image, capsys) -> None:
    from audit.explain_cli import overlay_grid

    e = explain(vit, batch_with_nan_image, method="rollout")
    fig = overlay_grid([None] * 3, batch_with_nan_image.nan_to_num(0.0), vit, {"rollout": (e, None, None)})
    axes = fig.axes  # (3 images x 2 columns), row-major
    assert any("no usable map" in t.get_text() for t in axes[3].texts)  # image 1, rollout column
    assert not axes[1].texts and not axes[5].texts  # the good maps are drawn
    assert "rollout, image 2: non-finite values" in capsys.readouterr().err
