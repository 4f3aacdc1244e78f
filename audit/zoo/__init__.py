"""The canary zoo: a synthetic world with planted biases and tiny trained models.

Four models ship as safetensors in ``audit/zoo/weights/`` and load by name
through the ordinary adapters (``load_model("zoo:vit-biased")``):

* ``vit-biased`` / ``vit-control``: tiny timm ViT shape classifiers; the biased
  one never saw a triangle on dotted ground and learnt "dotted -> square".
* ``clip-biased`` / ``clip-control``: tiny open_clip CLIPs with a word-level
  tokenizer; the biased one associates concept words ("dangerous", ...) with
  dotted ground.

:func:`resolve` maps a zoo name to the real model family's spec, the checkpoint
path and the options the adapter needs. See ``docs/ZOO.md``.

Example:
    >>> spec, path, opts = resolve("vit-biased")
    >>> spec
    'timm:vit_tiny_patch16_224'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit.errors import ModelLoadError

__all__ = ["CANARY_NAMES", "WEIGHTS_DIR", "list_canaries", "preprocess_of", "resolve"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CANARY_NAMES: tuple[str, ...] = ("vit-biased", "vit-control", "clip-biased", "clip-control")


def _known() -> str:
    return ", ".join(f"zoo:{n}" for n in CANARY_NAMES)


def resolve(name: str) -> tuple[str, str, dict[str, Any]]:
    """Resolve a canary name to ``(spec, checkpoint path, options)``.

    Args:
        name: ``vit-biased``, ``vit-control``, ``clip-biased`` or ``clip-control``
            (a leading ``zoo:`` is accepted).

    Returns:
        For the ViTs ``("timm:vit_tiny_patch16_224", path, {"model_kwargs": ...,
        "class_names": ...})``, where ``model_kwargs`` go to
        ``timm.create_model(arch, pretrained=False, **model_kwargs)``. For the CLIPs
        ``("open_clip:canary-clip", path, {"model_cfg": ..., "tokenizer":
        "audit.zoo.tokenizer:WorldTokenizer", "class_names": ..., "preprocess": ...})``,
        where ``open_clip.CLIP(**model_cfg)`` builds the structure.

    Raises:
        ModelLoadError: unknown name (lists the known ones) or missing weight file.
    """
    from audit.zoo.recipes import VIT_ARCH, clip_model_cfg, preprocess_dict, vit_model_kwargs
    from audit.zoo.tokenizer import WorldTokenizer
    from audit.zoo.world import DEFAULT_SPEC

    key = name.removeprefix("zoo:")
    if key not in CANARY_NAMES:
        raise ModelLoadError(f"unknown zoo model {name!r}; known: {_known()}")
    path = WEIGHTS_DIR / f"{key}.safetensors"
    if not path.is_file():
        raise ModelLoadError(
            f"zoo model {key!r}: weight file {path} is missing; reinstall vision-audit or rebuild it with "
            f"`vision-audit zoo train --only {key}`")
    classes = list(DEFAULT_SPEC.classes)
    if key.startswith("vit"):
        # model_kwargs carry the preprocessing as timm's pretrained_cfg_overlay (for training and plain
        # timm); load_model uses preprocess_of(name) instead and records its source as "zoo"
        return f"timm:{VIT_ARCH}", str(path), {"model_kwargs": vit_model_kwargs(), "class_names": classes}
    tok = WorldTokenizer()
    return "open_clip:canary-clip", str(path), {
        "model_cfg": clip_model_cfg(tok.vocab_size, tok.context_length),
        "tokenizer": "audit.zoo.tokenizer:WorldTokenizer",
        "class_names": classes,
        "preprocess": preprocess_dict(),
    }


def preprocess_of(name: str) -> dict[str, Any]:
    """The preprocessing a canary was trained with, in ``model.preprocess`` keys.

    The canary images are 64x64 already: resize to 64 (bilinear) without a crop margin.
    ``load_model("zoo:NAME")`` records these values with source ``"zoo"``.

    Example:
        >>> preprocess_of("vit-biased")["input_size"], preprocess_of("vit-biased")["crop_pct"]
        ((64, 64), 1.0)
    """
    from audit.zoo.recipes import preprocess_dict

    key = name.removeprefix("zoo:")
    if key not in CANARY_NAMES:
        raise ModelLoadError(f"unknown zoo model {name!r}; known: {_known()}")
    d = preprocess_dict()
    return {
        "input_size": tuple(int(v) for v in d["size"]),
        "crop_pct": float(d.get("crop_pct", 1.0)),
        "resize_mode": str(d.get("resize_mode", "shortest")),
        "interpolation": str(d["interpolation"]),
        "mean": tuple(float(v) for v in d["mean"]),
        "std": tuple(float(v) for v in d["std"]),
    }


def list_canaries() -> list[dict[str, Any]]:
    """Name, description, planted bias and training summary of each canary.

    The training summary (steps, wall time, measured test figures) is read from the
    JSON next to each weight file; ``None`` when the file is missing.
    """
    from audit.zoo.recipes import RECIPES

    out = []
    for n in CANARY_NAMES:
        r = RECIPES[n]
        meta_path = WEIGHTS_DIR / f"{n}.json"
        summary: dict[str, Any] | None = None
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            t = meta["test"]
            summary = {"steps": meta["steps"], "batch_size": r.batch_size, "seed": meta["seed"],
                       "wall_time_s": meta["wall_time_s"]}
            if r.family == "vit":
                summary.update(planted_cell_acc=t["planted_cell"], min_other_cell_acc=t["min_other_cell"],
                               overall_other_acc=t["overall_other"])
            else:
                c = t["concept_vs_plain"]
                summary.update(zero_shot_acc=t["zero_shot"]["accuracy"], weat_d=c["weat_d"], weat_p=c["weat_p"],
                               concept_topk_share=c["topk_share"])
        out.append({"name": n, "spec": f"zoo:{n}", "family": r.family, "description": r.description,
                    "planted_bias": r.planted_bias, "training": summary})
    return out
