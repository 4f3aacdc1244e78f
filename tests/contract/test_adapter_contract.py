"""Contract suite: every adapter honours the Adapter interface and the capture contract.

Parametrised over every tiny adapter of tests/helpers_models.py (timm ViT, dynamic-size
timm ViT, distilled DeiT, register ViT, mean-pooled ViT, open_clip CLIP, HF ViT, HF CLIP,
ZeroShotHead over open_clip, timm Swin / ConvNeXt, HF Swin / ConvNeXt / DINOv2 (with registers)).
Adapters without attention maps (NO_ATTENTION) must refuse capture with a UsageError that says why.
"""

from __future__ import annotations

import pytest
import torch

from audit.capture import assert_no_hooks, capture
from audit.errors import CaptureError, UsageError
from audit.explain import explain
from audit.explain.attention import attention_rollout
from audit.registry import METHODS
from tests.helpers_models import all_adapter_factories

FACTORIES = all_adapter_factories()

# expected prefix tokens and pooled index of each adapter (written out, not read from the adapter)
EXPECTED_PREFIX = {
    "timm_vit": (("cls",), 0),
    "timm_vit_dynamic": (("cls",), 0),
    "deit_distilled": (("cls", "dist"), 0),
    "vit_reg": (("cls", "reg", "reg", "reg", "reg"), 0),
    "vit_avgpool": ((), None),
    "open_clip": (("cls",), 0),
    "hf_vit": (("cls",), 0),
    "hf_clip": (("cls",), 0),
    "zeroshot_open_clip": (("cls",), 0),
    "eva02": (("cls",), None),  # mean of the patch tokens (fc_norm)
    "beit": (("cls",), None),
    "dinov2_reg": (("cls", "reg", "reg", "reg", "reg"), 0),
    "timm_swin": ((), None),
    "timm_convnext": ((), None),
    "hf_swin": ((), None),
    "hf_convnext": ((), None),
    "hf_dinov2": (("cls",), 0),
    "hf_dinov2_reg": (("cls", "reg", "reg"), 0),
}
# adapters that accept a 32x48 input (dynamic size / interpolated position embeddings)
NON_SQUARE = {"timm_vit_dynamic", "hf_vit", "hf_clip", "eva02"}
# any multiple of a CNN's total stride / of DINOv2's patch size (interpolated position embeddings)
NON_SQUARE |= {"timm_convnext", "hf_convnext", "hf_dinov2", "hf_dinov2_reg"}
N_BLOCKS = 2
# adapters without a token-by-token attention matrix over the image (windowed attention, CNNs) and the
# words their refusal must contain
NO_ATTENTION = {"timm_swin": "windows", "timm_convnext": "convolutional", "hf_swin": "windows",
                "hf_convnext": "convolutional"}


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def named_adapter(request, tmp_path_factory):
    name = request.param
    return name, FACTORIES[name](tmp_path_factory.mktemp(name))


def _forward(adapter, x: torch.Tensor) -> torch.Tensor:
    return adapter.logits(x) if adapter.kind == "classifier" else adapter.encode_image(x)


def _refuses_attention(name: str, a) -> bool:
    """For NO_ATTENTION adapters: capture is refused with UsageError saying why and what applies."""
    if name not in NO_ATTENTION:
        assert a.attention_maps
        return False
    assert not a.attention_maps
    with pytest.raises(UsageError, match=NO_ATTENTION[name]) as err, torch.no_grad(), capture(a):
        _forward(a, _x(a))
    assert "use gradcam" in str(err.value)
    assert_no_hooks(a.model)
    return True


def _x(adapter, size: tuple[int, int] | None = None, b: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(b, 3, *(size or adapter.preprocess.size), generator=g)


def test_output_shapes(named_adapter) -> None:
    _, a = named_adapter
    x = _x(a)
    with torch.no_grad():
        emb = a.encode_image(x)
        assert emb.dim() == 2 and emb.shape[0] == 2
        if a.kind == "classifier":
            assert a.class_names is not None
            assert a.logits(x).shape == (2, len(a.class_names))
        else:
            with pytest.raises(NotImplementedError, match="ZeroShotHead"):
                a.logits(x)
            tok = a.tokenize(["a cat", "dog"])
            txt = a.encode_text(tok)
            assert txt.shape == (2, emb.shape[1])
            eot = a.text_eot_index(tok)
            strings = a.text_token_strings(tok)
            assert [len(s) for s in strings] == (eot + 1).tolist()
            assert a.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)  # CLIP's initial temperature
    assert len(a.vision_blocks()) == N_BLOCKS
    assert isinstance(a.gradcam_layer(), torch.nn.Module)
    assert a.describe()["n_blocks"] == N_BLOCKS
    assert a.fingerprint == a.fingerprint and len(a.fingerprint.split("@")[-1]) >= 16


def test_layout_agrees_with_captured_token_count(named_adapter) -> None:
    name, a = named_adapter
    lay = a.token_layout()
    assert (lay.prefix_kinds, lay.pooled) == EXPECTED_PREFIX[name]
    assert lay.grid == (4, 4)  # 32x32 input, 8x8 patches (hierarchical models: total stride 8)
    if _refuses_attention(name, a):
        return
    with torch.no_grad(), capture(a) as cap:
        _forward(a, _x(a))
    assert {att.shape[-1] for att in cap.attentions} == {lay.n_tokens}


def test_non_square_input(named_adapter) -> None:
    name, a = named_adapter
    size = (32, 48)
    if name not in NON_SQUARE:
        assert not a.supports_input_size(size)
        with pytest.raises(UsageError, match="input size"):
            a.token_layout(size)
        return
    assert a.supports_input_size(size)
    lay = a.token_layout(size)
    assert lay.grid == (4, 6)
    if name in NO_ATTENTION:
        with torch.no_grad():
            assert _forward(a, _x(a, size)).shape[0] == 2
        return
    with torch.no_grad(), capture(a) as cap:
        out = _forward(a, _x(a, size))
    assert out.shape[0] == 2
    assert cap.attentions[0].shape[-1] == lay.n_prefix + 24
    maps = attention_rollout(a, _x(a, size))
    assert maps.shape == (2, 4, 6)


def test_capture_one_stochastic_map_per_block(named_adapter) -> None:
    name, a = named_adapter
    if _refuses_attention(name, a):
        return
    towers = ["vision", "text"] if a.kind == "clip" else ["vision"]
    for tower in towers:
        with torch.no_grad(), capture(a, tower=tower) as cap:
            if tower == "vision":
                _forward(a, _x(a))
            else:
                a.encode_text(a.tokenize(["a cat", "dog"]))
        atts = cap.attentions
        n_blocks = len(a.vision_blocks()) if tower == "vision" else len(a.text_blocks())
        assert len(atts) == n_blocks == len(cap)
        for att in atts:
            assert att.dim() == 4 and att.shape[0] == 2 and att.shape[1] == 2
            torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:-1]), atol=1e-5, rtol=0)
            assert att.min() >= 0
            if tower == "text":  # causal mask: nothing above the diagonal
                assert torch.triu(att, diagonal=1).abs().max() == 0
        assert_no_hooks(a.model)


def test_outputs_unchanged_by_capture(named_adapter) -> None:
    name, a = named_adapter
    if _refuses_attention(name, a):
        return
    x = _x(a)
    with torch.no_grad():
        ref = _forward(a, x)
        with capture(a):
            got = _forward(a, x)
        after = _forward(a, x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(after, ref, atol=0, rtol=0)
    if a.kind == "clip":
        tok = a.tokenize(["a cat", "dog"])
        with torch.no_grad():
            ref = a.encode_text(tok)
            with capture(a, tower="text"):
                got = a.encode_text(tok)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_no_patch_left_after_exception(named_adapter) -> None:
    name, a = named_adapter
    if _refuses_attention(name, a):
        return
    flags = {id(m): m.fused_attn for m in a.model.modules() if hasattr(m, "fused_attn")}
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), capture(a, grads=False):
        _forward(a, _x(a))
        raise RuntimeError("boom")
    assert_no_hooks(a.model)
    assert flags == {id(m): m.fused_attn for m in a.model.modules() if hasattr(m, "fused_attn")}
    with torch.no_grad(), capture(a) as cap:  # usable again
        _forward(a, _x(a))
    assert len(cap.attentions) == N_BLOCKS


def test_missing_block_raises(named_adapter, monkeypatch) -> None:
    name, a = named_adapter
    if _refuses_attention(name, a):
        return
    full = a.attention_patches

    monkeypatch.setattr(a, "attention_patches", lambda tower="vision": full(tower)[:-1])
    with pytest.raises(CaptureError, match=r"1 of 2 vision blocks \(missing: blocks \[1\]\)"), \
            torch.no_grad(), capture(a):
        _forward(a, _x(a))
    assert_no_hooks(a.model)
    with pytest.raises(CaptureError, match="no attention was captured"), capture(a):
        pass


def test_grads_present_after_backward(named_adapter) -> None:
    name, a = named_adapter
    if _refuses_attention(name, a):
        return
    x = _x(a)
    with capture(a, grads=True) as cap:
        out = _forward(a, x)
        out[:, 0].sum().backward()
    grads = cap.grads
    assert len(grads) == N_BLOCKS
    for att, g in zip(cap.attentions, grads):
        assert g.shape == att.shape
        assert torch.isfinite(g).all()
    # the last block's pooled row receives gradient from the output
    lay = a.token_layout()
    last = grads[-1]
    assert last.abs().sum() > 0
    if lay.pooled is not None:
        assert last[:, :, lay.pooled].abs().sum() > 0
    a.model.zero_grad(set_to_none=True)
    assert_no_hooks(a.model)


def test_registered_attention_methods(named_adapter) -> None:
    name, a = named_adapter
    x = _x(a)
    if name in NO_ATTENTION:
        for method in ("rollout", "attention", "gae"):
            with pytest.raises(UsageError, match=NO_ATTENTION[name]):
                explain(a, x, method=method)
        assert_no_hooks(a.model)
        return
    lay = a.token_layout()
    for method in ("rollout", "attention"):
        fn = METHODS.get(method)
        maps = fn(a, x, target=None)
        assert maps.shape == (2, *lay.grid) and maps.dtype == torch.float32
        assert torch.isfinite(maps).all() and maps.min() >= 0
    # rollout rows are stochastic: patch mass + prefix mass of the pooled row = 1, so patches sum < 1
    roll = METHODS.get("rollout")(a, x)
    assert (roll.flatten(1).sum(-1) <= 1 + 1e-5).all()


def test_embed_and_logits_equals_separate_calls(named_adapter) -> None:
    """The pipeline's single-pass forward gives what encode_image and logits give separately."""
    _, a = named_adapter
    if a.kind != "classifier":
        pytest.skip("CLIP adapters classify through a ZeroShotHead (covered by its factory)")
    x = _x(a)
    with torch.no_grad():
        emb, logits = a.embed_and_logits(x)
        torch.testing.assert_close(emb, a.encode_image(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits, a.logits(x), atol=1e-5, rtol=1e-5)
