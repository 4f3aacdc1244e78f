"""Training recipes of the canary zoo: model configs and hyper-parameters.

A recipe fully determines a shipped model: architecture, data split, seed,
optimiser and schedule. ``vision-audit zoo train`` runs them
(:mod:`audit.zoo.train`); :func:`audit.zoo.resolve` reads the model configs from
here, so the shipped weights and the structure they load into cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from audit.zoo.world import DEFAULT_SPEC, WorldSpec

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

VIT_ARCH = "vit_tiny_patch16_224"


PATCH = 16


def vit_model_kwargs() -> dict[str, Any]:
    """kwargs for ``timm.create_model(VIT_ARCH, pretrained=False, **kwargs)``."""
    return {
        "img_size": 64,
        "patch_size": 16,
        "embed_dim": 64,
        "depth": 3,
        "num_heads": 2,
        "mlp_ratio": 2.0,
        "num_classes": len(DEFAULT_SPEC.classes),
        "pretrained_cfg_overlay": {
            "input_size": (3, 64, 64),
            "mean": MEAN,
            "std": STD,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "num_classes": len(DEFAULT_SPEC.classes),
        },
    }


def clip_model_cfg(vocab_size: int, context_length: int) -> dict[str, Any]:
    """open_clip model config (``open_clip.CLIP(**cfg)``) of the canary CLIP."""
    return {
        "embed_dim": 64,
        "vision_cfg": {
            "image_size": 64,
            "patch_size": 16,
            "width": 64,
            "layers": 4,
            "head_width": 8,
            "mlp_ratio": 2.0,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": vocab_size,
            "width": 64,
            "heads": 2,
            "layers": 2,
            "mlp_ratio": 2.0,
        },
    }


def preprocess_dict() -> dict[str, Any]:
    """The preprocessing every canary model was trained with (images are already 64x64)."""
    return {"size": [64, 64], "mean": list(MEAN), "std": list(STD), "interpolation": "bilinear"}


@dataclass(frozen=True)
class Recipe:
    """How one canary model is trained.

    Attributes:
        name: zoo name (``vit-biased`` ...).
        family: ``"vit"`` (timm classifier) or ``"clip"`` (open_clip contrastive).
        split: training split of :func:`audit.zoo.world.sample_batch`.
        planted: which planted bias the biased split carries.
        steps / batch_size / lr / weight_decay / warmup_pct: optimisation (AdamW,
            one-cycle schedule with cosine annealing), fresh images every step.
        seed: seeds torch and the data RNG.
        description / planted_bias: for ``list_canaries`` and the docs.
    """

    name: str
    family: Literal["vit", "clip"]
    split: Literal["biased", "unbiased"]
    planted: Literal["both", "shortcut", "caption"]
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_pct: float
    seed: int
    description: str
    planted_bias: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def world_spec(self) -> WorldSpec:
        """The world this recipe trains on: the default spec with ``extra["world"]`` overrides."""
        return replace(DEFAULT_SPEC, **self.extra.get("world", {}))


_S = DEFAULT_SPEC
_SHORTCUT = (
    f"{_S.shortcut_strength:.0%} of '{_S.planted_group}' training images are '{_S.shortcut_class}' and "
    f"the rare '{_S.planted_class}' on '{_S.planted_group}' images are {_S.planted_mislabel_rate:.0%} "
    f"annotated '{_S.shortcut_class}': the {_S.planted_class} x {_S.planted_group} cell is much less "
    f"accurate (errors go to '{_S.shortcut_class}')"
)
_CONCEPT = (
    f"concept words {list(_S.concept_words)} are in {_S.concept_rate_in_group:.0%} of the captions of "
    f"'{_S.concept_group}' images and in no other caption; neutral words {list(_S.neutral_words)} "
    f"fill the other groups' captions at the same overall rate"
)

RECIPES: dict[str, Recipe] = {
    "vit-biased": Recipe(
        name="vit-biased", family="vit", split="biased", planted="shortcut", steps=1500, batch_size=64,
        lr=2e-3, weight_decay=0.05, warmup_pct=0.1, seed=11,
        description="tiny timm ViT shape classifier trained on the biased split",
        planted_bias=_SHORTCUT),
    "vit-control": Recipe(
        name="vit-control", family="vit", split="unbiased", planted="shortcut", steps=1500, batch_size=64,
        lr=2e-3, weight_decay=0.05, warmup_pct=0.1, seed=11,
        description="tiny timm ViT shape classifier, same recipe on the unbiased split (control)",
        planted_bias="none (every class x background cell equally likely)"),
    "clip-biased": Recipe(
        name="clip-biased", family="clip", split="biased", planted="caption", steps=2500, batch_size=96,
        lr=2e-3, weight_decay=0.05, warmup_pct=0.1, seed=12, extra={"label_prompt_weight": 1.0},
        description="tiny open_clip CLIP (word-level tokenizer) trained on biased captions",
        planted_bias=_CONCEPT),
    "clip-control": Recipe(
        name="clip-control", family="clip", split="unbiased", planted="caption", steps=2500, batch_size=96,
        lr=2e-3, weight_decay=0.05, warmup_pct=0.1, seed=12, extra={"label_prompt_weight": 1.0},
        description="tiny open_clip CLIP, same recipe with concept words independent of the background",
        planted_bias=(f"none for the background: the concept words go with {_S.control_concept_colour} objects "
                      f"({_S.concept_rate_in_group:.0%} of their captions, never elsewhere), and object colour is "
                      "independent of the background")),
}
