"""High-norm artefact tokens (audit.explain.artifacts): a planted token is found, random models are clean."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from audit.capture import capture
from audit.explain.artifacts import DEFAULT_K, DEFAULT_M, caveat_text, detect, find_artifacts, summarize
from audit.models import load_model
from tests.helpers_models import (
    CLASS_NAMES,
    TINY_VIT,
    tiny_timm_convnext,
    tiny_timm_vit,
    tiny_vit_avgpool,
    tiny_vit_reg,
)

PLANT = 5  # patch index 5 on the 4x4 grid -> (row 1, col 1)


def plant_artifact(adapter, images: torch.Tensor, *, ratio: float = 50.0, sharpen: float = 1.0) -> None:
    """Make patch ``PLANT``'s position embedding ``ratio`` x the median patch embedding norm, and make the
    last block's keys read that direction so that the CLS query attends to the token."""
    m = adapter.model
    c = m.pos_embed.shape[-1]
    with torch.no_grad():
        emb = m.patch_embed(images).norm(dim=-1).median()
        d = torch.randn(c, generator=torch.Generator().manual_seed(1))
        d = d - d.mean()
        d = d / d.norm()
        m.pos_embed[0, 1 + PLANT] = ratio * emb * d
        blk = m.blocks[-1]
        blk.attn.qkv.weight[c:2 * c] = sharpen * torch.outer(torch.ones(c), d)
        blk.attn.qkv.bias[:2 * c] = 0
        blk.attn.qkv.bias[:c] = 1.0


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_planted_token_is_detected_with_its_attention_share():
    a = tiny_timm_vit()
    x = _images()
    plant_artifact(a, x)
    rep = find_artifacts(a, x)
    assert rep.applicable
    with torch.no_grad(), capture(a) as cap:
        a.encode_image(x)
    direct = cap.attentions[-1].mean(dim=1)[:, 0, 1 + PLANT]  # CLS row, mean over heads
    for b, img in enumerate(rep.images):
        assert img.tokens == [(1, 1)]
        assert img.norm_ratio[0] > 10
        assert img.attention_share == pytest.approx(float(direct[b]), abs=1e-5)
        assert img.attention_share > 0.3  # the CLS attends to it
        assert img.token_share == pytest.approx(1 / 17)
        assert img.register_share is None
    s = summarize(rep)
    assert s["n"] == 4 and s["n_affected"] == 4 and s["share_affected"] == 1.0
    assert s["share_affected_ci"][0] > 0.4
    assert s["mean_attention_share"] > s["mean_token_share"]
    text = caveat_text(rep.images[0])
    assert text.startswith("attention map dominated by 1 high-norm artefact token (")
    assert "of the CLS attention); read with care" in text


def test_plain_random_vit_has_no_artifacts():
    rep = find_artifacts(tiny_timm_vit(), _images(8))
    assert rep.applicable and not any(i.affected for i in rep.images)
    s = summarize(rep)
    assert s["n_affected"] == 0 and math.isnan(s["mean_attention_share"])


def test_rule_needs_both_tail_and_ratio():
    base = torch.ones(1, 16) + 0.01 * torch.arange(16.0)
    spike = base.clone()
    spike[0, 3] = 3.0  # far in the MAD tail but only ~3x the median (< m = 4)
    assert not detect(spike).any()
    spike[0, 3] = 20.0
    assert detect(spike)[0].nonzero().flatten().tolist() == [3]
    wide = torch.linspace(1, 30, 16)[None]  # wide spread: 30 > 4 x median but within median + 6 MAD
    assert not detect(wide).any()
    with pytest.raises(ValueError, match="m >= 1"):
        detect(base, m=0.5)


def test_null_false_detection_rate_is_small():
    """100 random-weight tiny ViTs x 1 random image each, nothing planted: the rule flags few."""
    hits, n = 0, 100
    for seed in range(n):
        torch.manual_seed(1000 + seed)
        a = load_model("timm:vit_tiny_patch16_224", class_names=CLASS_NAMES, **TINY_VIT)
        rep = find_artifacts(a, _images(1, seed))
        hits += rep.images[0].affected
    rate = hits / n
    print(f"null false detection rate: {hits}/{n} (k={DEFAULT_K}, m={DEFAULT_M})")
    assert rate <= 0.05


def test_register_model_reports_register_share():
    a = tiny_vit_reg()
    x = _images(2)
    rep = find_artifacts(a, x)
    lay = a.token_layout((32, 32))
    regs = [i for i, k in enumerate(lay.prefix_kinds) if k == "reg"]
    with torch.no_grad(), capture(a) as cap:
        a.encode_image(x)
    direct = cap.attentions[-1].mean(dim=1)[:, lay.pooled][:, regs].sum(dim=-1)
    for b, img in enumerate(rep.images):
        assert img.register_share == pytest.approx(float(direct[b]), abs=1e-5)
    assert summarize(rep)["mean_register_share"] == pytest.approx(float(direct.mean()), abs=1e-5)


def test_mean_pooled_model_uses_mean_patch_row():
    a = tiny_vit_avgpool()
    rep = find_artifacts(a, _images(2))
    assert rep.applicable and len(rep.images) == 2 and rep.images[0].register_share is None


def test_model_without_attention_maps_is_not_applicable(tmp_path: Path):
    rep = find_artifacts(tiny_timm_convnext(tmp_path), _images(1))
    assert not rep.applicable and rep.reason.startswith("not applicable")
    assert summarize(rep) == {"applicable": False, "reason": rep.reason, "n": 0}


def test_bad_layer_is_refused():
    with pytest.raises(ValueError, match="outside the 2 vision blocks"):
        find_artifacts(tiny_timm_vit(), _images(1), layer=5)


def test_explain_fills_artifacts_for_attention_methods_only():
    from audit.explain import explain

    a = tiny_timm_vit()
    x = _images(2)
    plant_artifact(a, x)
    e = explain(a, x, method="rollout", artifacts=True)
    assert [i.tokens for i in e.artifacts] == [[(1, 1)], [(1, 1)]]
    assert e.summary()["artifacts"][0]["tokens"] == [[1, 1]]
    assert explain(a, x, method="rollout").artifacts is None  # not asked
    assert explain(a, x, method="gradcam", artifacts=True).artifacts is None  # not an attention method


def test_outline_cells_draws_the_cell_border_only():
    import numpy as np

    from audit.viz.maps import ARTIFACT_COLOUR, artifact_legend, outline_cells

    rgb = np.zeros((40, 40, 3), np.uint8)
    out = outline_cells(rgb, [(1, 2)], (4, 4), height=40, width=1)
    red = (out == ARTIFACT_COLOUR).all(axis=-1)
    assert red[10, 20:30].all() and red[19, 20:30].all() and red[10:20, 20].all() and red[10:20, 29].all()
    assert not red[11:19, 21:29].any() and red.sum() == 36 and not rgb.any()
    with pytest.raises(ValueError, match="outside the 4x4"):
        outline_cells(rgb, [(4, 0)], (4, 4))
    assert artifact_legend(3, 0.61) == "□ high-norm artefact token (n = 3, 61% of the CLS attention)"


@pytest.mark.parametrize("kind", ["zeroshot", "hf_vit", "dinov2_reg"])
def test_other_families_apply(kind: str, tmp_path: Path):
    from tests.helpers_models import tiny_hf_vit, tiny_vit_variant, tiny_zeroshot

    a = {"zeroshot": tiny_zeroshot, "hf_vit": lambda: tiny_hf_vit(tmp_path),
         "dinov2_reg": lambda: tiny_vit_variant("dinov2_reg", tmp_path)}[kind]()
    rep = find_artifacts(a, torch.randn(2, 3, *a.preprocess.size))
    assert rep.applicable and len(rep.images) == 2 and not any(i.affected for i in rep.images)
    assert (rep.images[0].register_share is not None) == (kind == "dinov2_reg")
