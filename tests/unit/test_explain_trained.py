"""Faithfulness and sanity checks on a tiny ViT trained in the test (a few seconds).

Task: 16x16 images of noise with one bright 4x4 patch at a random position; the patch is red
(class 0) or green (class 1), so the evidence for the class sits in one known patch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audit.capture import assert_no_hooks
from audit.explain import ClassTarget, deletion_insertion, explain, faithfulness_table, model_randomization
from audit.explain.faithfulness import random_map_like
from audit.models import load_model
from audit.registry import METHODS


def make_data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 3, 16, 16, generator=gen) * 0.3
    pos = torch.randint(0, 16, (n,), generator=gen)
    y = torch.randint(0, 2, (n,), generator=gen)
    patch = F.one_hot(pos, 16).float().reshape(n, 1, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3)
    color = F.one_hot(y, 3).float()[:, :, None, None]
    return x + 2.5 * color * patch, y, pos


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Training on 2 shared cores is several times faster single-threaded; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(_one_thread):
    torch.manual_seed(0)
    a = load_model(
        "timm:vit_tiny_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=2,
        class_names=["red", "green"],
    )
    gen = torch.Generator().manual_seed(0)
    x, y, _ = make_data(2048, gen)
    a.model.train()
    opt = torch.optim.AdamW(a.model.parameters(), lr=3e-3)
    for _ in range(100):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = F.cross_entropy(a.model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    a.model.eval()
    a.model.zero_grad(set_to_none=True)
    xt, yt, pt = make_data(16, gen)
    with torch.no_grad():
        assert (a.model(xt).argmax(1) == yt).float().mean() >= 0.9, "the tiny model did not learn the task"
    return a, xt, yt, pt


@pytest.mark.parametrize("method", ["saliency", "ig"])
def test_gradient_map_beats_random_map_on_deletion(trained, method: str) -> None:
    a, x, y, pos = trained
    maps = explain(a, x, method=method, target=ClassTarget(y.tolist())).grid_maps
    if method == "ig":  # IG (black baseline) is not hurt by the saturated softmax: it finds the patch
        assert (maps.flatten(1).argmax(1) == pos).float().mean() >= 0.8
    kw = {"target": ClassTarget(y.tolist()), "baseline": "black", "insertion_start": "black"}
    real = deletion_insertion(a, x, maps, **kw)
    rand = deletion_insertion(a, x, random_map_like(maps, seed=1), **kw)
    assert real.fractions[0] == 0 and real.fractions[-1] == 1 and len(real.fractions) == 17
    assert real.deletion_auc.mean() < rand.deletion_auc.mean() - 0.15
    assert real.insertion_auc.mean() > rand.insertion_auc.mean() + 0.15
    # step 0 is the unperturbed probability; deletion and insertion end at each other's start
    with torch.no_grad():
        p0 = a.logits(x).softmax(1)[torch.arange(16), y].double().numpy()
    np.testing.assert_allclose(real.deletion[:, 0], p0, rtol=1e-5)
    np.testing.assert_allclose(real.insertion[:, -1], p0, rtol=1e-5)
    np.testing.assert_allclose(real.deletion[:, -1], real.insertion[:, 0], rtol=1e-5)


def test_deletion_curve_values_match_manual_perturbation(trained) -> None:
    a, x, y, _ = trained
    maps = torch.arange(16, dtype=torch.float32).flip(0).reshape(1, 4, 4).repeat(2, 1, 1)  # patch 0 first
    curves = deletion_insertion(
        a,
        x[:2],
        maps,
        target=ClassTarget(y[:2].tolist()),
        steps=4,
        mode="deletion",
        baseline="black",
        batch_size=3,
    )
    np.testing.assert_allclose(curves.fractions, [0, 0.25, 0.5, 0.75, 1.0])
    black = a.preprocess.normalize(torch.zeros(1, 3, 16, 16))
    xk = x[:2].clone()
    xk[:, :, 0:4, :] = black[:, :, 0:4, :]  # the first 4 patches (row 0) removed
    with torch.no_grad():
        p = a.logits(xk).softmax(1)[[0, 1], y[:2]].double().numpy()
    np.testing.assert_allclose(curves.deletion[:, 1], p, rtol=1e-5)
    expected_auc = (
        np.trapezoid(curves.deletion, curves.fractions, axis=1) if hasattr(np, "trapezoid") else None
    )
    if expected_auc is not None:
        np.testing.assert_allclose(curves.deletion_auc, expected_auc)
    assert curves.insertion is None


def test_faithfulness_table_columns(trained) -> None:
    a, x, _y, pos = trained
    maps = explain(a, x[:4], method="ig").grid_maps
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    for i, p in enumerate(pos[:4].tolist()):
        masks[i, (p // 4) * 4 : (p // 4) * 4 + 4, (p % 4) * 4 : (p % 4) * 4 + 4] = True
    df = faithfulness_table(
        a, x[:4], maps, method="ig", row_ids=[10, 11, 12, 13], masks=masks, tolerance_px=0
    )
    assert list(df.columns) == [
        "row_id",
        "method",
        "deletion_auc",
        "insertion_auc",
        "random_deletion_auc",
        "random_insertion_auc",
        "pointing_hit",
        "mass_in_mask",
        "target_class",
        "map_problem",
    ]
    assert df.row_id.tolist() == [10, 11, 12, 13] and set(df.target_class) <= {"red", "green"}
    assert df.map_problem.tolist() == [""] * 4
    assert df.pointing_hit.tolist() == [True] * 4
    assert all(0.0 <= v <= 1.0 for v in df.mass_in_mask)


def _edges(adapter, images, *, target=None):
    """A map that ignores the model: gradient magnitude of the image, summed per patch."""
    g = images.mean(1, keepdim=True)
    gx = F.pad(g[..., :, 1:] - g[..., :, :-1], (0, 1))
    gy = F.pad(g[..., 1:, :] - g[..., :-1, :], (0, 0, 0, 1))
    mag = (gx**2 + gy**2).sqrt()[:, 0]
    gh, gw = adapter.token_layout(tuple(images.shape[-2:])).grid
    return F.adaptive_avg_pool2d(mag[:, None], (gh, gw))[:, 0]


def test_sanity_check_flags_model_independent_map(trained) -> None:
    a, x, _, _ = trained
    fp = a.fingerprint
    before = {k: v.clone() for k, v in a.model.state_dict().items()}
    METHODS.register("test_edges", _edges)
    try:
        edges = model_randomization(a, x[:8], method="test_edges", n_boot=200)
    finally:
        METHODS._items.pop("test_edges", None)  # keep the global registry clean for other tests
    grads = model_randomization(a, x[:8], method="saliency", n_boot=200)
    assert list(edges.columns) == [
        "method",
        "step",
        "randomized_blocks",
        "spearman",
        "ci_low",
        "ci_high",
        "n",
        "flagged",
    ]
    assert edges.step.tolist() == [0, 1, 2] and edges.randomized_blocks.tolist() == ["", "1", "1,0"]
    assert edges.spearman.iloc[-1] == pytest.approx(1.0) and edges.flagged.all()
    assert grads.spearman.iloc[-1] < 0.5 and not grads.flagged.any()
    assert (grads.ci_low <= grads.spearman + 1e-12).all() and (grads.spearman <= grads.ci_high + 1e-12).all()
    # the original adapter is untouched
    assert a.fingerprint == fp
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert_no_hooks(a.model)
