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


#: EVA-02 / BEiT / DINOv2-with-registers at the tiny ViT's size (32x32, 8x8 patches, 2 blocks, 2 heads)
TINY_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "eva02": ("eva02_tiny_patch14_224", {"dynamic_img_size": True}),  # rope + SwiGLU, mean-pooled (fc_norm)
    "beit": ("beit_base_patch16_224", {}),  # relative position bias, layer scale, mean-pooled (fc_norm)
    "dinov2_reg": ("vit_small_patch14_reg4_dinov2", {}),  # CLS + 4 registers, layer scale, CLS-pooled
}


def _randomise_zero_inits(model: torch.nn.Module, seed: int) -> None:
    """Give the parameters timm initialises to constants (q/v biases, BEiT's relative position bias table,
    layer scales, norms) random values, so that the tests see each of them act."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() > 1 and bool((p == p.flatten()[0]).all()):
                if "gamma" in name or ("norm" in name and name.endswith("weight")):
                    p.copy_(0.5 + torch.rand(p.shape, generator=g))  # layer scale / norm gain in [0.5, 1.5)
                else:
                    std = 1.0 if "relative_position_bias_table" in name else 0.1
                    p.copy_(std * torch.randn(p.shape, generator=g))


def tiny_vit_variant(kind: str, tmp_path: Path) -> Adapter:
    """``kind`` of :data:`TINY_VARIANTS`: built with random weights (constants randomised), saved to
    ``tmp_path/<kind>.safetensors`` with its preprocessing and reloaded via ``load_model(checkpoint=...)``."""
    from audit.models.checkpoints import save_state_dict

    name, extra = TINY_VARIANTS[kind]
    opts = {**TINY_VIT, **extra}
    path = Path(tmp_path) / f"{kind}.safetensors"
    if not path.exists():
        _seeded()
        built = load_model(f"timm:{name}", class_names=CLASS_NAMES, **opts)
        _randomise_zero_inits(built.model, seed=1)
        save_state_dict(built.model, path, preprocess=built.preprocess)
    opts.pop("pretrained")
    return load_model(f"timm:{name}", checkpoint=path, class_names=CLASS_NAMES, **opts)


#: tiny hierarchical models: 32x32 input, 4x4 final grid (total stride 8), 2 blocks, 3 classes
TINY_SWIN: dict[str, Any] = {"img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2),
                             "window_size": 4, "num_classes": 3}
TINY_CONVNEXT: dict[str, Any] = {"depths": (1, 1, 0, 0), "dims": (8, 8, 16, 16), "patch_size": 1, "num_classes": 3}
TINY_PP: dict[str, Any] = {"input_size": (32, 32), "crop_pct": 1.0, "interpolation": "bicubic", "resize_mode": "shortest",
                           "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _tiny_timm_saved(name: str, opts: dict[str, Any], tmp_path: Path) -> Adapter:
    from audit.models.checkpoints import save_state_dict

    path = Path(tmp_path) / f"{name}.safetensors"
    if not path.exists():
        _seeded()
        built = load_model(f"timm:{name}", pretrained=False, class_names=CLASS_NAMES, **opts)
        save_state_dict(built.model, path, preprocess=TINY_PP)
    return load_model(f"timm:{name}", checkpoint=path, class_names=CLASS_NAMES, **opts)


def tiny_timm_swin(tmp_path: Path) -> Adapter:
    """timm Swin (swin_tiny_patch4_window7_224 shrunk: 32x32, patch 4, window 4, depths (1, 1)), saved and
    reloaded from ``tmp_path/swin_tiny_patch4_window7_224.safetensors`` (preprocessing recorded)."""
    return _tiny_timm_saved("swin_tiny_patch4_window7_224", TINY_SWIN, tmp_path)


def tiny_timm_convnext(tmp_path: Path) -> Adapter:
    """timm convnext_atto shrunk (stem stride 1, dims (8, 8, 16, 16), depths (1, 1, 0, 0): stride 8), saved
    and reloaded from ``tmp_path/convnext_atto.safetensors``."""
    return _tiny_timm_saved("convnext_atto", TINY_CONVNEXT, tmp_path)


def _save_hf_image_model(model: Any, path: Path) -> Path:
    from transformers import ViTImageProcessor

    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, resample=3, image_mean=list(TINY_PP["mean"]),
                      image_std=list(TINY_PP["std"])).save_pretrained(path)
    return Path(path)


def save_tiny_hf_hier(kind: str, path: Path, *, head: bool = True) -> Path:
    """Write a tiny transformers ``kind`` model (swin / convnext / dinov2 / dinov2_reg) to ``path``:
    ForImageClassification with 3 labels, or the bare AutoModel with ``head=False``."""
    import transformers as tf

    _quiet_transformers()
    _seeded()
    labels = {"num_labels": 3, "id2label": dict(enumerate(CLASS_NAMES)),
              "label2id": {n: i for i, n in enumerate(CLASS_NAMES)}}
    vit = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "intermediate_size": 64}
    if kind == "swin":
        cfg, cls = tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                 window_size=4, **labels), "Swin"
    elif kind == "convnext":
        cfg, cls = tf.ConvNextConfig(image_size=32, patch_size=4, num_channels=3, hidden_sizes=[16, 32],
                                     depths=[1, 1], num_stages=2, **labels), "ConvNext"
    elif kind == "dinov2":
        cfg, cls = tf.Dinov2Config(**vit, **labels), "Dinov2"
    else:
        cfg, cls = tf.Dinov2WithRegistersConfig(**vit, num_register_tokens=2, **labels), "Dinov2WithRegisters"
    model = getattr(tf, f"{cls}ForImageClassification" if head else f"{cls}Model")(cfg)
    if kind.startswith("dinov2"):  # layer scales start at a constant: give them random values so they act
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lambda1" in name or "layer_scale" in name:
                    p.copy_(0.5 + torch.rand(p.shape, generator=g))
    return _save_hf_image_model(model, path)


def tiny_hf_hier(kind: str, tmp_path: Path, *, head: bool = True) -> Adapter:
    """:func:`save_tiny_hf_hier` under ``tmp_path`` and reloaded via ``hf:DIR``."""
    d = Path(tmp_path) / f"hf_{kind}{'' if head else '_features'}"
    if not (d / "config.json").exists():
        save_tiny_hf_hier(kind, d, head=head)
    return load_model(f"hf:{d}")


def tiny_hf_swin(tmp_path: Path) -> Adapter:
    """transformers SwinForImageClassification (32x32, patch 4, window 4, depths [1, 1]: 4x4 grid)."""
    return tiny_hf_hier("swin", tmp_path)


def tiny_hf_convnext(tmp_path: Path) -> Adapter:
    """transformers ConvNextForImageClassification (32x32, patch 4, 2 stages: 4x4 grid)."""
    return tiny_hf_hier("convnext", tmp_path)


def tiny_hf_dinov2(tmp_path: Path) -> Adapter:
    """transformers Dinov2ForImageClassification (32x32, patch 8, 2 layers, 2 heads)."""
    return tiny_hf_hier("dinov2", tmp_path)


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
        "eva02": lambda tmp: tiny_vit_variant("eva02", tmp),
        "beit": lambda tmp: tiny_vit_variant("beit", tmp),
        "dinov2_reg": lambda tmp: tiny_vit_variant("dinov2_reg", tmp),
        "timm_swin": tiny_timm_swin,
        "timm_convnext": tiny_timm_convnext,
        "hf_swin": tiny_hf_swin,
        "hf_convnext": tiny_hf_convnext,
        "hf_dinov2": tiny_hf_dinov2,
        "hf_dinov2_reg": lambda tmp: tiny_hf_hier("dinov2_reg", tmp),
    }


def group_head_vit(n: int = 240, seed: int = 0) -> tuple[Adapter, torch.Tensor, list[str]]:
    """A tiny timm ViT built by hand whose last block's head 1 copies a group signal into the class-1 logit.

    Images (already normalised tensors): channel 0 an object intensity (uniform per image), channel 1 the
    group (0.2 for group "a", 0.8 for "b"), with pixel noise. The patch embedding writes the patch means of
    channels 0 / 1 into residual channels 0 / 1 (channel 2 a constant 10, for stable LayerNorm statistics);
    block 0 and both MLPs write nothing; in block 1 attention is uniform (q = k = 0), head 0 copies channel 0
    into residual channel 10 and head 1 copies channel 1 into channel 11. The head: class-1 logit =
    standardised channel 10 + 2 x (channel 11 centred at the group midpoint, scaled by the group distance),
    so group "b" is predicted class 1 far more often than group "a" only through head 1.

    Returns:
        (adapter, images (n, 3, 32, 32), group of each image)
    """
    torch.manual_seed(seed)
    adapter = load_model("timm:vit_tiny_patch16_224", class_names=["neg", "pos"],
                         **{**TINY_VIT, "num_classes": 2})
    m = adapter.model
    g = torch.Generator().manual_seed(seed)
    groups = ["a" if i % 2 == 0 else "b" for i in range(n)]
    x = torch.zeros(n, 3, 32, 32)
    x[:, 0] = torch.rand(n, 1, 1, generator=g)
    x[:, 1] = torch.tensor([0.2 if s == "a" else 0.8 for s in groups]).view(n, 1, 1)
    x[:, :2] += 0.05 * torch.randn(n, 2, 32, 32, generator=g)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.fill_(1.0)
        pe = m.patch_embed.proj  # (C, 3, 8, 8)
        pe.weight[0, 0] = 1.0 / 64
        pe.weight[1, 1] = 1.0 / 64
        pe.bias[2] = 10.0
        m.cls_token[0, 0, 2] = 10.0
        attn = m.blocks[1].attn
        c = attn.proj.weight.shape[0]
        d = c // attn.num_heads
        attn.qkv.weight[2 * c + 0, 0] = 1.0  # head 0's first value dim reads channel 0
        attn.qkv.weight[2 * c + d, 1] = 1.0  # head 1's first value dim reads channel 1
        attn.proj.weight[10, 0] = 1.0
        attn.proj.weight[11, d] = 1.0
        feats = adapter.encode_image(x)  # (n, C) normed pre-logits
        f10, f11 = feats[:, 10], feats[:, 11]
        is_b = torch.tensor([s == "b" for s in groups])
        mid = (f11[is_b].mean() + f11[~is_b].mean()) / 2
        dist = (f11[is_b].mean() - f11[~is_b].mean()).abs()
        m.head.weight[1, 10] = 1.0 / f10.std()
        m.head.weight[1, 11] = 2.0 / dist
        m.head.bias[1] = -(f10.median() / f10.std() + 2.0 * mid / dist)
    return adapter, x, groups
