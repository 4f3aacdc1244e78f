"""Pointing game, mass in mask and the Chefer perturbation test on hand-made values."""

from __future__ import annotations

import numpy as np
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
