"""open_clip adapter: config-built tiny CLIP, checkpoints, eager MHA, text tower."""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from audit.errors import ModelLoadError
from audit.models import load_model
from audit.models.checkpoints import save_state_dict
from audit.models.open_clip import mha_eager_forward
from tests.helpers_models import TINY_CLIP_CFG, tiny_open_clip


@pytest.fixture(scope="module")
def clip():
    return tiny_open_clip()


def test_checkpoint_roundtrip_and_mismatch(tmp_path: Path, clip) -> None:
    path = save_state_dict(clip.model, tmp_path / "clip.safetensors")
    torch.manual_seed(7)
    b = load_model("open_clip:tiny-clip", checkpoint=str(path), model_cfg=TINY_CLIP_CFG)
    x = torch.randn(2, 3, 32, 32)
    tok = clip.tokenize(["a cat"])
    with torch.no_grad():
        torch.testing.assert_close(b.encode_image(x), clip.encode_image(x), atol=0, rtol=0)
        torch.testing.assert_close(b.encode_text(tok), clip.encode_text(tok), atol=0, rtol=0)
    other = copy.deepcopy(TINY_CLIP_CFG)
    other["embed_dim"] = 16
    with pytest.raises(ModelLoadError, match=r"text_projection: model expects \(64, 16\), checkpoint has \(64, 32\)"):
        load_model("open_clip:tiny-clip", checkpoint=str(path), model_cfg=other)


def test_hub_tag_without_network_points_to_checkpoint(monkeypatch) -> None:
    def refuse(*a, **k):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(ModelLoadError) as e:
        load_model("open_clip:ViT-B-32/laion2b_s34b_b79k")
    assert "no network access" in str(e.value) and "checkpoint=PATH" in str(e.value)


def test_spec_errors() -> None:
    with pytest.raises(ModelLoadError, match="no architecture 'NoSuchArch'"):
        load_model("open_clip:NoSuchArch")
    with pytest.raises(ModelLoadError, match="unknown options"):
        load_model("open_clip:tiny", model_cfg=TINY_CLIP_CFG, img_size=3)
    bad = copy.deepcopy(TINY_CLIP_CFG)
    bad["text_cfg"]["vocab_size"] = 100
    with pytest.raises(ModelLoadError, match="vocab_size=100"):
        load_model("open_clip:tiny", model_cfg=bad)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask_kind", ["none", "float", "bool", "per_head", "padding"])
def test_eager_mha_matches_torch(batch_first: bool, mask_kind: str) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    b, n = 3, 5
    x = torch.randn(b, n, 16) if batch_first else torch.randn(n, b, 16)
    kw: dict = {}
    if mask_kind == "float":
        kw["attn_mask"] = torch.full((n, n), float("-inf")).triu(1)
    elif mask_kind == "bool":
        kw["attn_mask"] = torch.ones(n, n, dtype=torch.bool).triu(1)
    elif mask_kind == "per_head":
        kw["attn_mask"] = torch.randn(b * 4, n, n)
    elif mask_kind == "padding":
        kpm = torch.zeros(b, n, dtype=torch.bool)
        kpm[:, -2:] = True
        kw["key_padding_mask"] = kpm
    ref_out, ref_w = mha(x, x, x, need_weights=True, average_attn_weights=False, **kw)
    rec: list[torch.Tensor] = []
    out, w = mha_eager_forward(mha)(x, x, x, need_weights=True, average_attn_weights=False,
                                    record=rec.append, **kw)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=0)
    assert rec[0] is w
    fast_out, _ = mha(x, x, x, need_weights=False, **kw)  # the fused path open_clip uses
    torch.testing.assert_close(out, fast_out, atol=1e-5, rtol=0)


def test_text_tower_details(clip) -> None:
    tok = clip.tokenize(["a photo of a cat", "dog"])
    assert tok.shape == (2, 16)
    # OpenAI BPE: <start_of_text>=49406 ... <end_of_text>=49407, the largest id, then padding 0
    assert tok[0, 0] == 49406 and clip.text_eot_index(tok).tolist() == [6, 2]
    assert tok[0, 6] == 49407
    assert clip.text_token_strings(tok)[1] == ["<start_of_text>", "dog", "<end_of_text>"]
    # the pooled token is the one encode_text reads: changing tokens after eot changes nothing
    tok2 = tok.clone()
    tok2[1, 5] = 320
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_text(tok2)[1], clip.encode_text(tok)[1], atol=1e-6, rtol=0)
    assert clip.logit_scale == pytest.approx(float(clip.model.logit_scale.detach().exp()))
    assert clip.gradcam_layer() is clip.vision_blocks()[-1].ln_1


class _WordTokenizer:
    """Word-level tokenizer with open_clip's call convention (ids: 0 pad, words, sot, eot)."""

    def __init__(self, context_length: int = 8) -> None:
        self.words = ["a", "photo", "of", "cat", "dog"]
        self.sot_token_id, self.eot_token_id = 6, 7
        self.pad_token_id = 0
        self.vocab_size = 8
        self.context_length = context_length

    def __call__(self, texts, context_length=None):
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.sot_token_id, *[self.words.index(w) + 1 for w in t.split()], self.eot_token_id]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids):
        return [self.words[i - 1] for i in ids if 1 <= i <= len(self.words)]


def test_custom_tokenizer_and_preprocess_options() -> None:
    cfg = copy.deepcopy(TINY_CLIP_CFG)
    cfg["text_cfg"].update(vocab_size=8, context_length=8)
    a = load_model("open_clip:word-clip", model_cfg=cfg, tokenizer=_WordTokenizer(),
                   preprocess={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"})
    assert a.preprocess.mean == (0.5, 0.5, 0.5) and a.preprocess.std == (0.25, 0.25, 0.25)
    assert a.preprocess.interpolation == "bilinear" and a.preprocess.size == (32, 32)
    tok = a.tokenize(["a photo of cat", "dog"])
    assert a.text_eot_index(tok).tolist() == [5, 2]  # eot (7) is the largest id: argmax pooling
    assert a.text_token_strings(tok)[0] == ["<start_of_text>", "a", "photo", "of", "cat", "<end_of_text>"]
    with torch.no_grad():
        assert a.encode_text(tok).shape == (2, 32)
    small = copy.deepcopy(cfg)
    small["text_cfg"]["vocab_size"] = 5
    with pytest.raises(ModelLoadError, match="tokenizer has 8 ids but the text tower only 5"):
        load_model("open_clip:word-clip", model_cfg=small, tokenizer=_WordTokenizer())
    with pytest.raises(ModelLoadError, match="cannot import tokenizer 'no_such_pkg:Tok'"):
        load_model("open_clip:word-clip", model_cfg=cfg, tokenizer="no_such_pkg:Tok")
