"""Tiny real models of every supported family, for tests (CPU, < 1 s each after imports).

Other test modules import these factories::

    from tests.helpers_models import tiny_timm_vit, all_adapter_factories

Every factory returns a loaded :class:`audit.models.Adapter` in eval mode, built with a
fixed seed so repeated calls give identical weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from audit.models import Adapter, load_model

TINY_VIT: dict[str, Any] = {
    "pretrained": False, "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 3
}
TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CLASS_NAMES = ["cat", "dog", "bird"]


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def tiny_timm_vit(**kw: Any) -> Adapter:
    """timm ViT, 32x32 input, 8x8 patches (4x4 grid), 2 blocks, 2 heads, CLS-pooled, 3 classes.

    Keyword arguments override the timm options (e.g. ``dynamic_img_size=True``).
    """
    _seeded()
    opts = {**TINY_VIT, **kw}
    return load_model("timm:vit_tiny_patch16_224", class_names=opts.pop("class_names", CLASS_NAMES), **opts)


def tiny_deit_distilled() -> Adapter:
    """Distilled DeiT (CLS + distillation prefix tokens; logits = mean of both heads)."""
    _seeded()
    return load_model("timm:deit_tiny_distilled_patch16_224", class_names=CLASS_NAMES, **TINY_VIT)


def tiny_vit_reg() -> Adapter:
    """ViT with a CLS token and 4 register tokens."""
    _seeded()
    return load_model("timm:vit_tiny_patch16_224", class_names=CLASS_NAMES, reg_tokens=4, no_embed_class=True,
                      **TINY_VIT)


def tiny_vit_avgpool() -> Adapter:
    """Mean-pooled ViT without a class token (TokenLayout.pooled is None)."""
    _seeded()
    return load_model("timm:vit_tiny_patch16_224", class_names=CLASS_NAMES, class_token=False,
                      global_pool="avg", **TINY_VIT)


def tiny_open_clip() -> Adapter:
    """open_clip CLIP: ViT image tower (32x32, patch 8, width 64, 2 layers), text tower (2 layers, context 16)."""
    _seeded()
    return load_model("open_clip:tiny-clip", model_cfg=TINY_CLIP_CFG)


def tiny_zeroshot() -> Adapter:
    """ZeroShotHead over :func:`tiny_open_clip` with 3 prompt classes and 2 templates."""
    from audit.models import ZeroShotHead

    clip = tiny_open_clip()
    return ZeroShotHead(clip, {"cat": ["cat", "kitten"], "dog": ["dog"], "bird": ["bird"]},
                        templates=["a photo of a {}.", "{}"])


def save_tiny_hf_vit(path: Path) -> Path:
    """Write a tiny transformers ViTForImageClassification (and its image processor) to ``path``."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    _quiet_transformers()
    _seeded()
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, num_labels=3, id2label=dict(enumerate(CLASS_NAMES)),
                    label2id={n: i for i, n in enumerate(CLASS_NAMES)})
    ViTForImageClassification(cfg).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, resample=3).save_pretrained(path)
    return Path(path)


def tiny_hf_vit(tmp_path: Path) -> Adapter:
    """transformers ViT saved under ``tmp_path`` and reloaded via ``hf:DIR``."""
    d = Path(tmp_path) / "hf_vit"
    if not (d / "config.json").exists():
        save_tiny_hf_vit(d)
    return load_model(f"hf:{d}")


def _tiny_bpe_files(path: Path) -> tuple[Path, Path]:
    """A minimal CLIP BPE vocabulary: all byte symbols, their word-final forms, a few merges."""
    from open_clip.tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges = [("o", "g</w>"), ("d", "og</w>"), ("c", "a"), ("ca", "t</w>")]
    merged = ["og</w>", "dog</w>", "ca", "cat</w>"]
    vocab += merged + ["<|startoftext|>", "<|endoftext|>"]
    vocab_file, merges_file = path / "vocab.json", path / "merges.txt"
    vocab_file.write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return vocab_file, merges_file


def save_tiny_hf_clip(path: Path) -> Path:
    """Write a tiny transformers CLIPModel with a small BPE tokenizer to ``path``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    _quiet_transformers()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = _tiny_bpe_files(path)
    tok = CLIPTokenizer(str(vocab_file), str(merges_file))
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    bos = tok.convert_tokens_to_ids("<|startoftext|>")
    _seeded()
    cfg = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "max_position_embeddings": 16, "eos_token_id": eos, "bos_token_id": bos,
                         "pad_token_id": eos},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2},
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def tiny_hf_clip(tmp_path: Path) -> Adapter:
    """transformers CLIPModel saved under ``tmp_path`` and reloaded via ``hf:DIR``."""
    d = Path(tmp_path) / "hf_clip"
    if not (d / "config.json").exists():
        save_tiny_hf_clip(d)
    return load_model(f"hf:{d}")


def all_adapter_factories() -> dict[str, Callable[[Path], Adapter]]:
    """Factory per adapter kind, each called with a temporary directory (used by HF ones)."""
    return {
        "timm_vit": lambda tmp: tiny_timm_vit(),
        "timm_vit_dynamic": lambda tmp: tiny_timm_vit(dynamic_img_size=True),
        "deit_distilled": lambda tmp: tiny_deit_distilled(),
        "vit_reg": lambda tmp: tiny_vit_reg(),
        "vit_avgpool": lambda tmp: tiny_vit_avgpool(),
        "open_clip": lambda tmp: tiny_open_clip(),
        "hf_vit": tiny_hf_vit,
        "hf_clip": tiny_hf_clip,
        "zeroshot_open_clip": lambda tmp: tiny_zeroshot(),
    }
