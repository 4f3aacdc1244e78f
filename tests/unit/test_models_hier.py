"""Swin / ConvNeXt (timm, HF) and HF DINOv2: Grad-CAM grids, refusals, strict loading, preprocessing,
`vision-audit models`, and DINOv2 attention against an explicit re-computation from its weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from audit.errors import CaptureError, ModelLoadError, UsageError
from audit.explain import ClassTarget, explain
from audit.models import load_model
from audit.models.checkpoints import save_state_dict
from tests.helpers_models import (
    CLASS_NAMES,
    TINY_SWIN,
    save_tiny_hf_hier,
    tiny_hf_convnext,
    tiny_hf_dinov2,
    tiny_hf_hier,
    tiny_hf_swin,
    tiny_timm_convnext,
    tiny_timm_swin,
)
from tests.reference_maps import reference_rollout


def _x(b: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _hand_gradcam(adapter, layer, x: torch.Tensor, cls: list[int], to_bchw) -> torch.Tensor:
    """Grad-CAM written out: hook ``layer``, gradient of the class logits, ``to_bchw`` as given here."""
    store = {}
    h = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        logits = adapter.model(x) if not hasattr(adapter.model, "config") else adapter.model(pixel_values=x).logits
        y = logits[torch.arange(len(cls)), torch.tensor(cls)].sum()
        (g,) = torch.autograd.grad(y, store["a"])
    finally:
        h.remove()
    a, g = to_bchw(store["a"].detach()), to_bchw(g)
    return (g.mean(dim=(2, 3), keepdim=True) * a).sum(1).clamp_min(0)


# -- Grad-CAM grids -------------------------------------------------------------------------------
def test_swin_grid_is_channels_last_permuted(tmp_path: Path) -> None:
    a = tiny_timm_swin(tmp_path)
    lay = a.token_layout()
    out = torch.arange(2 * 4 * 4 * 5, dtype=torch.float32).reshape(2, 4, 4, 5)  # (B, H, W, C)
    grid = a.gradcam_grid(out, lay)
    assert grid.shape == (2, 5, 4, 4)
    assert grid[1, 3, 2, 0] == out[1, 2, 0, 3]
    torch.testing.assert_close(a.gradcam_from_grid(grid, out, lay), out)
    with pytest.raises(CaptureError, match=r"expected \(B, H, W, C\) with H, W = \(4, 4\)"):
        a.gradcam_grid(out.permute(0, 3, 1, 2), lay)  # a (B, C, H, W) tensor is not taken for Swin's


def test_hf_swin_grid_is_row_major_as_transformers_reshapes(tmp_path: Path) -> None:
    a = tiny_hf_swin(tmp_path)
    lay = a.token_layout()
    with torch.no_grad():
        out = a.base(pixel_values=_x(), output_hidden_states=True)
    seq, reshaped = out.hidden_states[-1], out.reshaped_hidden_states[-1]  # (B, L, C), (B, C, H, W)
    torch.testing.assert_close(a.gradcam_grid(seq, lay), reshaped)
    torch.testing.assert_close(a.gradcam_from_grid(reshaped, seq, lay), seq)


@pytest.mark.parametrize("which", ["timm_swin", "timm_convnext", "hf_swin", "hf_convnext"])
def test_gradcam_equals_hand_computation_and_captum(which: str, tmp_path: Path) -> None:
    factory = {"timm_swin": tiny_timm_swin, "timm_convnext": tiny_timm_convnext, "hf_swin": tiny_hf_swin,
               "hf_convnext": tiny_hf_convnext}[which]
    a = factory(tmp_path)
    x, cls = _x(3), [0, 2, 1]
    convert = {
        "timm_swin": lambda t: t.permute(0, 3, 1, 2),
        "timm_convnext": lambda t: t,
        "hf_swin": lambda t: t.reshape(t.shape[0], 4, 4, t.shape[-1]).permute(0, 3, 1, 2),
        "hf_convnext": lambda t: t,
    }[which]
    ref = _hand_gradcam(a, a.gradcam_layer(), x, cls, convert)
    ours = explain(a, x, method="gradcam", target=ClassTarget(cls)).grid_maps
    cap = explain(a, x, method="layer_gradcam", target=ClassTarget(cls)).grid_maps
    assert ours.shape == (3, 4, 4) and ref.abs().sum() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(cap, ref, rtol=1e-4, atol=1e-7)


def test_occlusion_masks_are_the_models_grid(tmp_path: Path) -> None:
    """Occlusion of one grid cell (8x8 pixels of a stride-8 ConvNeXt) = the score change when that cell
    alone is replaced by the baseline, computed here."""
    a = tiny_timm_convnext(tmp_path)
    x = _x(1)
    e = explain(a, x, method="occlusion", target=ClassTarget([1]), baseline="mean")
    with torch.no_grad():
        base = a.logits(x)[0, 1]
        y = x.clone()
        y[:, :, 8:16, 16:24] = 0.0  # "mean" baseline: zeros after normalisation; grid cell (1, 2)
        drop = base - a.logits(y)[0, 1]
    assert e.grid_maps.shape == (1, 4, 4)
    torch.testing.assert_close(e.grid_maps[0, 1, 2], drop, rtol=1e-4, atol=1e-6)


# -- attention capability ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["rollout", "gae", "attention"])
def test_attention_methods_refused_with_why_and_what_applies(method: str, tmp_path: Path) -> None:
    a = tiny_timm_swin(tmp_path)
    with pytest.raises(UsageError) as err:
        explain(a, _x(), method=method)
    msg = str(err.value)
    assert f"method {method!r} does not apply" in msg and "shifted local windows" in msg
    assert "use gradcam, layer_gradcam, ig" in msg and "occlusion" in msg
    c = tiny_timm_convnext(tmp_path)
    with pytest.raises(UsageError, match="convolutional network"):
        explain(c, _x(), method=method)


def test_vit_adapters_keep_attention(tmp_path: Path) -> None:
    from tests.helpers_models import tiny_timm_vit

    assert tiny_timm_vit().attention_maps and tiny_hf_dinov2(tmp_path).attention_maps


def test_run_config_explicit_attention_method_is_a_usage_error_default_drops_it(tmp_path: Path) -> None:
    from audit.analyses import explain_methods
    from audit.config import parse_config

    a = tiny_timm_swin(tmp_path)
    (tmp_path / "m.csv").write_text("path,label\n")
    base = {"model": {"spec": "timm:swin_tiny_patch4_window7_224"}, "data": {"manifest": str(tmp_path / "m.csv")},
            "run": {"output": str(tmp_path / "r")}}
    default = parse_config(base)
    methods, left_out = explain_methods(default, a)
    assert methods == [m for m in default.explain.methods if m not in ("rollout", "gae")] and "gradcam" in methods
    assert len(left_out) == 2 and all("shifted local windows" in r for r in left_out)
    explicit = parse_config({**base, "explain": {"methods": ["gradcam", "rollout"]}})
    with pytest.raises(UsageError, match=r"explain.methods: method 'rollout' does not apply"):
        explain_methods(explicit, a)
    vit_methods, none = explain_methods(explicit, tiny_hf_dinov2(tmp_path))
    assert vit_methods == ["gradcam", "rollout"] and none == []


def test_cli_explain_refuses_rollout_on_swin_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from audit.cli import main

    d = tmp_path / "swin"
    save_tiny_hf_hier("swin", d)
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(img)
    assert main(["explain", str(img), "--model", f"hf:{d}", "--method", "rollout", "--out",
                 str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "shifted local windows" in err and "use gradcam" in err


def test_models_command_shows_methods_per_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    from audit.cli import main

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    swin = next(ln for ln in lines if "timm Swin (v1/v2):" in ln)
    vit = next(ln for ln in lines if "timm ViT / DeiT / register ViTs / EVA-02" in ln)
    hf_dino = next(ln for ln in lines if "hf DINOv2" in ln)
    hf_conv = next(ln for ln in lines if "hf ConvNeXt:" in ln)
    def methods(ln: str) -> set[str]:
        return set(ln.split(":", 1)[1].split("(")[0].replace(" ", "").split(","))

    for ln in (swin, hf_conv):
        assert {"gradcam", "layer_gradcam", "ig", "smoothgrad", "occlusion"} <= methods(ln)
        assert not {"rollout", "gae", "attention"} & methods(ln) and "no attention maps" in ln
    for ln in (vit, hf_dino):
        assert {"rollout", "gae", "attention", "gradcam"} <= methods(ln) and "no attention maps" not in ln


# -- loading --------------------------------------------------------------------------------------
def test_timm_dispatch_by_built_class(tmp_path: Path) -> None:
    from audit.models.timm_hier import TimmConvNeXtAdapter, TimmSwinAdapter

    s, c = tiny_timm_swin(tmp_path), tiny_timm_convnext(tmp_path)
    assert type(s) is TimmSwinAdapter and type(c) is TimmConvNeXtAdapter
    assert s.token_layout().to_dict() == {"prefix_kinds": [], "pooled": None, "grid": [4, 4],
                                          "prefix_after_patches": False}
    assert c.token_layout((32, 48)).grid == (4, 6)
    with pytest.raises(UsageError, match="input size"):
        s.token_layout((32, 48))
    assert s.preprocess.sources["mean"] == "checkpoint" and not s.preprocess.warnings


def test_timm_checkpoint_head_mismatch_names_num_classes(tmp_path: Path) -> None:
    tiny_timm_swin(tmp_path)  # writes swin_tiny_patch4_window7_224.safetensors with a 3-class head
    ckpt = tmp_path / "swin_tiny_patch4_window7_224.safetensors"
    opts = {**TINY_SWIN, "num_classes": 5}
    with pytest.raises(ModelLoadError, match="num_classes=3"):
        load_model("timm:swin_tiny_patch4_window7_224", checkpoint=ckpt, **opts)


def test_timm_convnext_without_record_warns_and_uses_timm_default(tmp_path: Path) -> None:
    from tests.helpers_models import TINY_CONVNEXT

    torch.manual_seed(0)
    m = load_model("timm:convnext_atto", pretrained=False, **TINY_CONVNEXT)
    p = save_state_dict(m.model, tmp_path / "c.safetensors")
    a = load_model("timm:convnext_atto", checkpoint=p, **TINY_CONVNEXT)
    assert a.preprocess.sources["mean"] == "timm_default" and a.preprocess.size == (224, 224)
    assert a.preprocess.warnings and "timm's default for convnext_atto" in a.preprocess.warnings[0]
    assert a.token_layout().grid == (28, 28)  # 224 / total stride 8


def test_hf_checkpoint_head_mismatch_is_an_error(tmp_path: Path) -> None:
    import transformers as tf

    d = tmp_path / "hf_convnext"
    save_tiny_hf_hier("convnext", d)
    cfg = tf.ConvNextConfig.from_pretrained(d)
    cfg.num_labels = 5
    other = tf.ConvNextForImageClassification(cfg)
    p = save_state_dict(other, tmp_path / "five.safetensors")
    with pytest.raises(ModelLoadError, match="head has 5 classes.*num_labels=5"):
        load_model(f"hf:{d}", checkpoint=p)


def test_hf_preprocessing_from_preprocessor_config_or_a_named_guess(tmp_path: Path) -> None:
    a = tiny_hf_convnext(tmp_path)
    assert a.preprocess.sources["mean"] == "hf_config" and not a.preprocess.warnings
    assert a.preprocess.mean == pytest.approx((0.485, 0.456, 0.406)) and a.preprocess.interpolation == "bicubic"
    d = tmp_path / "bare"
    save_tiny_hf_hier("swin", d)
    (d / "preprocessor_config.json").unlink()
    b = load_model(f"hf:{d}")
    assert b.preprocess.size == (32, 32) and b.preprocess.warnings
    assert "no preprocessor_config.json" in b.preprocess.warnings[0]


def test_hf_dinov2_feature_model_encodes_but_asks_for_a_probe(tmp_path: Path) -> None:
    a = tiny_hf_hier("dinov2", tmp_path, head=False)
    assert a.class_names is None and a.token_layout().prefix_kinds == ("cls",)
    with torch.no_grad():
        emb = a.encode_image(_x())
    assert emb.shape == (2, 32)
    with pytest.raises(UsageError, match=r"feature model .*probe head \(model.probe\)"):
        a.logits(_x())


# -- DINOv2 attention against its weights -----------------------------------------------------------
def _explicit_dinov2_attention(a, x: torch.Tensor) -> list[torch.Tensor]:
    """softmax(q k^T / sqrt(d)) per layer, q and k from the layer's own projections of its norm1 output."""
    seen: list[torch.Tensor] = []
    handles = [blk.norm1.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
               for blk in a.vision_blocks()]
    try:
        with torch.no_grad():
            a.encode_image(x)
    finally:
        for h in handles:
            h.remove()
    out = []
    for blk, h in zip(a.vision_blocks(), seen):
        att = blk.attention
        nh = a.model.config.num_attention_heads
        b, n, c = h.shape
        q = att.q_proj(h).reshape(b, n, nh, c // nh).transpose(1, 2)
        k = att.k_proj(h).reshape(b, n, nh, c // nh).transpose(1, 2)
        out.append(torch.softmax(q @ k.transpose(-1, -2) / (c // nh) ** 0.5, dim=-1))
    return out


@pytest.mark.parametrize("kind,n_prefix", [("dinov2", 1), ("dinov2_reg", 3)])
def test_hf_dinov2_rollout_and_capture_equal_explicit_attention(kind: str, n_prefix: int, tmp_path: Path) -> None:
    from audit.capture import capture

    a = tiny_hf_hier(kind, tmp_path)
    if not hasattr(a.vision_blocks()[0].attention, "q_proj"):
        pytest.skip("transformers v4 names the projections query/key (the reference reads v5's q_proj/k_proj)")
    x = _x(3, seed=4)
    ref = _explicit_dinov2_attention(a, x)
    assert ref[0].shape[-1] == n_prefix + 16
    with torch.no_grad(), capture(a) as cap:
        a.encode_image(x)
    for got, want in zip(cap.attentions, ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    ours = explain(a, x, method="rollout").grid_maps
    want = reference_rollout(ref, pooled=0, n_prefix=n_prefix).reshape(3, 4, 4).float()
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-6)
    g = explain(a, x, method="gae", target=ClassTarget([0, 1, 2])).grid_maps
    assert g.shape == (3, 4, 4) and torch.isfinite(g).all() and g.abs().sum() > 0


def test_hf_dinov2_classifier_embedding_is_what_its_head_reads(tmp_path: Path) -> None:
    a = tiny_hf_dinov2(tmp_path)
    assert a.class_names == CLASS_NAMES
    x = _x()
    with torch.no_grad():
        emb = a.encode_image(x)
        torch.testing.assert_close(a.model.classifier(emb), a.logits(x), rtol=1e-5, atol=1e-6)
    assert emb.shape == (2, 64)  # [CLS, mean of patches]


def test_timm_swin_v2_is_dispatched_and_explained() -> None:
    from audit.models.timm_hier import TimmSwinAdapter

    torch.manual_seed(0)
    a = load_model("timm:swinv2_tiny_window8_256", pretrained=False, img_size=32, embed_dim=16, depths=(1, 1),
                   num_heads=(1, 2), window_size=4, num_classes=3)
    assert type(a) is TimmSwinAdapter and a.token_layout().grid == (4, 4) and not a.attention_maps
    x, cls = _x(2), [1, 2]
    ref = _hand_gradcam(a, a.gradcam_layer(), x, cls, lambda t: t.permute(0, 3, 1, 2))
    torch.testing.assert_close(explain(a, x, method="gradcam", target=ClassTarget(cls)).grid_maps, ref,
                               rtol=1e-4, atol=1e-7)
