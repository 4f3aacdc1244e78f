"""Grad-CAM on ViT tokens, hand-written and through captum's LayerGradCam.

The adapter's ``gradcam_layer()`` outputs tokens ``T`` (B, N, C) (for CLS-pooled ViTs the last
block's norm1: after it the patch tokens get no gradient from the logits), or a feature map
(Swin's channels-last stages, ConvNeXt's ``(B, C, H, W)``). ``adapter.gradcam_grid`` turns it into
``(B, C, gh, gw)`` (for tokens: prefix dropped with the :class:`TokenLayout`), and::

    α_c = mean over positions of ∂y/∂T_c,    map = (Σ_c α_c T_c)+

The hand-written version (``"gradcam"``) exists because it needs one forward hook and one
``autograd.grad`` call; ``"layer_gradcam"`` runs captum's LayerGradCam on the same reshaped
view (an identity module inserted by a forward hook) and gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from audit.errors import CaptureError
from audit.explain.targets import Target, prepare_target
from audit.registry import METHODS

if TYPE_CHECKING:
    from audit.models.base import Adapter, TokenLayout


def _tokens_of(out: Any) -> torch.Tensor:
    """The tensor a Grad-CAM layer outputs (the first element of a tuple output)."""
    t = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(t, torch.Tensor):
        raise CaptureError(f"the Grad-CAM layer must output a tensor; got {type(t).__name__}")
    return t


def tokens_to_grid(tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """``(B, N, C)`` tokens -> ``(B, C, gh, gw)`` patch grid (prefix tokens dropped)."""
    if tokens.shape[1] != layout.n_tokens:
        raise CaptureError(
            f"Grad-CAM layer gave {tokens.shape[1]} tokens; the layout expects {layout.n_tokens} "
            f"({layout.n_prefix} prefix + {layout.grid[0]}x{layout.grid[1]} patches)"
        )
    return layout.to_grid(layout.patch_tokens(tokens, dim=1))


def gradcam(
    adapter: Adapter, images: torch.Tensor, *, target: Target, layer: nn.Module | None = None
) -> torch.Tensor:
    """Grad-CAM maps ``(B, gh, gw)`` (raw, after ReLU) for a resolved target."""
    layout = adapter.token_layout(tuple(images.shape[-2:]))
    layer = layer if layer is not None else adapter.gradcam_layer()
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        store["t"] = _tokens_of(out)

    x = images.detach().clone().requires_grad_(True)
    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            y = target.score(adapter, x)  # (B,)
            if "t" not in store:
                raise CaptureError(
                    f"the Grad-CAM layer {type(layer).__name__} was not called in the forward pass"
                )
            (g,) = torch.autograd.grad(y.sum(), store["t"])
    finally:
        handle.remove()
    act = adapter.gradcam_grid(store["t"].detach().float(), layout)  # (B, C, gh, gw)
    grad = adapter.gradcam_grid(g.float(), layout)  # (B, C, gh, gw)
    alpha = grad.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    return (alpha * act).sum(dim=1).clamp_min(0)  # (B, gh, gw)


class _GridView(nn.Module):
    """Identity on ``(B, C, gh, gw)``: gives captum a layer whose output is the patch grid."""

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return grid


@contextmanager
def grid_view(layer: nn.Module, layout: TokenLayout, adapter: Adapter | None = None) -> Iterator[_GridView]:
    """Route ``layer``'s output through a :class:`_GridView` (same values, grid-shaped).

    The grid is ``adapter.gradcam_grid`` of the output (default: ``(B, N, C)`` tokens) and goes back
    with ``adapter.gradcam_from_grid``. Yields the view module; hook captum layer methods on it. The
    hook is removed on exit.
    """
    view = _GridView()

    def hook(_m: nn.Module, _i: Any, out: Any) -> Any:
        t = _tokens_of(out)
        if adapter is None:
            grid = view(tokens_to_grid(t, layout))  # (B, C, gh, gw)
            sl = layout.patch_slice
            patches = grid.flatten(2).transpose(1, 2)  # (B, P, C)
            new = torch.cat([t[:, : sl.start], patches, t[:, sl.stop :]], dim=1)
        else:
            new = adapter.gradcam_from_grid(view(adapter.gradcam_grid(t, layout)), t, layout)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    handle = layer.register_forward_hook(hook)
    try:
        yield view
    finally:
        handle.remove()


@METHODS.register(
    "gradcam", gradient=True, description="Grad-CAM on the tokens of the adapter's gradcam_layer()"
)
def gradcam_method(adapter: Adapter, images: torch.Tensor, *, target: Target | None = None) -> torch.Tensor:
    """Registry entry: Grad-CAM on ``adapter.gradcam_layer()`` tokens, ``(B, gh, gw)``."""
    target = prepare_target(adapter, target, images, "gradcam")
    return gradcam(adapter, images, target=target)


@METHODS.register(
    "layer_gradcam", gradient=True, description="captum LayerGradCam on the patch-grid view of gradcam_layer()"
)
def layer_gradcam_method(
    adapter: Adapter, images: torch.Tensor, *, target: Target | None = None
) -> torch.Tensor:
    """Registry entry: captum ``LayerGradCam`` on the patch-grid view of ``gradcam_layer()``."""
    from captum.attr import LayerGradCam

    target = prepare_target(adapter, target, images, "layer_gradcam")
    layout = adapter.token_layout(tuple(images.shape[-2:]))
    fwd, tgt = target.class_forward(adapter)
    with torch.enable_grad(), grid_view(adapter.gradcam_layer(), layout, adapter) as view:
        attr = LayerGradCam(fwd, view).attribute(images.detach(), target=tgt, relu_attributions=True)
    return attr[:, 0].detach().float()  # (B, gh, gw)
