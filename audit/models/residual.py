"""The residual-stream view of a vision tower: what the direct-effect decomposition needs.

A pre-norm ViT writes every attention block and every MLP into one residual stream,
``x_L = x_s + sum_l (attn_l + mlp_l)``; the pooled token of ``x_L`` goes through the final norm
and the head (a classifier ``Linear`` or CLIP's image projection). :class:`ResidualView` names,
for one loaded model, the modules an algorithm must observe to split the output into the direct
contribution of each attention head and each MLP (TextSpan, Gandelsman et al., ICLR 2024); the
algorithm itself lives in :mod:`audit.components`. Each adapter builds its view in
``Adapter.residual_view()``; nothing outside ``audit/models/`` knows these module paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from audit.errors import UsageError
from audit.models.base import TokenLayout

Record = Callable[[torch.Tensor], None]

__all__ = ["BlockView", "ResidualView", "mha_head_recorder", "pre_hook_recorder", "scale_of"]


@dataclass(frozen=True)
class BlockView:
    """One transformer block as seen from the residual stream.

    Attributes:
        block: the block module; the input of the first decomposed block is the residual term.
        record_heads: ``record_heads(record)`` is a context in which every forward of the block
            passes the concatenated per-head attention output before the output projection,
            ``(B, N, H * d_head)``, to ``record``.
        proj_weight: the output projection's weight ``(C, H * d_head)``; columns ``h*d:(h+1)*d``
            belong to head ``h``.
        proj_bias: its bias ``(C,)`` or ``None`` (apportioned to the residual term).
        attn_scale: the attention branch's layer scale ``(C,)`` or ``None``.
        n_heads: number of heads.
        mlp_branch: the module whose output, times ``mlp_scale`` when given, is exactly what the MLP
            branch adds to the stream (a layer-scale module such as timm ``ls2`` or transformers
            ``layer_scale2`` is itself the branch, its scale included).
        mlp_scale: the MLP branch's layer scale ``(C,)`` when it is a bare parameter multiplied
            onto ``mlp_branch``'s output inside the block's forward (timm EVA / BEiT ``gamma_2``),
            else ``None``.
    """

    block: nn.Module
    record_heads: Callable[[Record], contextlib.AbstractContextManager]
    proj_weight: torch.Tensor
    proj_bias: torch.Tensor | None
    attn_scale: torch.Tensor | None
    n_heads: int
    mlp_branch: nn.Module
    mlp_scale: torch.Tensor | None = None


@dataclass(frozen=True)
class ResidualView:
    """What the direct-effect decomposition of one model needs (built by ``Adapter.residual_view``).

    Attributes:
        blocks: one :class:`BlockView` per block, input to output.
        layout: the token layout (which token is pooled, or the mean of the patch tokens).
        final_norm: the LayerNorm between the stream and the head (weight, bias, eps).
        norm_after_pool: True when the norm is applied to the pooled vector (timm ``fc_norm``),
            False when it is applied per token before pooling (then only a pooled token is supported).
        head_weight: ``(D_out, C)`` map from the normed pooled vector to the output, or ``None`` (identity).
        head_bias: ``(D_out,)`` or ``None``.
        output: what the decomposition reconstructs: the image ``"embedding"`` (CLIP) or the ``"logits"``.
        forward: the model's own forward for that output, ``(B, 3, H, W) -> (B, D_out)``.
        seq_first: the blocks' tensors are ``(N, B, C)`` (open_clip without ``batch_first``).
        token_pool: for a norm applied per token before pooling (``norm_after_pool`` False), which
            normalised tokens the head reads: ``"pooled"`` (the pooled token only), ``"mean"`` (the mean of
            the patch tokens) or ``"pooled+mean"`` (both, concatenated: transformers
            ``Dinov2ForImageClassification``). For the last two every token is linearised at its own
            statistics, so the decomposition keeps per-token contributions of the decomposed blocks.
    """

    blocks: list[BlockView]
    layout: TokenLayout
    final_norm: nn.Module
    norm_after_pool: bool
    head_weight: torch.Tensor | None
    head_bias: torch.Tensor | None
    output: Literal["embedding", "logits"]
    forward: Callable[[torch.Tensor], torch.Tensor]
    seq_first: bool = False  # blocks read and write (N, B, C) instead of (B, N, C)
    token_pool: Literal["pooled", "mean", "pooled+mean"] = "pooled"

    def __post_init__(self) -> None:
        if self.token_pool != "pooled" and self.norm_after_pool:
            raise UsageError(f"token_pool {self.token_pool!r} is for a norm applied per token before pooling")
        if self.token_pool == "pooled" and self.layout.pooled is None and not self.norm_after_pool:
            raise UsageError("the decomposition of a mean-pooled model that normalises each token before pooling "
                             "needs token_pool='mean' in its residual view")
        if self.token_pool == "pooled+mean" and self.layout.pooled is None:
            raise UsageError("token_pool 'pooled+mean' needs a pooled token")
        if not isinstance(self.final_norm, nn.LayerNorm | nn.Identity):
            raise UsageError(f"the final norm is {type(self.final_norm).__name__}; the decomposition linearises "
                             "a LayerNorm (or none) only")

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def per_token(self) -> bool:
        """Whether every token is normalised at its own statistics before several are pooled."""
        return self.token_pool != "pooled"


def scale_of(module: nn.Module | None) -> torch.Tensor | None:
    """The gamma of a layer-scale module (timm ``LayerScale.gamma``, open_clip ``LayerScale.gamma``),
    ``None`` for an identity."""
    if module is None or isinstance(module, nn.Identity):
        return None
    gamma = getattr(module, "gamma", None)
    if isinstance(gamma, torch.Tensor):
        return gamma
    raise UsageError(f"layer scale {type(module).__name__} has no gamma; cannot decompose through it")


def pre_hook_recorder(module: nn.Module) -> Callable[[Record], contextlib.AbstractContextManager]:
    """``record_heads`` for a projection module that is called with the concatenated heads."""

    @contextlib.contextmanager
    def ctx(record: Record) -> Iterator[None]:
        h = module.register_forward_pre_hook(lambda _m, args: record(args[0]))
        try:
            yield
        finally:
            h.remove()

    return ctx


def mha_head_recorder(mha: nn.MultiheadAttention) -> Callable[[Record], contextlib.AbstractContextManager]:
    """``record_heads`` for ``nn.MultiheadAttention`` (self-attention, packed in_proj, no mask in the
    vision tower): its fused forward never calls ``out_proj``, so while recording ``mha.forward`` is
    replaced by the same computation in eager ops (scaled dot-product attention) that exposes the
    concatenated heads; restored on exit, also after an error."""
    if mha.bias_k is not None or mha.add_zero_attn or not mha._qkv_same_embed_dim:
        raise UsageError("nn.MultiheadAttention with bias_k/bias_v, add_zero_attn or separate q/k/v weights "
                         "cannot be decomposed")

    @contextlib.contextmanager
    def ctx(record: Record) -> Iterator[None]:
        def forward(query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                    key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                    attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                    is_causal: bool = False) -> tuple[torch.Tensor, None]:
            if key is not None and key is not query or key_padding_mask is not None or attn_mask is not None:
                raise UsageError("the decomposition supports unmasked self-attention in the image tower only")
            x = query if mha.batch_first else query.transpose(0, 1)  # (B, N, C)
            b, n, c = x.shape
            h = mha.num_heads
            qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).view(b, n, 3, h, c // h)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d) each
            heads = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)  # (B, N, C)
            record(heads)
            out = F.linear(heads, mha.out_proj.weight, mha.out_proj.bias)
            return (out if mha.batch_first else out.transpose(0, 1)), None

        mha.forward = forward  # instance attribute shadows the class method
        try:
            yield
        finally:
            del mha.forward

    return ctx
