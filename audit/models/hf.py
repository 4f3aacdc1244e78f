"""Hugging Face transformers models: ``ViTForImageClassification`` and ``CLIPModel``.

Spec: ``hf:REPO_ID`` (hub; needs network or a filled local cache) or ``hf:PATH`` (a local
directory written by ``save_pretrained``; read with ``local_files_only=True``). A
``checkpoint`` file (.safetensors / .pth) replaces the weights of the directory's model,
loaded strictly. Needs the optional extra ``vision-audit[hf]`` (transformers).

Models are loaded with ``attn_implementation="eager"``: SDPA (the default in transformers
v5) returns no attention probabilities. The attention patch calls the module's own eager
forward and records the probabilities it returns, which are the tensor multiplied with V
(so they are on the gradient path).

Preprocessing, per key: the user's value (option ``preprocess``) > the preprocessing stored
with a ``checkpoint`` file > ``hf_config``: ``preprocessor_config.json`` when the model
directory (or cache) has one; otherwise the model config's ``image_size`` with the processors'
documented defaults: mean = std = (0.5, 0.5, 0.5) for ViT (``ViTImageProcessor``) and
OpenAI's CLIP mean/std for CLIP (``CLIPImageProcessor``), bicubic for CLIP, bilinear for ViT
(a guess, with a warning).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
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
    pop_preprocess_options,
    resolve_preprocess,
    with_guess_warning,
)
from audit.models.checkpoints import check_state_dict, load_checkpoint
from audit.models.timm_vit import no_network_message
from audit.registry import ADAPTERS

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_SUPPORTED = ("vit", "clip")
#: loaders of the other transformers model types (``config.model_type`` -> loader), added by the modules
#: that know them (audit/models/hf_hier.py: Swin, ConvNeXt, DINOv2); called with the parsed spec and config
MODEL_TYPE_LOADERS: dict[str, Any] = {}


def _import_transformers():
    try:
        import transformers
    except ImportError as e:  # optional extra
        raise ModelLoadError(
            "hf: specs need the transformers library; install the extra: pip install 'vision-audit[hf]'"
        ) from e
    return transformers


def hf_attention_patch(module: nn.Module) -> AttentionPatch:
    """Patch for a transformers attention module whose eager forward returns ``(out, probs)``."""
    orig = type(module).forward
    accepts_oa = "output_attentions" in inspect.signature(orig).parameters  # transformers v4
    config = getattr(module, "config", None)

    def forward(*args: Any, record, **kwargs: Any) -> Any:
        want = bool(kwargs.get("output_attentions", False))
        if accepts_oa:
            kwargs["output_attentions"] = True
        out = orig(module, *args, **kwargs)
        probs = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if probs is None:
            raise CaptureError(
                f"{type(module).__name__} returned no attention probabilities; the model must run with "
                "attn_implementation='eager'"
            )
        record(probs)  # (B, H, N, N), the tensor multiplied with V
        if accepts_oa and not want:
            out = (out[0], None, *out[2:])
        return out

    def setup() -> Any:
        if config is None or getattr(config, "_attn_implementation", "eager") == "eager":
            return None
        old = config._attn_implementation
        config._attn_implementation = "eager"
        return old

    def teardown(old: Any) -> None:
        if old is not None and config is not None:
            config._attn_implementation = old

    return AttentionPatch(module=module, forward=forward, setup=setup, teardown=teardown)



def load_weights(build: Any, model_cls: Any, *, spec: ModelSpec, where: str, is_local: bool,
                 sd: dict[str, Any] | None) -> Any:
    """The model with its weights, strictly: a local state dict ``sd`` into ``build()`` (a head that does
    not fit names ``num_labels``), else ``model_cls.from_pretrained(where)`` (eager attention); without
    network a hub name fails naming the local alternative."""
    src = spec.name
    if sd is not None:
        model = build()
        n_ckpt = sd["classifier.weight"].shape[0] if "classifier.weight" in sd else None
        check_state_dict(model, sd, source=spec.checkpoint, spec=f"hf:{src}",
                         head_keys=("classifier.weight", "classifier.bias"),
                         head_hint=f"The checkpoint's head has {n_ckpt} classes: its config.json must say "
                         f"num_labels={n_ckpt} (id2label with {n_ckpt} names).")
        model.load_state_dict(sd, strict=True)
        return model
    try:
        return model_cls.from_pretrained(where, attn_implementation="eager", local_files_only=is_local)
    except OSError as e:
        if is_local:
            raise ModelLoadError(f"hf:{src}: cannot load the weights in {where}: {e}") from e
        raise ModelLoadError(no_network_message(f"hf:{src}", e, "hf:LOCAL_DIR")) from e

@ADAPTERS.register(
    "hf", kind="classifier or clip", attention=True, example="hf:google/vit-base-patch16-224",
    checkpoint_help="hf:DIR: a directory written by save_pretrained (config.json and weights); "
                    "--checkpoint PATH replaces its weights",
)
class HFAdapter(Adapter):
    """Adapter for transformers ``ViTForImageClassification`` (classifier) and ``CLIPModel`` (clip)."""

    family: ClassVar[str] = "hf"
    examples: ClassVar[tuple[str, ...]] = (
        "hf:google/vit-base-patch16-224",
        "hf:openai/clip-vit-base-patch32",
        "hf:./my_saved_model_dir",
    )
    description: ClassVar[str] = "Hugging Face transformers ViT, CLIP, Swin, ConvNeXt, DINOv2 (extra 'hf')"
    input_size_hint: ClassVar[str] = "transformers ViT / CLIP accept any multiple of the patch size"

    def __init__(self, spec: ModelSpec, model: nn.Module, model_type: str, preprocess: Preprocess,
                 class_names: list[str] | None, tokenizer: Any = None) -> None:
        self.spec = spec
        self.model = model
        self.model_type = model_type
        self.kind = "clip" if model_type == "clip" else "classifier"
        self.preprocess = preprocess
        self.class_names = class_names
        self.tokenizer = tokenizer

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, spec: ModelSpec, *, device: str | torch.device = "cpu") -> HFAdapter:
        tf = _import_transformers()
        opts = dict(spec.options)
        class_names = opts.pop("class_names", None)
        user_pp, pp_layers = pop_preprocess_options(opts, what=f"hf:{spec.name}")
        if opts:
            raise ModelLoadError(f"hf:{spec.name}: unknown options {sorted(opts)}; known: class_names, preprocess")
        src = spec.name
        local = Path(src).expanduser()
        is_local = local.is_dir()
        if not is_local and (src.startswith((".", "/", "~")) or local.exists()):
            raise ModelLoadError(f"hf:{src}: {local} is not a directory written by save_pretrained()")
        where = str(local) if is_local else src
        if is_local and not (local / "config.json").is_file():  # transformers v4 would guess a type from the path
            raise ModelLoadError(f"hf:{src}: no readable config.json in {local}; save the model with "
                                 "save_pretrained() and point hf: at that directory")
        try:
            config = tf.AutoConfig.from_pretrained(where, local_files_only=is_local)
        except (OSError, ValueError) as e:
            if is_local:
                raise ModelLoadError(f"hf:{src}: no readable config.json in {local}: {e}") from e
            raise ModelLoadError(no_network_message(f"hf:{src}", e, "hf:LOCAL_DIR")
                                 + "; or save the model with save_pretrained() and use hf:DIRECTORY") from e
        mtype = getattr(config, "model_type", "?")
        ADAPTERS.names()  # imports every module of audit/models: each has added its model types
        if mtype in MODEL_TYPE_LOADERS:
            return MODEL_TYPE_LOADERS[mtype](spec, config, where=where, is_local=is_local, user_pp=user_pp,
                                             pp_layers=pp_layers, class_names=class_names, device=device)
        if mtype not in _SUPPORTED:
            raise ModelLoadError(f"hf:{src}: model type {mtype!r} is not supported (supported: ViT, CLIP, "
                                 f"{', '.join(sorted(MODEL_TYPE_LOADERS))})")
        model_cls = tf.ViTForImageClassification if mtype == "vit" else tf.CLIPModel
        ckpt_pp: dict[str, Any] | None = None
        sd = None
        if spec.checkpoint:
            sd, ckpt_pp = load_checkpoint(spec.checkpoint)
            config._attn_implementation = "eager"
        model = load_weights(lambda: model_cls(config), model_cls, spec=spec, where=where, is_local=is_local, sd=sd)
        model.eval().to(device)
        tokenizer = None
        if mtype == "clip":
            try:
                tokenizer = tf.AutoTokenizer.from_pretrained(where, local_files_only=is_local)
            except (OSError, ValueError) as e:
                raise ModelLoadError(
                    f"hf:{src}: CLIP needs its tokenizer files (vocab.json, merges.txt, tokenizer_config.json) "
                    f"next to the model: {e}"
                ) from e
        n_classes = int(getattr(config, "num_labels", 0)) if mtype == "vit" else 0
        if mtype == "vit":
            if class_names is None:
                id2label = getattr(config, "id2label", None) or {}
                class_names = [str(id2label.get(i, id2label.get(str(i), f"class_{i}"))) for i in range(n_classes)]
            elif len(class_names) != n_classes:
                raise ModelLoadError(f"hf:{src}: {len(class_names)} class_names given, the model has {n_classes} classes")
        else:
            class_names = None
        hf_values, from_processor = _config_values(where, is_local, config, mtype)
        pp = resolve_preprocess([("user", user_pp), *pp_layers, ("checkpoint", ckpt_pp or {}),
                                 ("hf_config", hf_values)])
        if not from_processor:
            proc = "CLIPImageProcessor" if mtype == "clip" else "ViTImageProcessor"
            pp = with_guess_warning(pp, checkpoint=spec.checkpoint, label=f"hf:{src}", recorded=ckpt_pp is not None,
                                    basis=f"transformers' {proc} defaults (no preprocessor_config.json in {where})")
        return cls(spec, model, mtype, pp, class_names, tokenizer)

    # -- structure ---------------------------------------------------------------------------
    @property
    def _vision_config(self) -> Any:
        return self.model.config.vision_config if self.model_type == "clip" else self.model.config

    def _patch(self) -> tuple[int, int]:
        p = self._vision_config.patch_size
        return (p, p) if isinstance(p, int) else tuple(p)  # type: ignore[return-value]

    def token_layout(self, input_size: tuple[int, int] | None = None) -> TokenLayout:
        size = tuple(input_size) if input_size is not None else self.preprocess.size
        if not self.supports_input_size(size):  # type: ignore[arg-type]
            raise UsageError(f"{self.spec}: input size {size} is not a multiple of the patch size {self._patch()}")
        ph, pw = self._patch()
        return TokenLayout(prefix_kinds=("cls",), pooled=0, grid=(size[0] // ph, size[1] // pw))

    def supports_input_size(self, size: tuple[int, int]) -> bool:
        """Any multiple of the patch size (position embeddings are interpolated)."""
        ph, pw = self._patch()
        return size[0] >= ph and size[1] >= pw and size[0] % ph == 0 and size[1] % pw == 0

    def vision_blocks(self) -> list[nn.Module]:
        if self.model_type == "clip":
            return list(self.model.vision_model.encoder.layers)
        vit = self.model.vit
        layers = getattr(vit, "layers", None)  # transformers v5
        return list(layers if layers is not None else vit.encoder.layer)

    def text_blocks(self) -> list[nn.Module]:
        if self.model_type != "clip":
            raise UsageError(f"{self.spec} has no text tower")
        return list(self.model.text_model.encoder.layers)

    @staticmethod
    def _attn_module(block: nn.Module) -> nn.Module:
        if hasattr(block, "self_attn"):  # CLIPEncoderLayer
            return block.self_attn
        att = block.attention  # ViTLayer: v5 ViTAttention; v4 ViTAttention.attention (ViTSelfAttention)
        return att.attention if hasattr(att, "attention") else att

    def attention_patches(self, tower: Tower = "vision") -> list[AttentionPatch]:
        if tower == "vision":
            blocks = self.vision_blocks()
        elif tower == "text":
            blocks = self.text_blocks()
        else:
            raise UsageError(f"unknown tower {tower!r}; use 'vision' or 'text'")
        return [hf_attention_patch(self._attn_module(b)) for b in blocks]

    def gradcam_layer(self) -> nn.Module:
        last = self.vision_blocks()[-1]
        return last.layer_norm1 if self.model_type == "clip" else last.layernorm_before

    def _interp(self, x: torch.Tensor) -> bool:
        img = self._vision_config.image_size
        img = (img, img) if isinstance(img, int) else tuple(img)
        return tuple(x.shape[-2:]) != tuple(img)

    # -- forward -----------------------------------------------------------------------------
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        if self.model_type == "clip":
            out = self.model.vision_model(pixel_values=x, interpolate_pos_encoding=self._interp(x))
            return self.model.visual_projection(out.pooler_output)  # (B, D)
        out = self.model.vit(pixel_values=x, interpolate_pos_encoding=self._interp(x))
        return out.last_hidden_state[:, 0]  # (B, C) pre-logits (what the classifier reads)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.model_type == "clip":
            return super().logits(x)
        return self.model(pixel_values=x, interpolate_pos_encoding=self._interp(x)).logits  # (B, C)

    def image_projection(self) -> nn.Module | None:
        return self.model.visual_projection if self.model_type == "clip" else None

    def residual_view(self) -> Any:
        """transformers CLIP (``self_attn.out_proj``, ``mlp``, ``post_layernorm``, ``visual_projection``) and ViT
        (v5 ``attention.o_proj`` / ``mlp``; v4 ``attention.output.dense`` / ``output.dense``; ``layernorm``,
        ``classifier``); no layer scale."""
        from audit.models.residual import BlockView, ResidualView, pre_hook_recorder

        blocks = []
        for blk in self.vision_blocks():
            if self.model_type == "clip":
                proj, mlp, n_heads = blk.self_attn.out_proj, blk.mlp, blk.self_attn.num_heads
            else:
                att = blk.attention
                proj = att.o_proj if hasattr(att, "o_proj") else att.output.dense
                mlp = blk.mlp if hasattr(blk, "mlp") else blk.output.dense
                n_heads = self._vision_config.num_attention_heads
            blocks.append(BlockView(block=blk, record_heads=pre_hook_recorder(proj), proj_weight=proj.weight,
                                    proj_bias=proj.bias, attn_scale=None, n_heads=int(n_heads), mlp_branch=mlp))
        if self.model_type == "clip":
            norm, head, fwd, out = self.model.vision_model.post_layernorm, self.model.visual_projection, \
                self.encode_image, "embedding"
        else:
            norm, head, fwd, out = self.model.vit.layernorm, self.model.classifier, self.logits, "logits"
        return ResidualView(blocks=blocks, layout=self.token_layout(), final_norm=norm,
                            norm_after_pool=self.model_type == "clip",  # post_layernorm reads the pooled token
                            head_weight=head.weight, head_bias=head.bias, output=out, forward=fwd)  # type: ignore[arg-type]

    # -- text --------------------------------------------------------------------------------
    def _need_text(self) -> None:
        if self.model_type != "clip":
            raise UsageError(f"{self.spec} has no text tower")

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        self._need_text()
        n = int(self.model.config.text_config.max_position_embeddings)
        enc = self.tokenizer(list(texts), padding="max_length", max_length=n, truncation=True, return_tensors="pt")
        return enc["input_ids"].to(self.device)  # (T, L)

    def text_tokens(self, texts: Sequence[str], *, truncate: bool = True) -> list[list[int]]:
        """Content ids per text (no bos/eos/padding); ``truncate=False``: before the context cut."""
        self._need_text()
        texts = list(texts)
        if not texts:
            return []
        if truncate:
            rows = self.tokenize(texts).tolist()  # (T, L), as the text tower reads them
        else:
            rows = self.tokenizer(texts, padding=False, truncation=False)["input_ids"]
        tok = self.tokenizer
        bos, eos = tok.bos_token_id, tok.eos_token_id
        out = []
        for row in rows:
            start = 1 if row and bos is not None and row[0] == bos else 0
            end = next((i for i in range(start, len(row)) if row[i] == eos), len(row)) if eos is not None else len(row)
            out.append(list(row[start:end]))
        return out

    @property
    def unknown_token_id(self) -> int | None:
        """The tokenizer's unknown id, ``None`` when it has none or it doubles as bos/eos/padding (CLIP's
        byte-level BPE: ``<|endoftext|>`` is also ``unk_token``, and no text encodes to it)."""
        tok = self.tokenizer
        unk = getattr(tok, "unk_token_id", None) if tok is not None else None
        if unk is None or unk in {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}:
            return None
        return int(unk)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self._need_text()
        out = self.model.text_model(input_ids=tokens)
        return self.model.text_projection(out.pooler_output)  # (T, D)

    def text_eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """As transformers' CLIPTextModel pools: argmax for legacy configs (eos_token_id == 2),
        else the first position of ``eos_token_id``."""
        self._need_text()
        eos = self.model.config.text_config.eos_token_id
        if eos == 2:
            return tokens.argmax(dim=-1)
        return (tokens == eos).int().argmax(dim=-1)

    def text_token_strings(self, tokens: torch.Tensor) -> list[list[str]]:
        """Token strings up to and including the end-of-text token (positions align with ``tokens``)."""
        eot = self.text_eot_index(tokens).tolist()
        return [
            [str(t).replace("</w>", "") for t in self.tokenizer.convert_ids_to_tokens(row[: e + 1])]
            for row, e in zip(tokens.tolist(), eot)
        ]

    @property
    def logit_scale(self) -> float:
        self._need_text()
        return float(self.model.logit_scale.detach().exp())


def _read_processor_config(where: str, is_local: bool) -> dict[str, Any] | None:
    if is_local:
        p = Path(where) / "preprocessor_config.json"
        return json.loads(p.read_text()) if p.is_file() else None
    try:
        from transformers.utils import cached_file

        path = cached_file(where, "preprocessor_config.json", local_files_only=True,
                           _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None
    return json.loads(Path(path).read_text()) if path else None


def _config_values(where: str, is_local: bool, config: Any, mtype: str) -> tuple[dict[str, Any], bool]:
    """``(values, read from preprocessor_config.json)`` in ``model.preprocess`` keys."""
    vcfg = config.vision_config if mtype == "clip" else config
    img = vcfg.image_size
    size = (img, img) if isinstance(img, int) else tuple(img)
    if mtype == "clip":
        mean, std, interp = _OPENAI_MEAN, _OPENAI_STD, "bicubic"
    else:
        mean, std, interp = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear"
    crop_pct, mode = 1.0, "squash" if mtype == "vit" else "shortest"
    pc = _read_processor_config(where, is_local)
    if pc:
        mean = tuple(pc.get("image_mean", mean))
        std = tuple(pc.get("image_std", std))
        interp = _PIL_RESAMPLE.get(pc.get("resample"), interp)
        rs = pc.get("size")
        if isinstance(rs, dict) and "shortest_edge" in rs:
            mode = "shortest"
            if pc.get("do_center_crop", False):
                crop = pc.get("crop_size", {})
                ch = crop.get("height", size[0]) if isinstance(crop, dict) else crop
                cw = crop.get("width", ch) if isinstance(crop, dict) else crop
                size = (int(ch), int(cw))
                crop_pct = float(min(size)) / float(rs["shortest_edge"])
        elif isinstance(rs, dict) and "height" in rs:
            mode = "squash"
            size = (int(rs["height"]), int(rs.get("width", rs["height"])))
    values = {"input_size": (int(size[0]), int(size[1])), "mean": tuple(float(m) for m in mean),
              "std": tuple(float(s) for s in std), "interpolation": interp, "crop_pct": min(crop_pct, 1.0),
              "resize_mode": mode}
    return values, bool(pc)
