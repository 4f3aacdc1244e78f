"""timm hierarchical models without global attention: Swin (v1/v2) and ConvNeXt.

Not a family of its own: ``timm:NAME`` specs are loaded by :class:`audit.models.timm_vit.TimmViTAdapter`,
whose ``load`` hands the built model to the class :func:`hier_adapter_class` returns (same options,
same strict checkpoint loading, same preprocessing from timm's data config); this module adds that
picker to ``timm_vit.NON_VIT_ADAPTERS`` when it is imported (the registry imports every module here).

What is particular to these models lives here:

* tokens: none before the patches, mean-pooled (``TokenLayout(prefix_kinds=(), pooled=None)``); the
  grid is the final feature map's, ``input size / total stride`` (``feature_info[-1]["reduction"]``);
* Grad-CAM: the last stage's output. Swin stages are channels-last ``(B, H, W, C)``; ConvNeXt stages
  are ``(B, C, H, W)``; :meth:`gradcam_grid` / :meth:`gradcam_from_grid` convert;
* attention: Swin attends inside (shifted) local windows and ConvNeXt has no attention, so there is
  no token-by-token matrix over the whole image: rollout / GAE / raw attention are refused with
  :attr:`attention_refusal` (UsageError, exit 2).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from audit.errors import CaptureError, UsageError
from audit.models.base import AttentionPatch, TokenLayout, Tower
from audit.models.timm_vit import NON_VIT_ADAPTERS, TimmViTAdapter

#: gradient / perturbation methods that apply to models without attention maps
NON_ATTENTION_METHODS = ("gradcam", "layer_gradcam", "ig", "gradient_shap", "saliency", "input_x_gradient",
                         "smoothgrad", "occlusion", "feature_ablation")


def hier_adapter_class(model: nn.Module) -> type[TimmHierAdapter] | None:
    """The adapter class for a built timm model that is not a ViT, by the model's class; else None."""
    from timm.models.convnext import ConvNeXt
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    if isinstance(model, (SwinTransformer, SwinTransformerV2)):
        return TimmSwinAdapter
    if isinstance(model, ConvNeXt):
        return TimmConvNeXtAdapter
    return None


class TimmHierAdapter(TimmViTAdapter):
    """Shared code of timm Swin and ConvNeXt (loaded through ``TimmViTAdapter.load``)."""

    attention_maps: ClassVar[bool] = False
    input_size_hint: ClassVar[str] = "leave model.preprocess.input_size out to use the size the model was built for"

    def _reduction(self) -> int:
        return int(self.model.feature_info[-1]["reduction"])

    def token_layout(self, input_size: tuple[int, int] | None = None) -> TokenLayout:
        size = tuple(input_size) if input_size is not None else self.preprocess.size
        if not self.supports_input_size(size):  # type: ignore[arg-type]
            raise UsageError(f"{self.spec} does not accept input size {size}: {self.input_size_hint}")
        r = self._reduction()
        return TokenLayout(prefix_kinds=(), pooled=None, grid=(int(size[0]) // r, int(size[1]) // r))

    def attention_patches(self, tower: Tower = "vision") -> list[AttentionPatch]:
        raise UsageError(f"{self.spec}: {self.attention_refusal}")

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)  # (B, C) pooled


class TimmSwinAdapter(TimmHierAdapter):
    """timm SwinTransformer / SwinTransformerV2: channels-last stages, windowed attention."""

    attention_refusal: ClassVar[str] = (
        "Swin computes attention inside shifted local windows: there is no token-to-token matrix over the "
        "whole image for rollout/GAE/attention to multiply; use " + ", ".join(NON_ATTENTION_METHODS)
    )

    def supports_input_size(self, size: tuple[int, int]) -> bool:
        """The size it was built for (window partitioning is fixed at build time; option img_size)."""
        return tuple(int(s) for s in size) == tuple(int(s) for s in self.model.patch_embed.img_size)

    def vision_blocks(self) -> list[nn.Module]:
        return [b for stage in self.model.layers for b in stage.blocks]

    def gradcam_layer(self) -> nn.Module:
        """The last stage; its output is channels-last ``(B, H, W, C)``."""
        return self.model.layers[-1]

    def gradcam_grid(self, out: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        _check_grid(out, layout, channels_last=True, spec=self.spec)
        return out.permute(0, 3, 1, 2)  # (B, C, gh, gw)

    def gradcam_from_grid(self, grid: torch.Tensor, out: Any, layout: TokenLayout) -> Any:
        return grid.permute(0, 2, 3, 1)  # (B, gh, gw, C)


class TimmConvNeXtAdapter(TimmHierAdapter):
    """timm ConvNeXt: a CNN, ``(B, C, H, W)`` stages, no attention."""

    attention_refusal: ClassVar[str] = (
        "ConvNeXt is a convolutional network: it has no attention for rollout/GAE/attention to read; use "
        + ", ".join(NON_ATTENTION_METHODS)
    )

    def supports_input_size(self, size: tuple[int, int]) -> bool:
        """Any size the total stride tiles exactly (so the grid covers the image)."""
        r = self._reduction()
        h, w = int(size[0]), int(size[1])
        return h >= r and w >= r and h % r == 0 and w % r == 0

    def vision_blocks(self) -> list[nn.Module]:
        return [b for stage in self.model.stages for b in stage.blocks]

    def gradcam_layer(self) -> nn.Module:
        """The last stage; its output is ``(B, C, H, W)``."""
        return self.model.stages[-1]

    def gradcam_grid(self, out: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        _check_grid(out, layout, channels_last=False, spec=self.spec)
        return out

    def gradcam_from_grid(self, grid: torch.Tensor, out: Any, layout: TokenLayout) -> Any:
        return grid

    def gradcam_reshape(self, layout: TokenLayout):
        return None


def _check_grid(out: Any, layout: TokenLayout, *, channels_last: bool, spec: Any) -> None:
    shape = tuple(getattr(out, "shape", ()))
    hw = shape[1:3] if channels_last else shape[2:4]
    if len(shape) != 4 or tuple(hw) != tuple(layout.grid):
        want = "(B, H, W, C)" if channels_last else "(B, C, H, W)"
        raise CaptureError(f"{spec}: the Grad-CAM layer gave {shape}; expected {want} with H, W = {layout.grid}")


NON_VIT_ADAPTERS.append(hier_adapter_class)
