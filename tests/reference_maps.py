"""Reference re-implementations shared by the tests (written out, independent of audit.capture/explain).

* :func:`attention_inputs`: what each block hands its attention module (normed tokens, rope, shared bias),
  recorded with temporary forward pre-hooks;
* :func:`explicit_attention`: post-softmax attention ``(B, H, N, N)`` from an attention module's weights:
  q, k from ``qkv`` (ViT's ``qkv.bias`` or EVA/BEiT's ``q_bias`` / zero k bias / ``v_bias``), rotary
  embedding of the patch tokens' q and k (EVA), ``* scale``, relative position bias (BEiT), softmax;
* :func:`beit_relative_bias`: BEiT's relative position bias ``(H, N, N)`` from its table, the index
  computed here from the patch grid;
* :func:`reference_rollout` (Abnar & Zuidema) and :func:`reference_gae` (Chefer et al.), per
  /work/shared/REFERENCES.md, with the pooled row (an index, or the mean of the patch rows).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def attention_inputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, dict]]]:
    """Run ``model(x)`` (eager attention) and return its output and, per block, the attention module's
    input tokens and keyword arguments (``rope`` for EVA, ``shared_rel_pos_bias`` for BEiT)."""
    seen: list[tuple[torch.Tensor, dict[str, Any]]] = []
    handles, flags = [], []
    for blk in model.blocks:
        flags.append(blk.attn.fused_attn)
        blk.attn.fused_attn = False
        handles.append(blk.attn.register_forward_pre_hook(
            lambda _m, args, kwargs: seen.append((args[0].detach(), dict(kwargs))), with_kwargs=True))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
        for blk, f in zip(model.blocks, flags):
            blk.attn.fused_attn = f
    return out, seen


def _rotate_pairs(t: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the interleaved rotation of EVA's rope."""
    return torch.stack([-t[..., 1::2], t[..., ::2]], dim=-1).reshape(t.shape)


def explicit_attention(attn: nn.Module, h: torch.Tensor, *, n_prefix: int, rope: torch.Tensor | None = None,
                       rel_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias)`` ``(B, H, N, N)`` from the module's weights.

    ``rope``: ``(P, 2 d)`` the concatenated (sin, cos) table of the patch positions; the rotation is
    applied here to the patch tokens' q and k (the prefix tokens keep theirs). ``rel_bias``: ``(H, N, N)``.
    """
    b, n, _ = h.shape
    heads = attn.num_heads
    w = attn.qkv.weight
    if getattr(attn, "q_bias", None) is not None:
        bias = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
    else:
        bias = attn.qkv.bias
    qkv = torch.nn.functional.linear(h, w, bias).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]  # (B, H, N, d)
    q, k = attn.q_norm(q) if hasattr(attn, "q_norm") else q, attn.k_norm(k) if hasattr(attn, "k_norm") else k
    d = q.shape[-1]
    if rope is not None:
        sin, cos = rope.chunk(2, dim=-1)  # (P, d) each

        def rot(t: torch.Tensor) -> torch.Tensor:
            p = t[:, :, n_prefix:]
            return torch.cat([t[:, :, :n_prefix], p * cos + _rotate_pairs(p) * sin], dim=2)

        q, k = rot(q), rot(k)
    logits = (q @ k.transpose(-2, -1)) * d ** -0.5  # (B, H, N, N)
    if rel_bias is not None:
        logits = logits + rel_bias.unsqueeze(0)
    return logits.softmax(dim=-1)


def beit_relative_bias(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """BEiT's bias ``(H, N, N)``, N = 1 + gh*gw: patch pairs index the table by their offset
    (dy + gh - 1) * (2 gw - 1) + (dx + gw - 1); the CLS row, the CLS column and CLS->CLS use the
    table's last three entries (cls->patch, patch->cls, cls->cls)."""
    gh, gw = grid
    n_rel = (2 * gh - 1) * (2 * gw - 1)
    pos = [(i, j) for i in range(gh) for j in range(gw)]
    n = 1 + len(pos)
    idx = torch.zeros(n, n, dtype=torch.long)
    for a, (ya, xa) in enumerate(pos, start=1):
        for c, (yc, xc) in enumerate(pos, start=1):
            idx[a, c] = (ya - yc + gh - 1) * (2 * gw - 1) + (xa - xc + gw - 1)
    idx[0, :] = n_rel
    idx[:, 0] = n_rel + 1
    idx[0, 0] = n_rel + 2
    return table[idx.view(-1)].view(n, n, -1).permute(2, 0, 1)  # (H, N, N)


def _pooled_row(r: torch.Tensor, pooled: int | None, n_prefix: int) -> torch.Tensor:
    """``(B, N, N)`` -> the pooled token's row over the patch tokens ``(B, P)``."""
    row = r[:, pooled] if pooled is not None else r[:, n_prefix:].mean(dim=1)
    return row[:, n_prefix:]


def reference_rollout(attns: list[torch.Tensor], *, pooled: int | None, n_prefix: int,
                      start_layer: int = 0, full: bool = False) -> torch.Tensor:
    """Rollout (mean over heads, no discard) in float64: ``Â = 0.5 F + 0.5 I``, rows renormalised,
    ``R = Â_L ... Â_s``; the pooled row over the patches ``(B, P)`` (``full``: over every token, ``(B, N)``)."""
    b, _, n, _ = attns[0].shape
    eye = torch.eye(n, dtype=torch.float64)
    r = eye.repeat(b, 1, 1)
    for a in attns[start_layer:]:
        ah = 0.5 * a.double().mean(dim=1) + 0.5 * eye
        ah = ah / ah.sum(dim=-1, keepdim=True)
        r = torch.bmm(ah, r)
    if full:
        return r[:, pooled] if pooled is not None else r[:, n_prefix:].mean(dim=1)
    return _pooled_row(r, pooled, n_prefix)


def reference_gae(model: nn.Module, x: torch.Tensor, cls: list[int], start_layer: int = 0, *,
                  pooled: int | None = 0) -> torch.Tensor:
    """Chefer's GAE written out: hooks on each block's ``attn_drop`` (input = post-softmax attention),
    ``R = I; R += E_h[(∇A ⊙ A)+] R`` per block; the pooled row over the patches ``(B, P)``."""
    attns: list[torch.Tensor] = []
    handles, flags = [], []
    for blk in model.blocks:
        flags.append(blk.attn.fused_attn)
        blk.attn.fused_attn = False

        def hook(_m, inp, _out):
            inp[0].retain_grad()
            attns.append(inp[0])

        handles.append(blk.attn.attn_drop.register_forward_hook(hook))
    try:
        logits = model(x)
        one_hot = torch.zeros_like(logits)
        one_hot[torch.arange(len(cls)), cls] = 1
        (logits * one_hot).sum().backward()
    finally:
        for h in handles:
            h.remove()
        for blk, f in zip(model.blocks, flags):
            blk.attn.fused_attn = f
        model.zero_grad(set_to_none=True)
    n = attns[0].shape[-1]
    r = torch.eye(n).repeat(x.shape[0], 1, 1)
    for a in attns[start_layer:]:
        cam = (a.grad * a).clamp(min=0).mean(dim=1)
        r = r + torch.bmm(cam, r)
    return _pooled_row(r, pooled, model.num_prefix_tokens).detach()
