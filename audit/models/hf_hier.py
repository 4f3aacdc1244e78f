"""Hugging Face transformers Swin, ConvNeXt and DINOv2 (with or without registers).

Not a family of its own: ``hf:DIR`` specs are read by :class:`audit.models.hf.HFAdapter.load`,
which hands a config whose ``model_type`` is in :data:`HIER_TYPES` to :func:`load_hier` (this module
adds them to ``hf.MODEL_TYPE_LOADERS`` when it is imported; the registry imports every module here). The model
class follows the directory's ``config.architectures``: ``*ForImageClassification`` through
``AutoModelForImageClassification`` (a classifier), anything else through ``AutoModel`` (a feature
model: ``encode_image`` works, ``logits`` asks for a probe head).

What is particular to each lives here:

* Swin: windowed attention, so no attention methods (:attr:`attention_refusal`); mean-pooled, no
  prefix tokens; the Grad-CAM layer is the final ``layernorm``, whose output is a ``(B, L, C)``
  sequence of the last stage's ``gh x gw`` positions (row-major), reshaped by :meth:`gradcam_grid`;
* ConvNeXt: a CNN (no attention); the Grad-CAM layer is the last stage, ``(B, C, H, W)``;
* DINOv2: a plain ViT: CLS (+ register tokens for ``dinov2_with_registers``), run with eager
  attention so every attention method applies. The classifier reads ``[CLS, mean of patches]``. The
  feature model has a residual view (head/MLP decomposition of the pooled CLS embedding); the
  classifier does not (see :meth:`HFDinov2Adapter.residual_view`).

Preprocessing, per key: the user's value > the checkpoint's record > ``preprocessor_config.json``
> ImageNet mean/std and bicubic at the config's ``image_size`` (a guess, with a warning).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from audit.errors import CaptureError, ModelLoadError, UsageError
from audit.models.base import (
    Adapter,
    AttentionPatch,
    ModelSpec,
    Preprocess,
    TokenLayout,
    Tower,
    resolve_preprocess,
    with_guess_warning,
)
from audit.models.checkpoints import load_checkpoint
from audit.models.hf import (
    MODEL_TYPE_LOADERS,
    _config_values,
    _import_transformers,
    hf_attention_patch,
    load_weights,
)

HIER_TYPES = ("swin", "convnext", "dinov2", "dinov2_with_registers")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_NON_ATTENTION = ("gradcam, layer_gradcam, ig, gradient_shap, saliency, input_x_gradient, smoothgrad, occlusion, "
                  "feature_ablation")


def load_hier(spec: ModelSpec, config: Any, *, where: str, is_local: bool, user_pp: dict[str, Any],
              pp_layers: list[tuple[str, dict]], class_names: list[str] | None,
              device: str | torch.device) -> Adapter:
    """Load a Swin / ConvNeXt / DINOv2 directory strictly (see the module docstring)."""
    tf = _import_transformers()
    src, mtype = spec.name, config.model_type
    archs = list(getattr(config, "architectures", None) or [])
    classifier = bool(archs) and archs[0].endswith("ForImageClassification")
    auto = tf.AutoModelForImageClassification if classifier else tf.AutoModel
    config._attn_implementation = "eager"  # DINOv2: probabilities for capture (Swin: ignored)
    ckpt_pp: dict[str, Any] | None = None
    sd = None
    if spec.checkpoint:
        sd, ckpt_pp = load_checkpoint(spec.checkpoint)
    model = load_weights(lambda: auto.from_config(config), auto, spec=spec, where=where, is_local=is_local, sd=sd)
    model.eval().to(device)
    n_classes = int(getattr(config, "num_labels", 0)) if classifier else 0
    if classifier:
        if class_names is None:
            id2label = getattr(config, "id2label", None) or {}
            class_names = [str(id2label.get(i, id2label.get(str(i), f"class_{i}"))) for i in range(n_classes)]
        elif len(class_names) != n_classes:
            raise ModelLoadError(f"hf:{src}: {len(class_names)} class_names given, the model has {n_classes} classes "
                                 "(num_labels in its config.json)")
    else:
        class_names = None
    values, from_processor = _config_values(where, is_local, config, "vit")
    if not from_processor:
        values = {**values, "mean": _IMAGENET_MEAN, "std": _IMAGENET_STD, "interpolation": "bicubic"}
    pp = resolve_preprocess([("user", user_pp), *pp_layers, ("checkpoint", ckpt_pp or {}), ("hf_config", values)])
    if not from_processor:
        pp = with_guess_warning(pp, checkpoint=spec.checkpoint, label=f"hf:{src}", recorded=ckpt_pp is not None,
                                basis=f"ImageNet mean/std, bicubic, config image_size (no preprocessor_config.json "
                                      f"in {where})")
    adapter_cls = {"swin": HFSwinAdapter, "convnext": HFConvNeXtAdapter}.get(mtype, HFDinov2Adapter)
    return adapter_cls(spec, model, mtype, pp, class_names, classifier)


class HFHierAdapter(Adapter):
    """Shared code of the transformers Swin / ConvNeXt / DINOv2 adapters."""

    family: ClassVar[str] = "hf"

    def __init__(self, spec: ModelSpec, model: nn.Module, model_type: str, preprocess: Preprocess,
                 class_names: list[str] | None, has_head: bool) -> None:
        self.spec = spec
        self.model = model
        self.model_type = model_type
        self.kind = "classifier"
        self.preprocess = preprocess
        self.class_names = class_names
        self.has_head = has_head

    @classmethod
    def load(cls, spec: ModelSpec, *, device: str | torch.device = "cpu") -> Adapter:
        from audit.models.hf import HFAdapter

        return HFAdapter.load(spec, device=device)

    @property
    def base(self) -> nn.Module:
        """The backbone (``model.swin`` / ``model.convnext`` / ``model.dinov2``; the model itself for AutoModel)."""
        return self.model.base_model

    def _size(self) -> tuple[int, int]:
        img = self.model.config.image_size
        return (img, img) if isinstance(img, int) else tuple(img)  # type: ignore[return-value]

    def _need_head(self) -> None:
        if not self.has_head:
            raise UsageError(
                f"{self.spec} is a feature model ({type(self.model).__name__}, no classification head): "
                "encode_image works; for logits give a probe head (model.probe) or save the model with "
                "AutoModelForImageClassification"
            )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self._need_head()
        return self.model(pixel_values=x).logits  # (B, C)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(pixel_values=x).pooler_output  # (B, C), what the classifier reads

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._need_head()
        emb = self.encode_image(x)
        return emb, self.model.classifier(emb)


class _NoAttention:
    """Mixin: a vision tower without a token-by-token attention matrix over the image."""

    attention_maps: ClassVar[bool] = False
    attention_refusal: ClassVar[str]
    spec: ModelSpec

    def attention_patches(self, tower: Tower = "vision") -> list[AttentionPatch]:
        raise UsageError(f"{self.spec}: {self.attention_refusal}")

    def token_layout(self, input_size: tuple[int, int] | None = None) -> TokenLayout:
        """No prefix tokens, mean-pooled; the grid is the input size divided by the total stride."""
        size = tuple(input_size) if input_size is not None else self.preprocess.size  # type: ignore[attr-defined]
        r = self._reduction()  # type: ignore[attr-defined]
        if not self.supports_input_size(size):  # type: ignore[attr-defined]
            raise UsageError(f"{self.spec} does not accept input size {size}: {self.input_size_hint} "  # type: ignore[attr-defined]
                             f"(total stride {r})")
        return TokenLayout(prefix_kinds=(), pooled=None, grid=(size[0] // r, size[1] // r))


class HFSwinAdapter(_NoAttention, HFHierAdapter):
    """transformers SwinModel / SwinForImageClassification."""

    attention_refusal: ClassVar[str] = (
        "Swin computes attention inside shifted local windows: there is no token-to-token matrix over the whole "
        f"image for rollout/GAE/attention to multiply; use {_NON_ATTENTION}"
    )
    input_size_hint: ClassVar[str] = "leave model.preprocess.input_size out to use the config's image_size"

    def _reduction(self) -> int:
        cfg = self.model.config
        return int(cfg.patch_size) * 2 ** (len(cfg.depths) - 1)

    def supports_input_size(self, size: tuple[int, int]) -> bool:
        return tuple(int(s) for s in size) == tuple(self._size())

    def vision_blocks(self) -> list[nn.Module]:
        return [b for stage in self.base.encoder.layers for b in stage.blocks]

    def gradcam_layer(self) -> nn.Module:
        """The final layernorm: ``(B, L, C)``, the last stage's positions row-major."""
        return self.base.layernorm

    def gradcam_grid(self, out: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        gh, gw = layout.grid
        if out.dim() != 3 or out.shape[1] != gh * gw:
            raise CaptureError(f"{self.spec}: the Grad-CAM layer gave {tuple(out.shape)}; expected (B, {gh * gw}, C)")
        return out.reshape(out.shape[0], gh, gw, out.shape[2]).permute(0, 3, 1, 2)

    def gradcam_from_grid(self, grid: torch.Tensor, out: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        return grid.flatten(2).transpose(1, 2)


class HFConvNeXtAdapter(_NoAttention, HFHierAdapter):
    """transformers ConvNextModel / ConvNextForImageClassification."""

    attention_refusal: ClassVar[str] = (
        f"ConvNeXt is a convolutional network: it has no attention for rollout/GAE/attention to read; use {_NON_ATTENTION}"
    )
    input_size_hint: ClassVar[str] = "ConvNeXt accepts any multiple of its total stride"

    def _reduction(self) -> int:
        cfg = self.model.config
        return int(cfg.patch_size) * 2 ** (int(cfg.num_stages) - 1)

    def supports_input_size(self, size: tuple[int, int]) -> bool:
        r = self._reduction()
        return size[0] >= r and size[1] >= r and size[0] % r == 0 and size[1] % r == 0

    def vision_blocks(self) -> list[nn.Module]:
        return [b for stage in self.base.encoder.stages for b in stage.layers]

    def gradcam_layer(self) -> nn.Module:
        """The last stage: ``(B, C, H, W)``."""
        return self.base.encoder.stages[-1]

    def gradcam_grid(self, out: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        if out.dim() != 4 or tuple(out.shape[2:]) != tuple(layout.grid):
            raise CaptureError(f"{self.spec}: the Grad-CAM layer gave {tuple(out.shape)}; expected (B, C, "
                               f"{layout.grid[0]}, {layout.grid[1]})")
        return out

    def gradcam_from_grid(self, grid: torch.Tensor, out: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        return grid

    def gradcam_reshape(self, layout: TokenLayout):
        return None


class HFDinov2Adapter(HFHierAdapter):
    """transformers Dinov2 / Dinov2WithRegisters (Model or ForImageClassification), eager attention."""

    input_size_hint: ClassVar[str] = "DINOv2 accepts any multiple of the patch size (position embeddings are interpolated)"

    def _patch(self) -> tuple[int, int]:
        p = self.model.config.patch_size
        return (p, p) if isinstance(p, int) else tuple(p)  # type: ignore[return-value]

    def supports_input_size(self, size: tuple[int, int]) -> bool:
        ph, pw = self._patch()
        return size[0] >= ph and size[1] >= pw and size[0] % ph == 0 and size[1] % pw == 0

    def token_layout(self, input_size: tuple[int, int] | None = None) -> TokenLayout:
        size = tuple(input_size) if input_size is not None else self.preprocess.size
        if not self.supports_input_size(size):  # type: ignore[arg-type]
            raise UsageError(f"{self.spec}: input size {size} is not a multiple of the patch size {self._patch()}")
        ph, pw = self._patch()
        n_reg = int(getattr(self.model.config, "num_register_tokens", 0) or 0)
        return TokenLayout(prefix_kinds=("cls", *(["reg"] * n_reg)), pooled=0, grid=(size[0] // ph, size[1] // pw))

    def vision_blocks(self) -> list[nn.Module]:
        return list(self.base.encoder.layer)

    def attention_patches(self, tower: Tower = "vision") -> list[AttentionPatch]:
        if tower != "vision":
            raise UsageError(f"{self.spec} has no {tower} tower")
        out = []
        for blk in self.vision_blocks():
            att = blk.attention  # v5: Dinov2Attention returns (out, probs); v4: .attention (self-attention)
            out.append(hf_attention_patch(att.attention if hasattr(att, "attention") else att))
        return out

    def gradcam_layer(self) -> nn.Module:
        return self.vision_blocks()[-1].norm1

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier: ``[CLS, mean of patches]`` (what its head reads); feature model: the pooled CLS."""
        out = self.base(pixel_values=x)
        if not self.has_head:
            return out.pooler_output  # (B, C)
        seq = out.last_hidden_state
        lay = self.token_layout(tuple(x.shape[-2:]))
        return torch.cat([seq[:, 0], lay.patch_tokens(seq, dim=1).mean(dim=1)], dim=1)  # (B, 2C)

    def residual_view(self) -> Any:
        """The residual stream of DINOv2 (``Dinov2Model`` / ``Dinov2WithRegistersModel`` and their
        ``...ForImageClassification``): heads enter the output projection (v5 ``attention.o_proj``; v4
        ``attention.output.dense``), layer scales are the ``layer_scale1`` / ``layer_scale2`` modules (``lambda1``;
        the MLP branch is ``layer_scale2``'s output), the final ``layernorm`` normalises every token. The feature
        model's output is the pooled CLS embedding (``pooler_output``); the classifier's head reads
        ``[CLS, mean of the patch tokens]`` of the normalised tokens (``token_pool="pooled+mean"``: each token is
        linearised at its own statistics) and the output is its logits."""
        from audit.models.residual import BlockView, ResidualView, pre_hook_recorder

        blocks = []
        n_heads = int(self.model.config.num_attention_heads)
        for i, blk in enumerate(self.vision_blocks()):
            att = blk.attention  # v5: Dinov2Attention with o_proj; v4: Dinov2Attention.output.dense
            proj = att.o_proj if hasattr(att, "o_proj") else getattr(getattr(att, "output", None), "dense", None)
            ls1, ls2 = getattr(blk, "layer_scale1", None), getattr(blk, "layer_scale2", None)
            if not isinstance(proj, nn.Linear) or ls1 is None or ls2 is None:
                raise UsageError(f"{self.spec}: layer {i} ({type(blk).__name__}) has no output projection and layer "
                                 "scales where the decomposition expects them (attention.o_proj or "
                                 "attention.output.dense, layer_scale1, layer_scale2)")
            blocks.append(BlockView(block=blk, record_heads=pre_hook_recorder(proj), proj_weight=proj.weight,
                                    proj_bias=proj.bias, attn_scale=_layer_scale(ls1, self.spec), n_heads=n_heads,
                                    mlp_branch=ls2))
        if self.has_head:
            head = self.model.classifier
            return ResidualView(blocks=blocks, layout=self.token_layout(), final_norm=self.base.layernorm,
                                norm_after_pool=False, head_weight=head.weight, head_bias=head.bias, output="logits",
                                forward=self.logits, token_pool="pooled+mean")
        return ResidualView(blocks=blocks, layout=self.token_layout(), final_norm=self.base.layernorm,
                            norm_after_pool=False, head_weight=None, head_bias=None, output="embedding",
                            forward=self.encode_image)


def _layer_scale(module: nn.Module, spec: Any) -> torch.Tensor | None:
    """The scale of a transformers DINOv2 ``*LayerScale`` (``lambda1``), ``None`` for an identity."""
    if isinstance(module, nn.Identity):
        return None
    lam = getattr(module, "lambda1", None)
    if not isinstance(lam, torch.Tensor):
        raise UsageError(f"{spec}: layer scale {type(module).__name__} has no lambda1; cannot decompose through it")
    return lam


MODEL_TYPE_LOADERS.update(dict.fromkeys(HIER_TYPES, load_hier))
