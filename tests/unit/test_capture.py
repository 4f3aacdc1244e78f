"""capture(): captured values against independent computations, gradients, scoping."""

from __future__ import annotations

import pytest
import torch

from audit.capture import assert_no_hooks, capture
from audit.errors import CaptureError
from tests.helpers_models import tiny_hf_vit, tiny_open_clip, tiny_timm_vit
from tests.reference_maps import explicit_attention


@pytest.fixture(scope="module")
def vit():
    return tiny_timm_vit()


@pytest.fixture(scope="module")
def clip():
    return tiny_open_clip()


def _block_inputs(blocks) -> tuple[list[torch.Tensor], list]:
    """Record each block's input with temporary forward pre-hooks (test-side, removed after)."""
    seen: list[torch.Tensor] = []
    handles = [b.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach())) for b in blocks]
    return seen, handles


def test_timm_attention_equals_manual_softmax(vit) -> None:
    x = torch.randn(2, 3, 32, 32)
    blocks = vit.vision_blocks()
    seen, handles = _block_inputs(blocks)
    try:
        with torch.no_grad(), capture(vit) as cap:
            vit.logits(x)
    finally:
        for h in handles:
            h.remove()
    for blk, inp, att in zip(blocks, seen, cap.attentions):
        with torch.no_grad():
            ref = explicit_attention(blk.attn, blk.norm1(inp), n_prefix=1)  # (B, H, N, N)
        torch.testing.assert_close(att, ref, atol=1e-6, rtol=0)
    assert_no_hooks(vit.model)


def test_timm_fused_flag_is_switched_off_during_and_restored_after(vit) -> None:
    attn = vit.vision_blocks()[0].attn
    attn.fused_attn = True
    with torch.no_grad(), capture(vit):
        assert attn.fused_attn is False
        vit.logits(torch.randn(1, 3, 32, 32))
    assert attn.fused_attn is True


def test_open_clip_attention_equals_torch_need_weights(clip) -> None:
    x = torch.randn(2, 3, 32, 32)
    blocks = clip.vision_blocks()
    seen, handles = _block_inputs(blocks)
    try:
        with torch.no_grad(), capture(clip) as cap:
            clip.encode_image(x)
    finally:
        for h in handles:
            h.remove()
    for blk, inp, att in zip(blocks, seen, cap.attentions):
        h = blk.ln_1(inp)
        _, ref = blk.attn(h, h, h, need_weights=True, average_attn_weights=False)  # torch's own weights
        torch.testing.assert_close(att, ref, atol=1e-6, rtol=0)


def test_open_clip_text_attention_is_causal_and_matches_torch(clip) -> None:
    tok = clip.tokenize(["a photo of a cat", "dog"])
    blocks = clip.text_blocks()
    seen, handles = _block_inputs(blocks)
    try:
        with torch.no_grad(), capture(clip, tower="text") as cap:
            clip.encode_text(tok)
    finally:
        for h in handles:
            h.remove()
    mask = clip.model.attn_mask
    for blk, inp, att in zip(blocks, seen, cap.attentions):
        h = blk.ln_1(inp)
        _, ref = blk.attn(h, h, h, need_weights=True, attn_mask=mask, average_attn_weights=False)
        torch.testing.assert_close(att, ref, atol=1e-6, rtol=0)


def test_hf_attention_equals_output_attentions(tmp_path) -> None:
    a = tiny_hf_vit(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = a.model(pixel_values=x, output_attentions=True).attentions
        with capture(a) as cap:
            a.logits(x)
    assert len(ref) == len(cap.attentions) == 2
    for r, c in zip(ref, cap.attentions):
        torch.testing.assert_close(c, r, atol=1e-6, rtol=0)


def test_grads_match_finite_differences(vit) -> None:
    """dy/dA from capture vs a central difference of y along a direction D added to A.

    The perturbation is injected through a forward hook on the last block's attn_drop
    (which receives A in timm's eager path), independently of capture's patching.
    """
    model = vit.model.double()
    try:
        x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
        with capture(vit, grads=True) as cap:
            y = vit.logits(x)[0, 1]
            y.backward()
        g = cap.grads[-1]  # (1, H, N, N)
        d = torch.randn_like(g)
        drop = vit.vision_blocks()[-1].attn.attn_drop
        eps = 1e-6

        def run(e: float) -> float:
            h = drop.register_forward_hook(lambda m, i, o: o + e * d)
            fused = [b.attn.fused_attn for b in vit.vision_blocks()]
            for b in vit.vision_blocks():
                b.attn.fused_attn = False
            try:
                with torch.no_grad():
                    return float(vit.logits(x)[0, 1])
            finally:
                h.remove()
                for b, f in zip(vit.vision_blocks(), fused):
                    b.attn.fused_attn = f

        fd = (run(eps) - run(-eps)) / (2 * eps)
        assert float((g * d).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-8)
    finally:
        model.float()
        model.zero_grad(set_to_none=True)


def test_several_forward_passes_concatenate_along_batch(vit) -> None:
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with torch.no_grad(), capture(vit) as both:
        vit.logits(x1)
        vit.logits(x2)
    with torch.no_grad(), capture(vit) as single:
        vit.logits(torch.cat([x1, x2]))
    for a, b in zip(both.attentions, single.attentions):
        assert a.shape[0] == 3
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_scoping_errors(vit) -> None:
    with pytest.raises(CaptureError, match="already active"), capture(vit), capture(vit):
        pass
    assert_no_hooks(vit.model)
    with capture(vit) as cap, torch.no_grad():
        vit.logits(torch.randn(1, 3, 32, 32))
    with pytest.raises(CaptureError, match="grads=True"):
        _ = cap.grads
    with capture(vit, grads=True) as cap, torch.no_grad():
        vit.logits(torch.randn(1, 3, 32, 32))
    with pytest.raises(CaptureError, match="no gradient reached"):
        _ = cap.grads
    with pytest.raises(CaptureError, match="unknown tower"), capture(vit, tower="audio"):  # type: ignore[arg-type]
        pass


def test_assert_no_hooks_detects_leftovers(vit) -> None:
    blk = vit.vision_blocks()[0]
    h = blk.register_forward_hook(lambda *a: None)
    with pytest.raises(AssertionError, match="_forward_hooks"):
        assert_no_hooks(vit.model)
    h.remove()
    blk.attn.forward = blk.attn.forward
    with pytest.raises(AssertionError, match="forward still patched"):
        assert_no_hooks(vit.model)
    del blk.attn.forward
    assert_no_hooks(vit.model)
