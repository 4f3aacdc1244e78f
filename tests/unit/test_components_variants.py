"""Head/MLP decomposition of the ViT variants: timm EVA-02, BEiT, DINOv2 with registers, transformers DINOv2.

Tiny random-weight models (tests/helpers_models.py builders, plus two EVA-02 builders here: layer scale
``gamma_1``/``gamma_2`` with the SwiGLU of EVA-02 base (``scale_mlp``), and rope attention), every constant
that the libraries initialise (layer scales above all) randomised, so a scale the view forgets shows up as
a reconstruction error. Checked per model: contributions + rest reconstruct the model's own output (a
separate plain forward) for the default and for all layers; dropping the view's layer scales breaks the
reconstruction (the check has teeth); zeroing one head's projection columns zeroes that head only. And the
models whose output is not a sum of per-head contributions are refused with a message that says why.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from audit.components.decompose import decompose, relative_error, resolve_layers
from audit.errors import UsageError
from audit.models import load_model
from tests.helpers_models import (
    CLASS_NAMES,
    TINY_VIT,
    _randomise_zero_inits,
    tiny_hf_hier,
    tiny_vit_variant,
)


def _full_head(adapter):
    """EVA and BEiT scale their initial head by 0.001 (timm ``head_init_scale``): the logits would be almost
    the head bias alone, and every error relative to them tiny. A head of ordinary scale (seeded) instead."""
    head = adapter.model.head
    with torch.no_grad():
        head.weight.copy_(0.3 * torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(2)))
    return adapter


def _tiny_eva02(**kw) -> object:
    """EVA-02 tiny at the tiny ViT's size with ``kw`` (timm options), constants randomised."""
    torch.manual_seed(0)
    adapter = load_model("timm:eva02_tiny_patch14_224", class_names=CLASS_NAMES,
                         **{**TINY_VIT, "dynamic_img_size": True, **kw})
    _randomise_zero_inits(adapter.model, seed=1)
    return _full_head(adapter)


def _tiny_vit(**kw) -> object:
    torch.manual_seed(0)
    return load_model("timm:vit_tiny_patch16_224", class_names=CLASS_NAMES, **{**TINY_VIT, **kw})


FACTORIES = {
    "eva02": lambda tmp: _full_head(tiny_vit_variant("eva02", tmp)),  # EvaAttention + rope, packed SwiGLU, no scale
    "eva02_ls": lambda tmp: _tiny_eva02(init_values=0.1, scale_mlp=True),  # gamma_1/gamma_2, SwiGLU with norm
    "eva02_rope_ls": lambda tmp: _tiny_eva02(init_values=0.1, attn_type="rope"),  # AttentionRope, gamma_1/gamma_2
    "beit": lambda tmp: _full_head(tiny_vit_variant("beit", tmp)),  # relative position bias, gamma_1/2, fc_norm
    "dinov2_reg": lambda tmp: tiny_vit_variant("dinov2_reg", tmp),  # CLS + 4 registers, LayerScale ls1/ls2
    "hf_dinov2": lambda tmp: tiny_hf_hier("dinov2", tmp, head=False),  # layer_scale1/2 (lambda1), pooled CLS
    "hf_dinov2_reg": lambda tmp: tiny_hf_hier("dinov2_reg", tmp, head=False),
    # per-token norm before pooling (token_pool): each token linearised at its own statistics
    "hfcls_dinov2": lambda tmp: tiny_hf_hier("dinov2", tmp),  # classifier: [CLS, mean of patches] -> logits
    "hfcls_dinov2_reg": lambda tmp: tiny_hf_hier("dinov2_reg", tmp),
    "timm_avg_token_norm": lambda tmp: _tiny_vit(class_token=False, global_pool="avg", fc_norm=False),
}
#: the models whose blocks scale their branches (each scale randomised by the builders)
SCALED = {"eva02_ls", "eva02_rope_ls", "beit", "dinov2_reg", "hf_dinov2", "hf_dinov2_reg", "hfcls_dinov2",
          "hfcls_dinov2_reg"}


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def model(request, tmp_path_factory):
    return request.param, FACTORIES[request.param](tmp_path_factory.mktemp(request.param))


def _x(adapter, b: int = 4, seed: int = 3) -> torch.Tensor:
    return torch.randn(b, 3, *adapter.preprocess.size, generator=torch.Generator().manual_seed(seed))


def _reference(adapter, kind: str, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (adapter.logits(x) if kind == "logits" else adapter.encode_image(x)).float()


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((a - ref).norm(dim=-1) / ref.norm(dim=-1)).max())


@pytest.mark.parametrize("layers", [None, "all"])
def test_contributions_plus_rest_reconstruct_the_models_output(model, layers) -> None:
    name, adapter = model
    n_blocks = len(adapter.vision_blocks())
    n = n_blocks if layers == "all" else None
    x = _x(adapter)
    d = decompose(adapter, x, layers=n)
    assert d.kind == ("embedding" if name.startswith("hf_") else "logits")
    assert d.heads.count(-1) == resolve_layers(n_blocks, n)  # one MLP per decomposed block
    assert d.contributions.shape == (4, len(d.names), d.output.shape[-1])
    assert relative_error(d) < 1e-4, f"{name}: relative reconstruction error {relative_error(d):.2e}"
    ref = _reference(adapter, d.kind, x)  # a separate plain forward, without hooks
    assert _rel(d.reconstruction, ref) < 1e-4
    assert _rel(d.rest, ref) > 1e-3  # the components carry a real part of the output


@pytest.fixture(scope="module", params=sorted(SCALED))
def scaled_model(request, tmp_path_factory):
    return request.param, FACTORIES[request.param](tmp_path_factory.mktemp(request.param))


def test_the_layer_scales_are_in_the_view_and_needed(scaled_model) -> None:
    name, adapter = scaled_model
    view = adapter.residual_view()
    scales = [s for b in view.blocks for s in (b.attn_scale, b.mlp_scale) if s is not None]
    if name.startswith(("hf_", "hfcls_")) or name == "dinov2_reg":  # scale modules: the MLP branch is the scale's output
        assert all(b.mlp_scale is None for b in view.blocks)
        assert len(scales) == view.n_layers
    else:  # bare gamma_1 / gamma_2 parameters
        assert len(scales) == 2 * view.n_layers
    assert all(bool((s != s.flatten()[0]).any()) for s in scales), "the builders must randomise the scales"
    x = _x(adapter)
    n = view.n_layers
    good = decompose(adapter, x, layers=n, view=view)
    assert relative_error(good) < 1e-4
    for field in ("attn_scale", "mlp_scale"):  # each scale forgotten on its own breaks the reconstruction
        if all(getattr(b, field) is None for b in view.blocks):
            continue
        blind = dataclasses.replace(view, blocks=[dataclasses.replace(b, **{field: None}) for b in view.blocks])
        assert relative_error(decompose(adapter, x, layers=n, view=blind)) > 1e-2, (name, field)


def test_zeroing_a_heads_projection_zeroes_that_head_only(tmp_path) -> None:
    for name in sorted(FACTORIES):
        adapter = FACTORIES[name](tmp_path / name)  # fresh weights: this test edits them
        view = adapter.residual_view()
        last = view.blocks[-1]
        d_head = last.proj_weight.shape[1] // last.n_heads
        with torch.no_grad():
            last.proj_weight[:, :d_head] = 0.0  # the projection's own parameter: head 0's columns
        d = decompose(adapter, _x(adapter), layers=1, view=view)
        li = view.n_layers - 1
        h0, h1, mlp = (d.names.index(f"L{li}.{c}") for c in ("H0", "H1", "MLP"))
        assert d.contributions[:, h0].abs().max() == 0, name
        assert d.contributions[:, h1].abs().max() > 0, name
        assert d.contributions[:, mlp].abs().max() > 0, name
        assert relative_error(d) < 1e-4, name


@pytest.mark.parametrize(("opts", "match"), [
    ({"scale_attn_inner": True}, r"normalises the concatenated heads.*mixes the heads"),
    ({"use_post_norm": True}, r"EvaBlockPostNorm.*pre-norm"),
    ({"use_post_transformer_norm": True}, r"normalises twice"),
])
def test_eva_variants_that_are_not_a_sum_of_heads_are_refused(opts, match) -> None:
    adapter = _tiny_eva02(**opts)
    with pytest.raises(UsageError, match=match) as e:
        adapter.residual_view()
    assert "eva02_tiny_patch14_224" in str(e.value)  # the message names the model


@pytest.mark.parametrize(("opts", "match"), [
    ({"scale_attn_norm": True}, r"normalises the concatenated heads"),
])
def test_vit_variants_that_are_not_a_sum_of_heads_are_refused(opts, match) -> None:
    torch.manual_seed(0)
    adapter = load_model("timm:vit_tiny_patch16_224", class_names=CLASS_NAMES, **{**TINY_VIT, **opts})
    with pytest.raises(UsageError, match=match):
        adapter.residual_view()


@pytest.mark.parametrize("name", ["hfcls_dinov2", "hfcls_dinov2_reg", "timm_avg_token_norm"])
def test_a_norm_per_token_before_pooling_is_linearised_token_by_token(name, tmp_path: Path) -> None:
    """One linearised norm at the pooled vector's statistics would be wrong here (the mean of tokens each
    divided by its own std is not the mean divided by one std): the view says token_pool, and the
    per-token linearisation reconstructs the output (the reconstruction tests above run these models too)."""
    adapter = FACTORIES[name](tmp_path)
    view = adapter.residual_view()
    assert view.per_token and view.token_pool == ("pooled+mean" if name.startswith("hfcls_") else "mean")
    x = _x(adapter)
    assert relative_error(decompose(adapter, x, view=view)) < 1e-4
    if view.token_pool == "pooled+mean":  # the head reads 2C: CLS and the patch mean
        assert view.head_weight.shape[1] == 2 * view.blocks[0].proj_weight.shape[0]


def test_views_leave_no_hooks_behind(model) -> None:
    _, adapter = model
    decompose(adapter, _x(adapter, b=2))
    mods = adapter.model.modules()
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in mods)
