"""Direct contributions of attention heads and MLPs to a ViT's / CLIP's pooled output (TextSpan).

For the last ``L`` blocks of a pre-norm ViT the residual stream at the pooled token is

    x = r + sum_l sum_h W_o[:, h] z_{l,h} * gamma_l + sum_l mlp_l      (+ the projection biases, in r)

where ``r`` is the stream entering block ``N - L``. The final LayerNorm is linearised at each
image's own statistics (mean and std of its ``x``), as TextSpan (Gandelsman et al., ICLR 2024)
does: ``LN(x) = sum_c w * (c - mean(c)) / std(x) + b``; the head / image projection is linear. So
``output = rest + sum_c contribution_c`` exactly: :func:`decompose` returns the contributions
``(B, K, D_out)`` and the rest ``(B, D_out)`` (the stream entering block ``N - L``, every bias
and the norm's and head's biases). These are *direct* effects: what a component writes into the
output, not what it changes downstream through later blocks.

The model-family knowledge (which modules) comes from ``adapter.residual_view()``
(:mod:`audit.models.residual`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from audit.errors import UsageError

__all__ = ["Decomposition", "component_names", "decompose", "decompose_batches", "resolve_layers"]


@dataclass
class Decomposition:
    """Per-image direct contributions.

    Attributes:
        contributions: ``(B, K, D_out)``, one row per component (heads of a layer in order, then its MLP).
        rest: ``(B, D_out)``: everything else (residual stream entering the first decomposed layer, biases).
        output: ``(B, D_out)``: the model's own output from the same forward.
        layers, heads: per component its block index and head index (``-1`` for the MLP).
        kind: ``"embedding"`` (CLIP image embedding) or ``"logits"`` (classifier).
    """

    contributions: torch.Tensor
    rest: torch.Tensor
    output: torch.Tensor
    layers: list[int]
    heads: list[int]
    kind: str
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.names:
            self.names = component_names(self.layers, self.heads)

    @property
    def reconstruction(self) -> torch.Tensor:
        """``rest + sum of contributions``: equals :attr:`output` up to float error."""
        return self.rest + self.contributions.sum(dim=1)


def component_names(layers: Iterable[int], heads: Iterable[int]) -> list[str]:
    """``L5.H3`` for head 3 of block 5, ``L5.MLP`` for its MLP."""
    return [f"L{ly}.MLP" if h < 0 else f"L{ly}.H{h}" for ly, h in zip(layers, heads)]


def resolve_layers(n_blocks: int, layers: int | None) -> int:
    """Number of last blocks to decompose: ``None`` = half the depth (at least 1)."""
    if layers is None:
        return max(1, n_blocks // 2)
    if not 1 <= int(layers) <= n_blocks:
        raise UsageError(f"components.layers must be between 1 and the model's {n_blocks} blocks; got {layers}")
    return int(layers)


@torch.no_grad()
def decompose(adapter, x: torch.Tensor, *, layers: int | None = None, view=None) -> Decomposition:
    """Decompose the output of ``adapter`` on images ``x`` ``(B, 3, H, W)`` into head and MLP contributions.

    Args:
        adapter: a loaded adapter with ``residual_view()`` (timm ViT / DeiT / EVA / BEiT / DINOv2, open_clip,
            HF ViT / CLIP / DINOv2, ZeroShotHead, ProbeAdapter).
        x: preprocessed images.
        layers: how many of the last blocks to decompose (default half the depth).
        view: a :class:`~audit.models.residual.ResidualView` already built (saves rebuilding it per batch).

    Returns:
        :class:`Decomposition` (float32 tensors on the model's device).
    """
    view = adapter.residual_view() if view is None else view
    n = view.n_layers
    start = n - resolve_layers(n, layers)
    lay = view.layout

    def tokens_first(t: torch.Tensor) -> torch.Tensor:  # -> (B, N, C)
        return t.transpose(0, 1) if view.seq_first else t

    def pool(t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, C); per-token views keep every token
        if view.per_token:
            return t.float()
        if lay.pooled is not None:
            return t[:, lay.pooled].float()
        return lay.patch_tokens(t, dim=1).float().mean(dim=1)

    store: dict[str, torch.Tensor] = {}
    z: dict[int, torch.Tensor] = {}
    mlp: dict[int, torch.Tensor] = {}

    def on_start(_m, args, kwargs):
        h = args[0] if args else kwargs.get("hidden_states", kwargs.get("x", kwargs.get("q_x")))
        store["start"] = pool(tokens_first(h))

    def on_norm(_m, args):
        t = args[0]
        store["final"] = t.float() if view.norm_after_pool else pool(t)  # per-token views: (B, N, C)

    with contextlib.ExitStack() as stack:
        hooks = [view.blocks[start].block.register_forward_pre_hook(on_start, with_kwargs=True),
                 view.final_norm.register_forward_pre_hook(on_norm)]
        for li in range(start, n):
            b = view.blocks[li]

            def rec(t: torch.Tensor, li: int = li) -> None:
                z[li] = pool(t)  # record_heads always passes (B, N, C)

            def on_mlp(_m, _a, out: torch.Tensor, li: int = li) -> None:
                mlp[li] = pool(tokens_first(out))

            stack.enter_context(b.record_heads(rec))
            hooks.append(b.mlp_branch.register_forward_hook(on_mlp))
        try:
            out = view.forward(x).float()  # (B, D_out)
        finally:
            for h in hooks:
                h.remove()
    missing = [li for li in range(start, n) if li not in z or li not in mlp]
    if missing or "start" not in store or "final" not in store:
        raise UsageError(f"{adapter.spec}: the decomposition hooks did not fire for blocks {missing or '(start/norm)'}; "
                         "the model's forward does not go through the modules its residual_view names")
    if view.per_token:
        comps, rest, layer_ids, head_ids = _per_token_parts(view, store, z, mlp, start)
        return _through_head(view, comps, rest, out, layer_ids, head_ids)
    rest = store["start"]  # (B, C)
    parts, layer_ids, head_ids = [], [], []
    for li in range(start, n):
        b = view.blocks[li]
        c_out, c_in = b.proj_weight.shape
        w = b.proj_weight.float().view(c_out, b.n_heads, c_in // b.n_heads)  # (C, H, d)
        zh = z[li].view(-1, b.n_heads, c_in // b.n_heads)  # (B, H, d)
        heads = torch.einsum("bhd,chd->bhc", zh, w)  # (B, H, C)
        bias = b.proj_bias.float() if b.proj_bias is not None else torch.zeros(c_out, device=heads.device)
        if b.attn_scale is not None:
            heads = heads * b.attn_scale.float()
            bias = bias * b.attn_scale.float()
        rest = rest + bias
        m = mlp[li] * b.mlp_scale.float() if b.mlp_scale is not None else mlp[li]  # (B, C)
        parts += [heads, m[:, None]]
        layer_ids += [li] * (b.n_heads + 1)
        head_ids += [*range(b.n_heads), -1]
    comps = torch.cat(parts, dim=1)  # (B, K, C)
    final = store["final"]
    norm = view.final_norm
    if isinstance(norm, torch.nn.LayerNorm):
        std = (final.var(dim=-1, unbiased=False, keepdim=True) + norm.eps).sqrt()  # (B, 1)
        wn = norm.weight.float() if norm.weight is not None else 1.0
        comps = (comps - comps.mean(dim=-1, keepdim=True)) / std[:, None] * wn
        rest = (rest - rest.mean(dim=-1, keepdim=True)) / std * wn
        if norm.bias is not None:
            rest = rest + norm.bias.float()
    return _through_head(view, comps, rest, out, layer_ids, head_ids)


def _through_head(view, comps: torch.Tensor, rest: torch.Tensor, out: torch.Tensor, layer_ids: list[int],
                  head_ids: list[int]) -> Decomposition:
    """Apply the (linear) head to the normed contributions ``(B, K, C)`` and rest ``(B, C)``."""
    if view.head_weight is not None:
        hw = view.head_weight.float()
        comps = comps @ hw.T
        rest = rest @ hw.T
    if view.head_bias is not None:
        rest = rest + view.head_bias.float()
    return Decomposition(contributions=comps, rest=rest, output=out, layers=layer_ids, heads=head_ids,
                         kind=view.output)


def _per_token_parts(view, store: dict[str, torch.Tensor], z: dict[int, torch.Tensor], mlp: dict[int, torch.Tensor],
                     start: int) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """Contributions and rest through a norm applied to every token before pooling (``view.token_pool``
    ``"mean"`` or ``"pooled+mean"``): each token is linearised at its own mean and std, then the
    normalised tokens are pooled as the head reads them. One head at a time, so memory stays ``(B, N, C)``.

    Returns ``(comps (B, K, C'), rest (B, C'), layers, heads)`` with C' = C (mean) or 2C (pooled+mean).
    """
    lay = view.layout
    norm = view.final_norm
    final = store["final"]  # (B, N, C): the norm's input
    ln = isinstance(norm, torch.nn.LayerNorm)
    std = (final.var(dim=-1, unbiased=False, keepdim=True) + norm.eps).sqrt() if ln else None  # (B, N, 1)
    wn = norm.weight.float() if ln and norm.weight is not None else 1.0

    def normed(t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> linearised norm, no bias
        return (t - t.mean(dim=-1, keepdim=True)) / std * wn if ln else t

    def pooled(t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> what the head reads
        mean = lay.patch_tokens(t, dim=1).mean(dim=1)
        return mean if view.token_pool == "mean" else torch.cat([t[:, lay.pooled], mean], dim=-1)

    rest = store["start"]  # (B, N, C)
    parts, layer_ids, head_ids = [], [], []
    for li in range(start, view.n_layers):
        b = view.blocks[li]
        c_out, c_in = b.proj_weight.shape
        d = c_in // b.n_heads
        w = b.proj_weight.float().view(c_out, b.n_heads, d)
        zh = z[li].view(*z[li].shape[:2], b.n_heads, d)  # (B, N, H, d)
        bias = b.proj_bias.float() if b.proj_bias is not None else torch.zeros(c_out, device=zh.device)
        scale = b.attn_scale.float() if b.attn_scale is not None else None
        for h in range(b.n_heads):
            head = zh[:, :, h] @ w[:, h].T  # (B, N, C)
            parts.append(pooled(normed(head * scale if scale is not None else head)))
        rest = rest + (bias * scale if scale is not None else bias)
        m = mlp[li] * b.mlp_scale.float() if b.mlp_scale is not None else mlp[li]
        parts.append(pooled(normed(m)))
        layer_ids += [li] * (b.n_heads + 1)
        head_ids += [*range(b.n_heads), -1]
    rest = normed(rest)
    if ln and norm.bias is not None:
        rest = rest + norm.bias.float()
    return torch.stack(parts, dim=1), pooled(rest), layer_ids, head_ids


def decompose_batches(adapter, batches: Iterable[torch.Tensor], *, layers: int | None = None) -> Decomposition:
    """:func:`decompose` over an iterable of image batches, concatenated on the CPU (float32)."""
    view = adapter.residual_view()
    out: list[Decomposition] = []
    for x in batches:
        d = decompose(adapter, x.to(adapter.device), layers=layers, view=view)
        out.append(Decomposition(contributions=d.contributions.cpu(), rest=d.rest.cpu(), output=d.output.cpu(),
                                 layers=d.layers, heads=d.heads, kind=d.kind))
    if not out:
        raise UsageError("decompose_batches got no images")
    return Decomposition(contributions=torch.cat([d.contributions for d in out]), rest=torch.cat([d.rest for d in out]),
                         output=torch.cat([d.output for d in out]), layers=out[0].layers, heads=out[0].heads,
                         kind=out[0].kind)


def relative_error(d: Decomposition) -> float:
    """max over images of ``|reconstruction - output| / |output|`` (L2 norms)."""
    num = (d.reconstruction - d.output).norm(dim=-1)
    den = d.output.norm(dim=-1).clamp(min=1e-12)
    return float(np.max((num / den).cpu().numpy()))
