"""open_clip CLIP models (image and text towers, tokenizer).

Specs: ``open_clip:ARCH/PRETRAINED`` (downloads; needs network), ``open_clip:ARCH`` with
a local checkpoint, or ``open_clip:NAME`` with option ``model_cfg`` (a dict in open_clip's
config format: ``embed_dim``, ``vision_cfg``, ``text_cfg``, optional ``preprocess_cfg``,
``quick_gelu``, ``custom_text``) to build a model from a config, e.g. a tiny CLIP for
tests and the canary zoo. Options: ``model_cfg``, ``pretrained`` (tag; ``False`` = random
init), ``tokenizer`` (``"package.module:Name"`` of a tokenizer class/callable with open_clip's
call convention ``tok(texts) -> (T, L)`` ids, or the object itself; default open_clip's),
``preprocess`` (the user's preprocessing: ``input_size`` (or ``size``), ``resize``/``crop_pct``,
``resize_mode``, ``interpolation``, ``mean``, ``std``), ``class_names`` (ignored for CLIP: wrap
the adapter in ZeroShotHead).

Preprocessing, per key: the user's value > the preprocessing stored with the checkpoint >
open_clip's config (``open_clip_config``: the pretrained tag's or the architecture's
``preprocess_cfg``, or ``model_cfg["preprocess_cfg"]``; centre crop = no crop, crop_pct 1).
A local checkpoint without its own record gets a warning naming the guessed values.

Attention capture: open_clip calls ``nn.MultiheadAttention`` with ``need_weights=False``
(the fused kernel returns no probabilities, and the averaged weights torch can return
are not the tensor on the gradient path). The patch re-computes the attention in eager
ops from ``in_proj_weight``/``in_proj_bias`` (softmax done here, text causal mask applied)
and records the probabilities that are then multiplied with ``V``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
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

_INTERP = {"bilinear", "bicubic", "nearest", "lanczos"}


def mha_eager_forward(mha: nn.MultiheadAttention):
    """Eager replacement for ``mha.forward`` that records the post-softmax attention.

    Same signature and outputs as :meth:`torch.nn.MultiheadAttention.forward` for
    self- and cross-attention with packed ``in_proj`` weights; handles ``batch_first``,
    additive or boolean ``attn_mask`` of shape ``(N, S)`` or ``(B*H, N, S)``,
    ``key_padding_mask`` and ``is_causal``.
    """
    if mha.bias_k is not None or mha.add_zero_attn or not mha._qkv_same_embed_dim:
        raise CaptureError(
            "nn.MultiheadAttention with bias_k/bias_v, add_zero_attn or separate q/k/v projection weights "
            "is not supported by attention capture"
        )

    def forward(
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        *,
        record,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = query if key is None else key
        value = key if value is None else value
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0 if mha.batch_first else 1), key.unsqueeze(
                0 if mha.batch_first else 1), value.unsqueeze(0 if mha.batch_first else 1)
        if not mha.batch_first:  # (N, B, C) -> (B, N, C)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, n, c = query.shape
        s = key.shape[1]
        h = mha.num_heads
        d = c // h
        wq, wk, wv = mha.in_proj_weight.chunk(3)
        bq, bk, bv = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        q = F.linear(query, wq, bq).view(b, n, h, d).transpose(1, 2)  # (B, H, N, d)
        k = F.linear(key, wk, bk).view(b, s, h, d).transpose(1, 2)  # (B, H, S, d)
        v = F.linear(value, wv, bv).view(b, s, h, d).transpose(1, 2)  # (B, H, S, d)
        scores = (q * d ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, S)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(n, s, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros(attn_mask.shape, dtype=scores.dtype, device=scores.device).masked_fill(
                    attn_mask, float("-inf"))
            if attn_mask.dim() == 2:
                scores = scores + attn_mask.to(scores.dtype)  # (N, S) broadcast
            else:
                scores = scores + attn_mask.to(scores.dtype).view(b, h, n, s)
        if key_padding_mask is not None:
            if key_padding_mask.dtype == torch.bool:
                key_padding_mask = torch.zeros(key_padding_mask.shape, dtype=scores.dtype,
                                               device=scores.device).masked_fill(key_padding_mask, float("-inf"))
            scores = scores + key_padding_mask.to(scores.dtype).view(b, 1, 1, s)
        attn = scores.softmax(dim=-1)  # (B, H, N, S)
        record(attn)
        attn_used = F.dropout(attn, p=mha.dropout, training=mha.training)
        out = (attn_used @ v).transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        out = F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
        if not mha.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(0 if mha.batch_first else 1)
        weights = None
        if need_weights:
            weights = attn.mean(dim=1) if average_attn_weights else attn
            if unbatched:
                weights = weights.squeeze(0)
        return out, weights

    return forward


@ADAPTERS.register(
    "open_clip", kind="clip", attention=True, example="open_clip:ViT-B-32/laion2b_s34b_b79k",
    checkpoint_help="--checkpoint PATH: a CLIP state dict (.safetensors preferred) of the named architecture "
                    "(open_clip:ARCH without a pretrained tag)",
)
class OpenClipAdapter(Adapter):
    """Adapter for open_clip CLIP models with a ViT image tower (kind ``clip``)."""

    family: ClassVar[str] = "open_clip"
    examples: ClassVar[tuple[str, ...]] = (
        "open_clip:ViT-B-32/laion2b_s34b_b79k",
        "open_clip:ViT-B-16/openai",
        "open_clip:ViT-B-32 --checkpoint vit_b_32.safetensors",
    )
    description: ClassVar[str] = "open_clip CLIP (ViT image tower + text tower, tokenizer)"
    input_size_hint: ClassVar[str] = (
        "open_clip image towers accept the size they were built for only; build one for that size "
        "(model_cfg vision_cfg.image_size) or leave model.preprocess.input_size out"
    )

    def __init__(self, spec: ModelSpec, model: nn.Module, tokenizer: Any, preprocess: Preprocess) -> None:
        self.spec = spec
        self.model = model
        self.kind = "clip"
        self.class_names = None
        self.tokenizer = tokenizer
        self.preprocess = preprocess

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, spec: ModelSpec, *, device: str | torch.device = "cpu") -> OpenClipAdapter:
        import open_clip

        opts = dict(spec.options)
        opts.pop("class_names", None)
        model_cfg = opts.pop("model_cfg", None)
        pretrained = opts.pop("pretrained", None)
        tok_opt = opts.pop("tokenizer", None)
        user_pp, pp_layers = pop_preprocess_options(opts, what=f"open_clip:{spec.name}")
        if opts:
            raise ModelLoadError(
                f"open_clip:{spec.name}: unknown options {sorted(opts)}; known: model_cfg, pretrained, tokenizer, "
                "preprocess, class_names"
            )
        arch, _, tag = spec.name.partition("/")
        if tag and pretrained not in (None, False):
            raise ModelLoadError(f"open_clip:{spec.name}: give the pretrained tag either after '/' or as option, not both")
        tag = tag or (pretrained if isinstance(pretrained, str) else "")
        if spec.checkpoint and tag:
            raise ModelLoadError(
                f"open_clip:{spec.name}: a local checkpoint replaces the pretrained tag {tag!r}; use open_clip:{arch} "
                f"with checkpoint={spec.checkpoint}"
            )
        if model_cfg is not None:
            model, pp_cfg, tokenizer = _build_from_cfg(arch, model_cfg, custom_tokenizer=tok_opt is not None)
            cfg_basis = ("the preprocess_cfg of option model_cfg" if model_cfg.get("preprocess_cfg")
                         else "open_clip's CLIP defaults (model_cfg has no preprocess_cfg)")
        else:
            if arch not in open_clip.list_models():
                raise ModelLoadError(
                    f"open_clip has no architecture {arch!r}; see open_clip.list_models(), or pass option model_cfg"
                )
            if tag and not spec.checkpoint:
                try:
                    model = open_clip.create_model(arch, pretrained=tag, device="cpu")
                except Exception as e:  # download / hub errors
                    raise ModelLoadError(no_network_message(f"open_clip:{spec.name}", e, f"open_clip:{arch}")) from e
            else:
                if not spec.checkpoint and pretrained is not False:
                    raise ModelLoadError(
                        f"open_clip:{spec.name} names no pretrained weights; use open_clip:{arch}/TAG "
                        f"(tags: {', '.join(t for _, t in open_clip.list_pretrained_tags_by_model(arch)[:5]) if hasattr(open_clip, 'list_pretrained_tags_by_model') else 'see open_clip.list_pretrained()'}) "
                        "or a local checkpoint (checkpoint=PATH)"
                    )
                model = open_clip.create_model(arch, pretrained=None, device="cpu", pretrained_text=False)
            pp_cfg = dict(open_clip.get_model_preprocess_cfg(model))
            tokenizer = open_clip.get_tokenizer(arch)
            cfg_basis = f"open_clip's config for {arch}"
        if tok_opt is not None:
            tokenizer = _resolve_tokenizer(tok_opt, model, arch)
        ckpt_pp: dict[str, Any] | None = None
        if spec.checkpoint:
            sd, ckpt_pp = load_checkpoint(spec.checkpoint)
            check_state_dict(model, sd, source=spec.checkpoint, spec=f"open_clip:{spec.name}")
            model.load_state_dict(sd, strict=True)
        model.eval().to(device)
        visual = getattr(model, "visual", None)
        if visual is None or not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
            raise ModelLoadError(
                f"open_clip:{spec.name}: the image tower is {type(visual).__name__}, not an open_clip "
                "VisionTransformer; vision-audit explains ViT image towers only"
            )
        pp = resolve_preprocess([("user", user_pp), *pp_layers, ("checkpoint", ckpt_pp or {}),
                                 ("open_clip_config", _config_values(pp_cfg, visual))])
        if spec.checkpoint:
            pp = with_guess_warning(pp, checkpoint=spec.checkpoint, basis=cfg_basis, recorded=ckpt_pp is not None)
        return cls(spec, model, tokenizer, pp)

    # -- vision tower --------------------------------------------------------------------
    @property
    def _visual(self) -> nn.Module:
        return self.model.visual

    def token_layout(self, input_size: tuple[int, int] | None = None) -> TokenLayout:
        size = tuple(input_size) if input_size is not None else self.preprocess.size
        if not self.supports_input_size(size):  # type: ignore[arg-type]
            raise UsageError(f"{self.spec} accepts input size {self.preprocess.size} only (got {size})")
        v = self._visual
        sh, sw = v.conv1.stride
        grid = (size[0] // sh, size[1] // sw)
        pool = getattr(v, "pool_type", "tok")
        pooled = 0 if pool == "tok" and getattr(v, "attn_pool", None) is None else None
        return TokenLayout(prefix_kinds=("cls",), pooled=pooled, grid=grid)

    def supports_input_size(self, size: tuple[int, int]) -> bool:
        img = self._visual.image_size
        img = (img, img) if isinstance(img, int) else tuple(img)
        return tuple(int(s) for s in size) == tuple(int(s) for s in img)

    def vision_blocks(self) -> list[nn.Module]:
        return list(self._visual.transformer.resblocks)

    def _text_transformer(self) -> nn.Module:
        if hasattr(self.model, "text") and hasattr(self.model.text, "transformer"):
            return self.model.text.transformer
        return self.model.transformer

    def text_blocks(self) -> list[nn.Module]:
        return list(self._text_transformer().resblocks)

    def attention_patches(self, tower: Tower = "vision") -> list[AttentionPatch]:
        blocks = self.vision_blocks() if tower == "vision" else self.text_blocks() if tower == "text" else None
        if blocks is None:
            raise UsageError(f"unknown tower {tower!r}; use 'vision' or 'text'")
        patches = []
        for i, blk in enumerate(blocks):
            mha = getattr(blk, "attn", None)
            if not isinstance(mha, nn.MultiheadAttention):
                raise CaptureError(
                    f"{self.spec}: {tower} block {i} uses {type(mha).__name__}; attention capture supports "
                    "open_clip ResidualAttentionBlock (nn.MultiheadAttention)"
                )
            patches.append(AttentionPatch(module=mha, forward=mha_eager_forward(mha)))
        return patches

    def gradcam_layer(self) -> nn.Module:
        last = self.vision_blocks()[-1]
        return last.ln_1 if self.token_layout().pooled is not None else last

    def image_projection(self) -> nn.Module | None:
        return None  # open_clip stores the projection as a bare parameter (visual.proj)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)  # (B, D), not normalised

    def residual_view(self) -> Any:
        """open_clip image tower: heads recomputed in eager ops inside ``attn`` (its fused forward never calls
        ``out_proj``), layer scales ``ls_1``/``ls_2``, the MLP branch is ``ls_2``'s output, ``ln_post``, ``proj``."""
        from audit.models.residual import BlockView, ResidualView, mha_head_recorder, scale_of

        v = self._visual
        if getattr(v, "attn_pool", None) is not None:
            raise UsageError(f"{self.spec}: attention-pooled image towers cannot be decomposed")
        blocks = []
        for i, blk in enumerate(self.vision_blocks()):
            mha = getattr(blk, "attn", None)
            if not isinstance(mha, nn.MultiheadAttention):
                raise UsageError(f"{self.spec}: image block {i} uses {type(mha).__name__}, not nn.MultiheadAttention")
            blocks.append(BlockView(block=blk, record_heads=mha_head_recorder(mha), proj_weight=mha.out_proj.weight,
                                    proj_bias=mha.out_proj.bias, attn_scale=scale_of(blk.ls_1),
                                    n_heads=int(mha.num_heads), mlp_branch=blk.ls_2))
        proj = v.proj
        return ResidualView(blocks=blocks, layout=self.token_layout(), final_norm=v.ln_post,
                            norm_after_pool=bool(getattr(v, "final_ln_after_pool", False)),
                            head_weight=None if proj is None else proj.T, head_bias=None, output="embedding",
                            forward=self.encode_image, seq_first=not getattr(v.transformer, "batch_first", True))

    # -- text tower ----------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)  # (T, L)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)  # (T, D), not normalised

    def text_tokens(self, texts: Sequence[str], *, truncate: bool = True) -> list[list[int]]:
        """Content ids per text (no start/end/padding); ``truncate=False``: before the context cut."""
        texts = list(texts)
        if not texts:
            return []
        ids = None
        if not truncate:  # the tokenizer's own call with a context long enough for every text
            long = max(1024, 4 * max(len(t) for t in texts) + 8)
            try:
                ids = self.tokenizer(texts, context_length=long)
            except TypeError:  # a tokenizer without the context_length argument
                ids = None
        if ids is None:
            ids = self.tokenizer(texts)
        ids = torch.as_tensor(ids)  # (T, L)
        sot = _special_id(self.tokenizer, "sot_token_id", "bos_token_id")
        eot = _special_id(self.tokenizer, "eot_token_id", "eos_token_id")
        pooled = self.text_eot_index(ids).tolist() if eot is None else [None] * len(texts)
        out = []
        for row, e in zip(ids.tolist(), pooled):
            start = 1 if row and sot is not None and row[0] == sot else 0
            if eot is not None:  # the first end-of-text after the start (padding may repeat it)
                e = next((i for i in range(start, len(row)) if row[i] == eot), len(row))
            out.append(row[start:e] if e >= start else [])
        return out

    @property
    def unknown_token_id(self) -> int | None:
        """The tokenizer's unknown-word id (the zoo's word tokenizer, HF tokenizers); ``None`` for
        open_clip's byte-level BPE, which encodes every string."""
        unk = _special_id(self.tokenizer, "unk_token_id", "unk_token_id")
        structural = {_special_id(self.tokenizer, a, b) for a, b in
                      (("sot_token_id", "bos_token_id"), ("eot_token_id", "eos_token_id"), ("pad_token_id", "pad_token_id"))}
        return None if unk is None or unk in structural else unk

    def _pool_type(self) -> tuple[str, int | None]:
        text = getattr(self.model, "text", None)
        if text is not None and hasattr(text, "pool_type"):
            if getattr(text, "cls_emb", None) is not None:
                raise UsageError(f"{self.spec}: text towers with an appended class token (CoCa) are not supported")
            return text.pool_type, getattr(text, "eos_id", None)
        return getattr(self.model, "text_pool_type", "argmax"), getattr(self.model, "text_eos_id", None)

    def text_eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        pool, eos = self._pool_type()
        t = tokens.shape[0]
        if pool == "argmax":  # OpenAI BPE: end-of-text has the highest id
            return tokens.argmax(dim=-1)
        if pool == "eos":
            eos = eos if eos is not None else getattr(self.tokenizer, "eot_token_id", None)
            return (tokens == eos).int().argmax(dim=-1)
        if pool == "first":
            return torch.zeros(t, dtype=torch.long, device=tokens.device)
        if pool == "last":
            return torch.full((t,), tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)
        raise UsageError(f"{self.spec}: text pool type {pool!r} has no single pooled token")

    def text_token_strings(self, tokens: torch.Tensor) -> list[list[str]]:
        """Token strings of each text up to and including its end-of-text token (positions align)."""
        eot = self.text_eot_index(tokens).tolist()
        out = []
        for row, e in zip(tokens.tolist(), eot):
            out.append([_decode_one(self.tokenizer, i) for i in row[: e + 1]])
        return out

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())


def _special_id(tok: Any, name: str, hf_name: str) -> int | None:
    """A special token id of an open_clip-convention tokenizer (``tok.<name>``) or of the HF
    tokenizer inside open_clip's HFTokenizer (``tok.tokenizer.<hf_name>``); ``None`` if it has none."""
    v = getattr(tok, name, None)
    if v is None:
        inner = getattr(tok, "tokenizer", None)
        v = getattr(inner, hf_name, None) if inner is not None else None
    return int(v) if isinstance(v, int) else None


def _decode_one(tok: Any, i: int) -> str:
    if hasattr(tok, "decoder") and hasattr(tok, "byte_decoder"):  # open_clip SimpleTokenizer
        piece = tok.decoder.get(i, "")
        text = bytearray(tok.byte_decoder[c] for c in piece if c in tok.byte_decoder).decode("utf-8", "replace")
        return text.replace("</w>", "").strip() or piece
    inner = getattr(tok, "tokenizer", None)
    if inner is not None and hasattr(inner, "convert_ids_to_tokens"):  # open_clip HFTokenizer
        return str(inner.convert_ids_to_tokens(int(i)))
    specials = {getattr(tok, "sot_token_id", None): "<start_of_text>", getattr(tok, "eot_token_id", None): "<end_of_text>",
                getattr(tok, "pad_token_id", None): "<pad>"}
    if i in specials:
        return specials[i]
    if hasattr(tok, "decode"):  # other tokenizers: decode one id (str, or list of words)
        d = tok.decode([i])
        return " ".join(map(str, d)) if isinstance(d, list | tuple) else str(d).strip()
    return str(i)


def _resolve_tokenizer(opt: Any, model: nn.Module, arch: str) -> Any:
    """Tokenizer option: ``"module:Name"`` import string (class instantiated) or an object."""
    import importlib
    import inspect

    obj = opt
    if isinstance(opt, str):
        mod_name, _, attr = opt.partition(":")
        try:
            obj = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError, ValueError) as e:
            raise ModelLoadError(f"open_clip:{arch}: cannot import tokenizer {opt!r} (expected 'module:Name'): {e}") from e
    if inspect.isclass(obj):
        ctx = getattr(model, "context_length", None)
        params = inspect.signature(obj).parameters
        obj = obj(context_length=ctx) if ctx is not None and "context_length" in params else obj()
    if not callable(obj):
        raise ModelLoadError(f"open_clip:{arch}: tokenizer {opt!r} is not callable")
    vocab = getattr(model, "vocab_size", None)
    tok_vocab = getattr(obj, "vocab_size", None)
    if vocab is not None and tok_vocab is not None and int(tok_vocab) > int(vocab):
        raise ModelLoadError(f"open_clip:{arch}: tokenizer has {tok_vocab} ids but the text tower only {vocab}")
    return obj


@functools.lru_cache(maxsize=8)
def _simple_tokenizer(context_length: int) -> Any:
    """open_clip's default BPE tokenizer (cached: reading the vocabulary takes ~0.5 s)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def _build_from_cfg(arch: str, cfg: dict[str, Any], *, custom_tokenizer: bool = False,
                    ) -> tuple[nn.Module, dict[str, Any], Any]:
    import open_clip
    cfg = copy.deepcopy(dict(cfg))
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ModelLoadError(f"open_clip:{arch}: model_cfg lacks {missing}; see open_clip's model_configs/*.json")
    pp = dict(cfg.pop("preprocess_cfg", {}) or {})
    custom_text = bool(cfg.pop("custom_text", False))
    cfg.pop("multimodal_cfg", None)
    try:
        model = (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(**cfg)
    except (TypeError, ValueError, AssertionError) as e:
        raise ModelLoadError(f"open_clip:{arch}: cannot build a CLIP from model_cfg: {e}") from e
    img = cfg["vision_cfg"].get("image_size", 224)
    pp_cfg = {"size": img, "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD,
              "interpolation": "bicubic", "resize_mode": "shortest"}
    pp_cfg.update(pp)
    ctx = cfg["text_cfg"].get("context_length", 77)
    vocab = cfg["text_cfg"].get("vocab_size", 49408)
    if custom_tokenizer:
        return model, pp_cfg, None
    tokenizer = _simple_tokenizer(ctx)
    if vocab < len(tokenizer.encoder):
        raise ModelLoadError(
            f"open_clip:{arch}: text_cfg.vocab_size={vocab} is smaller than open_clip's tokenizer "
            f"({len(tokenizer.encoder)} tokens); use vocab_size={len(tokenizer.encoder)}"
        )
    return model, pp_cfg, tokenizer


def _config_values(pp: dict[str, Any], visual: nn.Module) -> dict[str, Any]:
    """open_clip's ``preprocess_cfg`` in ``model.preprocess`` keys (its eval transform: resize the
    shorter side to the input size, centre crop; no crop margin)."""
    size = pp.get("size", getattr(visual, "image_size", 224))
    size = (size, size) if isinstance(size, int) else tuple(size)
    interp = pp.get("interpolation", "bicubic")
    mode = pp.get("resize_mode", "shortest")
    return {
        "input_size": (int(size[0]), int(size[1])),
        "mean": tuple(float(v) for v in pp.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        "std": tuple(float(v) for v in pp.get("std", (0.26862954, 0.26130258, 0.27577711))),
        "interpolation": interp if interp in _INTERP else "bicubic",
        "crop_pct": 1.0,
        "resize_mode": "squash" if mode == "squash" else "shortest",
    }
