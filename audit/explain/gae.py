"""Generic Attention-model Explainability (GAE; Chefer et al., ICCV 2021).

For the target score ``y`` and each block ``l`` (from ``start_layer``) with post-softmax
attention ``A_l`` (B, H, N, N) and its gradient ``∇A_l = ∂y/∂A_l``::

    Ā_l = mean_h (∇A_l ⊙ A_l)+          # (B, N, N)
    R   ← R + Ā_l @ R,   R_0 = I        # no row normalisation, float32

The map is the pooled token's row of ``R`` over the patch tokens (``TokenLayout.pooled_row``),
reshaped to the patch grid. For CLIP, :func:`clip_gae` explains the image-text similarity on
both towers: the image map from the vision tower and the text relevance from the text tower's
``R`` at the end-of-text row over the word tokens before it, normalised to sum to 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from audit.errors import CaptureError, ExplainError
from audit.explain.targets import PromptTarget, Target, prepare_target
from audit.explain.types import record_extra
from audit.registry import METHODS

if TYPE_CHECKING:
    from audit.models.base import Adapter


@contextmanager
def params_require_grad(model: torch.nn.Module) -> Iterator[None]:
    """Temporarily make every parameter of ``model`` require grad (the text tower's attention is
    on the autograd path only through parameters); restores the flags on exit. Parameter
    ``.grad`` is never written: the methods here use :func:`torch.autograd.grad`."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(True)
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def _resolve_start(start_layer: int, n_blocks: int) -> int:
    s = start_layer + n_blocks if start_layer < 0 else start_layer
    if not 0 <= s < n_blocks:
        raise ExplainError(f"start_layer={start_layer} is out of range for a model with {n_blocks} blocks")
    return s


def gae_relevance(
    attentions: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], *, start_layer: int = 0
) -> torch.Tensor:
    """GAE relevance ``R`` (B, N, N) from per-block attention and gradients (each (B, H, N, N)).

    Blocks before ``start_layer`` (negative: counted from the end) are skipped; float32 throughout.
    """
    if len(attentions) != len(grads) or not attentions:
        raise CaptureError(
            f"GAE needs one gradient per attention map; got {len(attentions)} and {len(grads)}"
        )
    s = _resolve_start(start_layer, len(attentions))
    b, _, n, _ = attentions[0].shape
    r = torch.eye(n, dtype=torch.float32, device=attentions[0].device).expand(b, n, n).clone()  # (B, N, N)
    for a, g in zip(attentions[s:], grads[s:]):
        cam = (g.float() * a.float()).clamp_min(0).mean(dim=1)  # (B, N, N)
        r = r + torch.bmm(cam, r)
    return r


def _attn_and_grads(adapter: Adapter, images: torch.Tensor, target: Target) -> tuple[list, list]:
    """Per-block attention and ``∂y/∂A`` (each (B, H, N, N)) for ``y = target.score``.

    Gradients are taken with ``torch.autograd.grad`` with respect to the input only: the capture's
    tensor hooks record ``∂y/∂A`` on the way, and no parameter ``.grad`` is written.
    """
    from audit.capture import capture

    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad(), capture(adapter, tower="vision", grads=True) as cap:
        y = target.score(adapter, x)  # (B,)
        torch.autograd.grad(y.sum(), [x])
    return cap.attentions, cap.grads


def gae(adapter: Adapter, images: torch.Tensor, *, target: Target, start_layer: int = 0) -> torch.Tensor:
    """GAE maps ``(B, gh, gw)`` for a resolved target on the vision tower."""
    layout = adapter.token_layout(tuple(images.shape[-2:]))
    attns, grads = _attn_and_grads(adapter, images, target)
    r = gae_relevance(attns, grads, start_layer=start_layer)  # (B, N, N)
    row = layout.pooled_row(r)  # (B, N)
    return layout.to_grid(layout.patch_tokens(row, dim=-1))  # (B, gh, gw)


def clip_gae(
    adapter: Adapter,
    images: torch.Tensor,
    prompts: str | Sequence[str],
    *,
    start_layer: int = -1,
    text_start_layer: int = -1,
) -> tuple[torch.Tensor, list[tuple[list[str], list[float]]]]:
    """GAE for CLIP image-text pairs on both towers.

    The score of pair ``b`` is ``logit_scale * cos(image_b, text_b)``. ``prompts`` is one prompt
    for every image or one per image. The default ``start_layer=-1`` accumulates only the last
    block (reads best for ViT-B CLIP, per Chefer et al.); ``0`` uses all blocks.

    Returns:
        ``(maps, text_relevance)``: maps ``(B, gh, gw)`` float32 raw; per pair the word-token
        strings (between start- and end-of-text) and their relevance, summing to 1.
    """
    from audit.capture import capture

    if getattr(adapter, "kind", None) != "clip":
        raise ExplainError(f"clip_gae needs a CLIP adapter; {adapter.spec} is a {adapter.kind}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    b = int(images.shape[0])
    if len(prompts) not in (1, b):
        raise ExplainError(f"clip_gae: got {len(prompts)} prompts for {b} images; give 1 or {b}")
    if len(prompts) == 1:
        prompts = prompts * b
    layout = adapter.token_layout(tuple(images.shape[-2:]))
    tokens = adapter.tokenize(prompts).to(adapter.device)  # (B, L)
    scale = float(adapter.logit_scale)
    x = images.detach().clone().requires_grad_(True)
    # Two passes (one capture per model at a time): the image side with the text embedding held
    # fixed, then the text side with the image embedding held fixed. The image embedding does not
    # depend on text attention (and vice versa), so the gradients equal those of one joint pass.
    with torch.enable_grad():
        with torch.no_grad():
            txt_fixed = F.normalize(adapter.encode_text(tokens).float(), dim=-1)  # (B, D)
        with capture(adapter, tower="vision", grads=True) as cv:
            img = F.normalize(adapter.encode_image(x).float(), dim=-1)  # (B, D)
            y = scale * (img * txt_fixed).sum(-1)  # (B,)
            torch.autograd.grad(y.sum(), [x])
        img_fixed = img.detach()
        first = list(adapter.text_blocks()[0].parameters())
        with params_require_grad(adapter.text_blocks()[0]), capture(adapter, tower="text", grads=True) as ct:
            txt = F.normalize(adapter.encode_text(tokens).float(), dim=-1)  # (B, D)
            y_t = scale * (img_fixed * txt).sum(-1)  # (B,)
            # the path to block 0's parameters crosses every text attention map
            torch.autograd.grad(y_t.sum(), first, allow_unused=True)
    r_img = gae_relevance(cv.attentions, cv.grads, start_layer=start_layer)  # (B, N, N)
    maps = layout.to_grid(layout.patch_tokens(layout.pooled_row(r_img), dim=-1))  # (B, gh, gw)
    r_txt = gae_relevance(ct.attentions, ct.grads, start_layer=text_start_layer)  # (B, L, L)
    eot = adapter.text_eot_index(tokens).tolist()  # (B,)
    strings = adapter.text_token_strings(tokens)
    rel: list[tuple[list[str], list[float]]] = []
    for i in range(b):
        e = int(eot[i])
        scores = r_txt[i, e, 1:e].clamp_min(0)  # word tokens between start-of-text (0) and end-of-text
        total = scores.sum()
        scores = scores / total if total > 0 else torch.full_like(scores, 1.0 / max(1, scores.numel()))
        words = _word_strings(strings[i], e)
        rel.append((words, [float(v) for v in scores.tolist()]))
    return maps, rel


def _word_strings(strings: list[str], eot: int) -> list[str]:
    """Strings of the word tokens at positions 1..eot-1 (adapters may or may not include SOT/EOT)."""
    if len(strings) >= eot + 1:
        return list(strings[1:eot])
    if len(strings) == eot - 1:
        return list(strings)
    raise ExplainError(
        f"text_token_strings gave {len(strings)} strings for a prompt whose end-of-text token is at {eot}"
    )


@METHODS.register(
    "gae", needs_attention=True, gradient=True,
    description="generic attention explainability (Chefer et al.): gradient-weighted attention relevance",
)
def gae_method(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    target: Target | None = None,
    start_layer: int | None = None,
    text_start_layer: int = -1,
) -> torch.Tensor:
    """Registry entry: GAE maps ``(B, gh, gw)``.

    ``start_layer=None`` means 0 (all blocks) for classifier targets and -1 (last block) for CLIP
    prompt targets. A :class:`PromptTarget` on CLIP also records the text-side relevance.
    """
    target = prepare_target(adapter, target, images, "gae")
    if isinstance(target, PromptTarget):
        s = -1 if start_layer is None else start_layer
        maps, rel = clip_gae(adapter, images, target.text, start_layer=s, text_start_layer=text_start_layer)
        record_extra("text_relevance", rel)
        record_extra("params", {"start_layer": s, "text_start_layer": text_start_layer})
        return maps
    s = (-1 if adapter.kind == "clip" else 0) if start_layer is None else start_layer
    record_extra("params", {"start_layer": s})
    return gae(adapter, images, target=target, start_layer=s)
