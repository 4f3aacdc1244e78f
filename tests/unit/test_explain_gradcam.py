"""Grad-CAM on ViT tokens against pytorch-grad-cam and captum's LayerGradCam."""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from audit.explain import ClassTarget, explain
from audit.models.base import ModelSpec
from audit.models.timm_vit import TimmViTAdapter


def _adapter() -> TimmViTAdapter:
    return TimmViTAdapter.load(
        ModelSpec.parse(
            "timm:vit_tiny_patch16_224",
            pretrained=False,
            img_size=32,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
            num_classes=4,
        )
    )


def test_gradcam_equals_pytorch_grad_cam() -> None:
    a = _adapter()
    x = torch.randn(3, 3, 32, 32)
    cls = [0, 3, 2]
    ours = explain(a, x, method="gradcam", target=ClassTarget(cls)).grid_maps  # (3, 4, 4)

    def reshape(t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, C, 4, 4), drop CLS
        return t[:, 1:, :].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    layer = a.model.blocks[-1].norm1
    assert a.gradcam_layer() is layer
    with GradCAM(model=a.model, target_layers=[layer], reshape_transform=reshape) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in cls])  # (3, 32, 32) min-max
    # the same post-processing as grad-cam applies to its raw grid map: min-max + resize per layer,
    # then min-max again after averaging layers (one layer here)
    ours_scaled = scale_cam_image(scale_cam_image(ours.numpy(), target_size=(32, 32)))
    np.testing.assert_allclose(ours_scaled, theirs, atol=1e-5)
    assert float(ours.max()) > 0


def test_layer_gradcam_equals_gradcam() -> None:
    a = _adapter()
    x = torch.randn(2, 3, 32, 32)
    g = explain(a, x, method="gradcam", target=ClassTarget([1, 2])).grid_maps
    lg = explain(a, x, method="layer_gradcam", target=ClassTarget([1, 2])).grid_maps
    torch.testing.assert_close(lg, g, rtol=1e-5, atol=1e-7)
    assert g.abs().sum() > 0


def test_gradcam_hand_formula() -> None:
    a = _adapter()
    x = torch.randn(2, 3, 32, 32)
    store = {}
    h = a.model.blocks[-1].norm1.register_forward_hook(lambda m, i, o: store.setdefault("t", o))
    try:
        out = a.model(x)
        t = store["t"]
        (grad,) = torch.autograd.grad(out[:, 1].sum(), t)
    finally:
        h.remove()
    act = t[:, 1:].detach()  # (B, 16, C)
    alpha = grad[:, 1:].mean(1, keepdim=True)  # (B, 1, C)
    ref = (act * alpha).sum(-1).clamp_min(0).reshape(2, 4, 4)
    torch.testing.assert_close(explain(a, x, method="gradcam", target=ClassTarget(1)).grid_maps, ref)


class _Boom(Exception):
    pass


class _FailingTarget(ClassTarget):
    """Scores normally, then fails (after the forward hooks have fired)."""

    def score(self, adapter, x):
        super().score(adapter, x)
        raise _Boom("target failed")

    def class_forward(self, adapter):  # the captum path fails the same way
        def fwd(inp):
            adapter.logits(inp)
            raise _Boom("target failed")

        return fwd, list(self.index)


def test_hooks_removed_after_an_error() -> None:
    import pytest

    from audit.capture import assert_no_hooks

    a = _adapter()
    x = torch.randn(2, 3, 32, 32)
    t = _FailingTarget([0, 1], names=["a", "b"])
    for method in ("gradcam", "gae", "saliency"):
        with pytest.raises(_Boom):
            explain(a, x, method=method, target=t)
        assert_no_hooks(a.model)
    with pytest.raises(_Boom):
        explain(a, x, method="layer_gradcam", target=t)
    assert_no_hooks(a.model)
