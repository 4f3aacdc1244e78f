"""GAE against a plain re-derivation of the formula with hooks (tests/reference_maps.py, not audit.capture)."""

from __future__ import annotations

import pytest
import torch

from audit.explain import ClassTarget, explain
from audit.explain.gae import gae_relevance
from audit.models.base import ModelSpec
from audit.models.timm_vit import TimmViTAdapter
from tests.reference_maps import reference_gae


def tiny(name: str = "vit_tiny_patch16_224", **kw) -> TimmViTAdapter:
    opts = {
        "pretrained": False,
        "img_size": 32,
        "patch_size": 8,
        "embed_dim": 32,
        "depth": 3,
        "num_heads": 2,
        "num_classes": 5,
    }
    opts.update(kw)
    return TimmViTAdapter.load(ModelSpec.parse(f"timm:{name}", **opts))


@pytest.mark.parametrize("start_layer", [0, 1])
def test_gae_equals_reference_derivation(start_layer: int) -> None:
    a = tiny()
    x = torch.randn(3, 3, 32, 32)
    cls = [4, 0, 2]
    ours = explain(a, x, method="gae", target=ClassTarget(cls), start_layer=start_layer)
    ref = reference_gae(a.model, x.clone(), cls, start_layer).reshape(3, 4, 4)
    assert ours.params["start_layer"] == start_layer
    torch.testing.assert_close(ours.grid_maps, ref.detach(), rtol=1e-4, atol=1e-6)
    assert ours.grid_maps.abs().sum() > 0  # not a trivially zero map


@pytest.mark.parametrize("name,npre", [("deit_tiny_distilled_patch16_224", 2), ("vit_tiny_patch16_224", 5)])
def test_gae_prefix_tokens_are_excluded(name: str, npre: int) -> None:
    extra = {"reg_tokens": 4} if npre == 5 else {}
    a = tiny(name, **extra)
    assert a.model.num_prefix_tokens == npre
    x = torch.randn(2, 3, 32, 32)
    ours = explain(a, x, method="gae", target=ClassTarget(1))
    ref = reference_gae(a.model, x.clone(), [1, 1]).reshape(2, 4, 4)
    torch.testing.assert_close(ours.grid_maps, ref.detach(), rtol=1e-4, atol=1e-6)


def test_gae_relevance_hand_computed() -> None:
    # one block, one head, 2 tokens: R = I + relu(g*a) @ I
    a = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])
    g = torch.tensor([[[[2.0, -1.0], [0.0, 4.0]]]])
    r = gae_relevance([a], [g])
    torch.testing.assert_close(r, torch.tensor([[[1.5, 0.0], [0.0, 3.0]]]))
    # two blocks: R2 = R1 + C2 @ R1
    r2 = gae_relevance([a, a], [g, g])
    c = torch.tensor([[0.5, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(r2[0], (torch.eye(2) + c) + c @ (torch.eye(2) + c))


def test_gae_does_not_touch_parameter_grads() -> None:
    a = tiny()
    explain(a, torch.randn(2, 3, 32, 32), method="gae")
    assert all(p.grad is None for p in a.model.parameters())
