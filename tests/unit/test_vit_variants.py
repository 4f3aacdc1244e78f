"""EVA-02, BEiT and DINOv2-with-registers through the timm adapter, against explicit re-implementations.

Each variant is a tiny random-weight model (tests/helpers_models.py ``tiny_vit_variant``: 32x32 input,
8x8 patches, 2 blocks, 2 heads, the constants timm initialises randomised), saved to safetensors and
reloaded with ``load_model(checkpoint=...)``. Checked per variant: (a) captured attention equals the
softmax computed here from the block's weights (rope for EVA, relative position bias for BEiT);
(b) the patched forward equals timm's own eager forward; (c) raw attention, rollout and GAE equal
the plain re-implementations of tests/reference_maps.py; (d) the token layout and pooling rule.
"""

from __future__ import annotations

import pytest
import torch

from audit.capture import assert_no_hooks, capture
from audit.errors import ModelLoadError, UsageError
from audit.explain import ClassTarget, explain
from audit.models import load_model
from tests.helpers_models import CLASS_NAMES, TINY_VARIANTS, TINY_VIT, tiny_vit_variant
from tests.reference_maps import (
    attention_inputs,
    beit_relative_bias,
    explicit_attention,
    reference_gae,
    reference_rollout,
)

VARIANTS = sorted(TINY_VARIANTS)
# written out, not read from the adapter: prefix kinds, pooled token, attention class
EXPECTED = {
    "eva02": (("cls",), None, "EvaAttention"),
    "beit": (("cls",), None, "Attention"),
    "dinov2_reg": (("cls", "reg", "reg", "reg", "reg"), 0, "Attention"),
}


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request, tmp_path_factory):
    return request.param, tiny_vit_variant(request.param, tmp_path_factory.mktemp(request.param))


def _x(size: tuple[int, int] = (32, 32), b: int = 2, seed: int = 5) -> torch.Tensor:
    return torch.randn(b, 3, *size, generator=torch.Generator().manual_seed(seed))


def _explicit(kind: str, adapter, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """timm's eager output, the explicit attentions, and the same without rope / relative bias."""
    model = adapter.model
    lay = adapter.token_layout(tuple(x.shape[-2:]))
    out, inputs = attention_inputs(model, x)
    with_pos, without = [], []
    for blk, (h, _kwargs) in zip(model.blocks, inputs):
        extra = {}
        if kind == "eva02":
            extra["rope"] = model.rope.get_embed(shape=list(lay.grid))  # (P, 2 d) sin/cos of the patch grid
        if kind == "beit":
            extra["rel_bias"] = beit_relative_bias(blk.attn.relative_position_bias_table, lay.grid)
        with torch.no_grad():
            with_pos.append(explicit_attention(blk.attn, h, n_prefix=lay.n_prefix, **extra))
            without.append(explicit_attention(blk.attn, h, n_prefix=lay.n_prefix))
    return out, with_pos, without


def test_layout_and_architecture(variant) -> None:
    kind, a = variant
    kinds, pooled, attn_cls = EXPECTED[kind]
    lay = a.token_layout()
    assert (lay.prefix_kinds, lay.pooled, lay.grid) == (kinds, pooled, (4, 4))
    assert lay.n_tokens == len(kinds) + 16 and lay.patch_slice == slice(len(kinds), len(kinds) + 16)
    assert all(type(b.attn).__name__ == attn_cls for b in a.vision_blocks())
    m = a.model
    if kind == "eva02":
        mlp = m.blocks[0].mlp  # SwiGLU: timm's packed GluMlp with SiLU
        assert m.rope is not None and type(mlp).__name__ == "GluMlp" and isinstance(mlp.act, torch.nn.SiLU)
    if kind == "beit":
        assert m.blocks[0].attn.relative_position_bias_table.abs().sum() > 0  # randomised, so it acts
    with torch.no_grad(), capture(a) as cap:
        a.logits(_x())
    assert {t.shape for t in cap.attentions} == {torch.Size([2, 2, lay.n_tokens, lay.n_tokens])}
    assert_no_hooks(m)


def test_prefix_tokens_are_not_patches(variant) -> None:
    """The map is the pooled row (CLS, or the mean of the patch rows) over the patch tokens only: the
    CLS and register columns carry the rest of the row's mass and never reach the grid."""
    kind, a = variant
    n_prefix = len(EXPECTED[kind][0])
    x = _x()
    _, atts, _ = _explicit(kind, a, x)
    full = reference_rollout(atts, pooled=EXPECTED[kind][1], n_prefix=n_prefix, full=True)  # (B, N)
    maps = explain(a, x, method="rollout").grid_maps.flatten(1)  # (B, P)
    torch.testing.assert_close(full.sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(maps, full[:, n_prefix:].float(), atol=1e-5, rtol=0)
    prefix_mass = full[:, :n_prefix].sum(-1)
    assert (prefix_mass > 1e-3).all()  # the prefix (registers included) takes a share that is off the grid
    torch.testing.assert_close(maps.sum(-1).double(), 1 - prefix_mass, atol=1e-5, rtol=0)
    if kind == "dinov2_reg":
        assert (full[:, 1:5] > 0).all()  # each register receives mass of the CLS row


def test_captured_attention_equals_explicit_softmax(variant) -> None:
    kind, a = variant
    x = _x()
    _, ref, without = _explicit(kind, a, x)
    with torch.no_grad(), capture(a) as cap:
        a.logits(x)
    for got, r, w in zip(cap.attentions, ref, without):
        torch.testing.assert_close(got, r, atol=1e-5, rtol=0)
        if kind in ("eva02", "beit"):  # the position terms matter: leaving them out is far off
            assert (got - w).abs().max() > 1e-3


def test_patched_forward_equals_timm_eager(variant) -> None:
    kind, a = variant
    x = _x()
    eager, _, _ = _explicit(kind, a, x)
    with torch.no_grad():
        fused = a.model(x)
        with capture(a):
            got = a.logits(x)
    torch.testing.assert_close(got, eager, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, fused, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["attention", "rollout", "gae"])
def test_attention_methods_equal_reference(variant, method: str) -> None:
    kind, a = variant
    x = _x(b=3)
    pooled = EXPECTED[kind][1]
    n_prefix = len(EXPECTED[kind][0])
    _, atts, _ = _explicit(kind, a, x)
    if method == "gae":
        cls = [2, 0, 1]
        ours = explain(a, x, method="gae", target=ClassTarget(cls)).grid_maps
        ref = reference_gae(a.model, x.clone(), cls, pooled=pooled)
        tol = {"rtol": 1e-4, "atol": 1e-6}
    elif method == "rollout":
        ours = explain(a, x, method="rollout").grid_maps
        ref = reference_rollout(atts, pooled=pooled, n_prefix=n_prefix).float()
        tol = {"rtol": 0, "atol": 1e-5}
    else:
        ours = explain(a, x, method="attention").grid_maps
        last = atts[-1].mean(dim=1)  # (B, N, N), mean over heads
        row = last[:, pooled] if pooled is not None else last[:, n_prefix:].mean(dim=1)
        ref = row[:, n_prefix:]
        tol = {"rtol": 0, "atol": 1e-5}
    torch.testing.assert_close(ours, ref.reshape(3, 4, 4), **tol)
    assert ours.abs().sum() > 0
    assert all(p.grad is None for p in a.model.parameters())


def test_eva_dynamic_size_non_square(variant) -> None:
    kind, a = variant
    size = (32, 48)
    if kind != "eva02":
        assert not a.supports_input_size(size)
        with pytest.raises(UsageError, match="input size"):
            a.token_layout(size)
        return
    lay = a.token_layout(size)
    assert lay.grid == (4, 6)
    x = _x(size)
    _, atts, without = _explicit(kind, a, x)  # rope for the 4x6 grid
    with torch.no_grad(), capture(a) as cap:
        a.logits(x)
    for got, r, w in zip(cap.attentions, atts, without):
        torch.testing.assert_close(got, r, atol=1e-5, rtol=0)
        assert (got - w).abs().max() > 1e-3
    ours = explain(a, x, method="rollout").grid_maps
    ref = reference_rollout(atts, pooled=None, n_prefix=1).float().reshape(2, 4, 6)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_pooling_rule_and_gradcam_layer(variant) -> None:
    """Mean-pooled (EVA, BEiT): fc_norm of the patch-token mean, Grad-CAM on the last block's output;
    CLS-pooled (DINOv2): the normed CLS token, Grad-CAM on the last block's norm1."""
    kind, a = variant
    m = a.model
    x = _x()
    with torch.no_grad():
        tokens = m.forward_features(x)  # (B, N, C)
        emb = a.encode_image(x)
        pair = a.embed_and_logits(x)
        logits = a.logits(x)
    pooled = EXPECTED[kind][1]
    n_prefix = len(EXPECTED[kind][0])
    if pooled is None:
        ref = m.fc_norm(tokens[:, n_prefix:].mean(dim=1))
        assert a.gradcam_layer() is m.blocks[-1]
    else:
        ref = tokens[:, pooled]  # forward_features already applied the final norm
        assert a.gradcam_layer() is m.blocks[-1].norm1
    torch.testing.assert_close(emb, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(pair[0], emb, atol=1e-6, rtol=0)
    torch.testing.assert_close(pair[1], logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, m.head(ref), atol=1e-5, rtol=0)


def test_checkpoint_head_is_loaded_strictly(variant, tmp_path_factory) -> None:
    kind, a = variant
    name, extra = TINY_VARIANTS[kind]
    path = a.spec.checkpoint
    opts = {k: v for k, v in {**TINY_VIT, **extra}.items() if k not in ("pretrained", "num_classes")}
    with pytest.raises(ModelLoadError, match=r"classification head mismatch.*num_classes=3"):
        load_model(f"timm:{name}", checkpoint=path, num_classes=5, **opts)
    with pytest.raises(ModelLoadError, match=r"head\.weight: checkpoint has \(3, 32\).*num_classes=3"):
        load_model(f"timm:{name}", checkpoint=path, num_classes=0, **opts)
    again = load_model(f"timm:{name}", checkpoint=path, class_names=CLASS_NAMES, **opts)
    for (k, v), w in zip(a.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(v, w), k


def test_checkpoint_pooling_mismatch_names_the_option(variant) -> None:
    kind, a = variant
    name, extra = TINY_VARIANTS[kind]
    opts = {k: v for k, v in {**TINY_VIT, **extra}.items() if k != "pretrained"}
    other = "token" if EXPECTED[kind][1] is None else "avg"  # the pooling the checkpoint was not trained with
    want = "avg" if other == "token" else "token"
    with pytest.raises(ModelLoadError, match=rf"fc_norm .*global_pool='{want}'"):
        load_model(f"timm:{name}", checkpoint=a.spec.checkpoint, class_names=CLASS_NAMES, global_pool=other, **opts)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("vit_relpos_small_patch16_224", {}, r"uses attention RelPosAttention.*supported: .*EvaAttention"),
    ("vit_base_patch16_siglip_224", {}, r"attention pooling \(global_pool='map'\).*global_pool='avg'"),
    ("vit_tiny_patch16_224", {"global_pool": "max"}, r"global_pool='max'.*global_pool='token'"),
    ("eva02_tiny_patch14_224", {"global_pool": "avgmax"}, r"global_pool='avgmax'"),
    ("vit_tiny_patch16_224", {"global_pool": "avg", "pool_include_prefix": True}, r"pool_include_prefix"),
])
def test_models_it_cannot_explain_are_refused_at_load(name: str, options: dict, message: str) -> None:
    opts = {**TINY_VIT, **options}
    with pytest.raises(ModelLoadError, match=message):
        load_model(f"timm:{name}", **opts)
