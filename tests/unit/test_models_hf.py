"""transformers adapter: local directories, checkpoints, preprocessing, CLIP text side."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from audit.errors import ModelLoadError
from audit.models import load_model
from audit.models.checkpoints import save_state_dict
from tests.helpers_models import tiny_hf_clip, tiny_hf_vit


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf")


def test_vit_matches_transformers_and_reads_processor(hf_dir: Path) -> None:
    from transformers import ViTForImageClassification

    a = tiny_hf_vit(hf_dir)
    assert a.model.config._attn_implementation == "eager"
    ref = ViTForImageClassification.from_pretrained(hf_dir / "hf_vit", local_files_only=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a.logits(x), ref(pixel_values=x).logits, atol=1e-5, rtol=0)
    assert a.class_names == ["cat", "dog", "bird"]
    # preprocessor_config.json: 32x32 squash resize, resample=3 (bicubic), mean/std 0.5
    assert a.preprocess.size == (32, 32) and a.preprocess.resize_mode == "squash"
    assert a.preprocess.interpolation == "bicubic" and a.preprocess.mean == (0.5, 0.5, 0.5)
    assert a.gradcam_layer() is a.vision_blocks()[-1].layernorm_before


def test_vit_checkpoint_file_and_head_mismatch(hf_dir: Path, tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    a = tiny_hf_vit(hf_dir)
    path = save_state_dict(a.model, tmp_path / "vit.safetensors")
    b = load_model(f"hf:{hf_dir / 'hf_vit'}", checkpoint=str(path))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b.logits(x), a.logits(x), atol=0, rtol=0)
    cfg = ViTConfig.from_pretrained(hf_dir / "hf_vit")
    cfg.num_labels = 5
    other = tmp_path / "five"
    ViTForImageClassification(cfg).save_pretrained(other)
    with pytest.raises(ModelLoadError, match=r"classifier.weight: model expects \(5, 32\), checkpoint has \(3, 32\)"):
        load_model(f"hf:{other}", checkpoint=str(path))


def test_clip_matches_transformers(hf_dir: Path) -> None:
    a = tiny_hf_clip(hf_dir)
    m = a.model
    x = torch.randn(2, 3, 32, 32)
    tok = a.tokenize(["a cat", "dog"])
    with torch.no_grad():
        out = m(input_ids=tok, pixel_values=x)
        torch.testing.assert_close(a.encode_image(x), out.image_embeds * a.encode_image(x).norm(dim=-1, keepdim=True),
                                   atol=1e-5, rtol=0)
        img = torch.nn.functional.normalize(a.encode_image(x), dim=-1)
        txt = torch.nn.functional.normalize(a.encode_text(tok), dim=-1)
        torch.testing.assert_close(a.logit_scale * img @ txt.T, out.logits_per_image, atol=1e-4, rtol=0)
    # eos (not argmax) pooling: the tokenizer pads with <|endoftext|>, the first one is pooled
    assert a.text_eot_index(tok).tolist() == [3, 2]
    assert a.text_token_strings(tok) == [["<|startoftext|>", "a", "cat", "<|endoftext|>"],
                                         ["<|startoftext|>", "dog", "<|endoftext|>"]]
    assert a.preprocess.resize_mode == "shortest" and a.preprocess.crop_pct == 1.0


def test_missing_dir_and_hub_without_network(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a directory written by save_pretrained"):
        load_model(f"hf:{tmp_path / 'nothing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no readable config.json"):
        load_model(f"hf:{tmp_path / 'empty'}")
    # HF_HUB_OFFLINE=1 (tests/conftest.py): what a machine without network sees
    with pytest.raises(ModelLoadError) as e:
        load_model("hf:google/vit-base-patch16-224")
    assert "no network access" in str(e.value) and "--checkpoint PATH" in str(e.value)
