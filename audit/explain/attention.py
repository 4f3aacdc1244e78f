"""Attention maps: raw attention of the pooled token and attention rollout.

Definitions follow Abnar & Zuidema (2020), with vit-explain's discard variant without its two
known bugs: rows are renormalised with ``keepdim`` and the
discard is applied to every image of the batch. Accumulation is float32.

Registered in :data:`audit.registry.METHODS` as ``"rollout"`` and ``"attention"``
with the signature ``fn(adapter, images, *, target=None, **params) -> (B, gh, gw)``
(attention methods ignore ``target``).
"""

from __future__ import annotations

from typing import Literal

import torch

from audit.errors import ExplainError
from audit.models.base import Adapter, TokenLayout
from audit.registry import METHODS

__all__ = ["attention_rollout", "raw_attention", "rollout"]

HeadFusion = Literal["mean", "max", "min"]


def _check(attentions: list[torch.Tensor], layout: TokenLayout) -> None:
    if not attentions:
        raise ExplainError("no attention maps given (empty list); capture them with audit.capture.capture")
    for i, a in enumerate(attentions):
        if a.dim() != 4 or a.shape[-1] != a.shape[-2]:
            raise ExplainError(f"attention {i} has shape {tuple(a.shape)}, expected (B, H, N, N)")
        if a.shape[-1] != layout.n_tokens:
            raise ExplainError(
                f"attention {i} has {a.shape[-1]} tokens but the token layout has {layout.n_tokens} "
                f"({layout.n_prefix} prefix + {layout.grid[0]}x{layout.grid[1]} patches); pass the layout "
                "for the input size that was captured (adapter.token_layout((H, W)))"
            )


def _fuse(a: torch.Tensor, head_fusion: HeadFusion) -> torch.Tensor:
    """``(B, H, N, N)`` -> ``(B, N, N)`` float32."""
    a = a.float()
    if head_fusion == "mean":
        return a.mean(dim=1)
    if head_fusion == "max":
        return a.amax(dim=1)
    if head_fusion == "min":
        return a.amin(dim=1)
    raise ExplainError(f"unknown head_fusion {head_fusion!r}; use 'mean', 'max' or 'min'")


def _discard(f: torch.Tensor, ratio: float, pooled: int | None) -> torch.Tensor:
    """Zero the ``floor(ratio * N*N)`` lowest entries of each image's ``f`` ``(B, N, N)``.

    The pooled->pooled entry is never a candidate (for mean-pooled layouts, with no
    pooled token, every entry is). Ties are broken by ``torch.topk``.
    """
    b, n, _ = f.shape
    k = int(ratio * n * n)
    if k <= 0:
        return f
    flat = f.reshape(b, n * n).clone()  # (B, N*N)
    keyed = flat.clone()
    if pooled is not None:
        keyed[:, pooled * n + pooled] = float("inf")
        k = min(k, n * n - 1)
    idx = keyed.topk(k, dim=-1, largest=False).indices  # (B, k), per image
    flat.scatter_(1, idx, 0.0)
    return flat.reshape(b, n, n)


def rollout(
    attentions: list[torch.Tensor],
    layout: TokenLayout,
    *,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
) -> torch.Tensor:
    """Attention rollout.

    Per block ``l >= start_layer``: ``F = fuse_heads(A_l)``, optionally discard the lowest
    ``discard_ratio`` share of ``F`` (per image, never pooled->pooled), ``Â = 0.5 F + 0.5 I``
    with rows renormalised to 1, ``R = Â_L ... Â_s``. The map is ``R[pooled, patches]``
    (for mean-pooled models the mean of the patch rows).

    Args:
        attentions: per block ``(B, H, N, N)`` post-softmax attention, input to output.
        layout: token layout for the captured input size.
        head_fusion: how heads are fused.
        discard_ratio: share in ``[0, 1)`` of the entries of ``F`` zeroed per block.
        start_layer: first block included.

    Returns:
        ``(B, gh, gw)`` float32.

    Example:
        >>> lay = TokenLayout(prefix_kinds=("cls",), pooled=0, grid=(1, 2))
        >>> a = torch.full((1, 1, 3, 3), 1 / 3)
        >>> rollout([a], lay).shape
        torch.Size([1, 1, 2])
    """
    _check(attentions, layout)
    if not 0.0 <= discard_ratio < 1.0:
        raise ExplainError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    n_layers = len(attentions)
    if not 0 <= start_layer < n_layers:
        raise ExplainError(f"start_layer must be in [0, {n_layers - 1}] for {n_layers} blocks, got {start_layer}")
    b, _, n, _ = attentions[0].shape
    device = attentions[0].device
    eye = torch.eye(n, dtype=torch.float32, device=device)  # (N, N)
    result = eye.expand(b, n, n).clone()  # (B, N, N)
    for a in attentions[start_layer:]:
        f = _fuse(a, head_fusion)  # (B, N, N)
        if discard_ratio > 0:
            f = _discard(f, discard_ratio, layout.pooled)
        a_hat = 0.5 * f + 0.5 * eye
        a_hat = a_hat / a_hat.sum(dim=-1, keepdim=True)
        result = a_hat @ result
    row = layout.pooled_row(result)  # (B, N)
    return layout.to_grid(layout.patch_tokens(row, dim=-1)).float()  # (B, gh, gw)


def raw_attention(
    attentions: list[torch.Tensor],
    layout: TokenLayout,
    *,
    layer: int = -1,
    head: int | None = None,
) -> torch.Tensor:
    """Attention of the pooled token to the patches in one block.

    Args:
        attentions: per block ``(B, H, N, N)``.
        layout: token layout for the captured input size.
        layer: block index (negative counts from the end).
        head: one head, or ``None`` for the mean over heads.

    Returns:
        ``(B, gh, gw)`` float32.
    """
    _check(attentions, layout)
    n_layers = len(attentions)
    if not -n_layers <= layer < n_layers:
        raise ExplainError(f"layer {layer} out of range for {n_layers} blocks")
    a = attentions[layer].float()  # (B, H, N, N)
    n_heads = a.shape[1]
    if head is None:
        m = a.mean(dim=1)
    elif -n_heads <= head < n_heads:
        m = a[:, head]
    else:
        raise ExplainError(f"head {head} out of range for {n_heads} heads")
    row = layout.pooled_row(m)  # (B, N)
    return layout.to_grid(layout.patch_tokens(row, dim=-1)).float()


def _captured(adapter: Adapter, images: torch.Tensor) -> tuple[list[torch.Tensor], TokenLayout]:
    from audit.capture import capture

    if images.dim() != 4:
        raise ExplainError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    layout = adapter.token_layout(tuple(images.shape[-2:]))
    with torch.no_grad(), capture(adapter, tower="vision") as cap:
        adapter.encode_image(images)
    return cap.attentions, layout


def attention_rollout(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
) -> torch.Tensor:
    """Capture the vision tower's attention for ``images`` ``(B, 3, H, W)`` and roll it out -> ``(B, gh, gw)``."""
    atts, layout = _captured(adapter, images)
    return rollout(atts, layout, head_fusion=head_fusion, discard_ratio=discard_ratio, start_layer=start_layer)


@METHODS.register(
    "rollout", target_free=True, needs_attention=True, gradient=False,
    description="attention rollout (Abnar & Zuidema): attention multiplied through the blocks, class-agnostic",
)
def rollout_method(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    target: object = None,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
) -> torch.Tensor:
    """METHODS entry ``"rollout"``: class-agnostic, ``target`` is ignored."""
    return attention_rollout(
        adapter, images, head_fusion=head_fusion, discard_ratio=discard_ratio, start_layer=start_layer
    )


@METHODS.register(
    "attention", target_free=True, needs_attention=True, gradient=False,
    description="raw attention of the pooled token in one block (default: the last), mean over heads",
)
def attention_method(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    target: object = None,
    layer: int = -1,
    head: int | None = None,
) -> torch.Tensor:
    """METHODS entry ``"attention"``: raw attention of the pooled token; ``target`` is ignored."""
    atts, layout = _captured(adapter, images)
    return raw_attention(atts, layout, layer=layer, head=head)
