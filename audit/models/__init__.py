"""Model adapters: the only code that knows a model family.

Example:
    >>> from audit.models import load_model
    >>> adapter = load_model("timm:vit_tiny_patch16_224", pretrained=False, img_size=32,
    ...                      patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)
    >>> adapter.token_layout().grid
    (4, 4)

Each family is one module of this package that registers itself in
:data:`audit.registry.ADAPTERS` with its metadata (``kind``, ``attention``, ``example``,
``checkpoint_help``): ``timm``, ``open_clip``, ``hf`` and ``zoo`` (canary names resolved through
:func:`audit.zoo.resolve`). The registry finds them by importing every module here on first use,
so a new family is one new file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from audit.errors import ModelLoadError, UsageError
from audit.models.base import (
    Adapter,
    AttentionPatch,
    ModelSpec,
    Preprocess,
    TokenLayout,
    normalize_preprocess,
    weights_hash,
)
from audit.registry import ADAPTERS

__all__ = [
    "Adapter",
    "AttentionPatch",
    "ModelSpec",
    "Preprocess",
    "TokenLayout",
    "ZeroShotHead",
    "list_families",
    "load_model",
    "weights_hash",
]

def load_model(
    spec: str | ModelSpec,
    *,
    checkpoint: str | None = None,
    device: str | torch.device = "cpu",
    class_names: list[str] | None = None,
    preprocess: Mapping[str, Any] | None = None,
    **options: Any,
) -> Adapter:
    """Load a model behind the uniform :class:`Adapter` interface.

    Args:
        spec: ``FAMILY:NAME`` (e.g. ``timm:vit_base_patch16_224``,
            ``open_clip:ViT-B-32/laion2b_s34b_b79k``, ``hf:./my_vit_dir``, ``zoo:vit-biased``)
            or a :class:`ModelSpec`.
        checkpoint: local weights file (``.safetensors`` preferred; ``.pth``/``.bin`` are read
            with ``torch.load(weights_only=True)``). Overrides ``spec.checkpoint``.
        device: where to put the model.
        class_names: class names of a classifier head (length = number of classes).
        preprocess: the user's preprocessing values (any of ``input_size``, ``resize`` or
            ``crop_pct``, ``resize_mode``, ``interpolation``, ``mean``, ``std``; as
            ``model.preprocess`` in a config). Every key left out comes from the preprocessing
            stored with the checkpoint, else from the family's config for the architecture.
            ``adapter.preprocess.sources`` says where each value came from and
            ``adapter.preprocess.warnings`` holds the warning when the values are a guess (a run
            records and prints it; ``vision-audit explain`` prints it).
        **options: family-specific options merged into ``spec.options`` (e.g. timm's
            ``img_size``, ``num_classes``, ``pretrained=False``).

    Returns:
        The loaded adapter, in eval mode.

    Raises:
        ModelLoadError: bad spec, unknown family, missing network, checkpoint that does not fit.
        UnsafeCheckpointError: a pickle checkpoint that would execute code.
        UsageError: invalid preprocessing, or an ``input_size`` the model does not accept.

    Example:
        >>> a = load_model("timm:vit_small_patch16_224", checkpoint="my.safetensors",  # doctest: +SKIP
        ...                preprocess={"crop_pct": 1.0, "interpolation": "bilinear"})
        >>> a.preprocess.sources["crop_pct"], a.preprocess.sources["mean"]  # doctest: +SKIP
        ('user', 'timm_default')
    """
    if isinstance(spec, str):
        spec = ModelSpec.parse(spec)
    opts = dict(spec.options)
    opts.update(options)
    if class_names is not None:
        opts["class_names"] = list(class_names)
    if preprocess is not None:
        given = normalize_preprocess(opts.get("preprocess"), what="option preprocess")
        explicit = normalize_preprocess(dict(preprocess), what="model.preprocess")
        if "resize" in explicit or "crop_pct" in explicit:  # the explicit argument's crop rule wins
            given.pop("resize", None)
            given.pop("crop_pct", None)
        opts["preprocess"] = {**given, **explicit}
    ckpt = checkpoint if checkpoint is not None else spec.checkpoint
    spec = ModelSpec(family=spec.family, name=spec.name, checkpoint=ckpt, options=opts)

    try:
        family = ADAPTERS.get(spec.family)
    except UsageError:
        known = ", ".join(ADAPTERS.names())
        raise ModelLoadError(
            f"unknown model family {spec.family!r} in spec {spec.family}:{spec.name}; known families: {known} "
            "(run `vision-audit models`)"
        ) from None
    adapter = family.load(spec, device=device)
    _check_input_size(adapter)
    return adapter


def _check_input_size(adapter: Adapter) -> None:
    pp = adapter.preprocess
    size = tuple(pp.size)
    if adapter.supports_input_size(size):  # type: ignore[arg-type]
        return
    source = pp.sources.get("input_size", "?")
    key = "model.preprocess.input_size (explain: --input-size)" if source == "user" else f"input_size ({source})"
    raise UsageError(
        f"{key} {size[0]}x{size[1]} is not an input size {adapter.spec} accepts: {adapter.input_size_hint}"
    )


def list_families() -> list[dict[str, Any]]:
    """Model families and their registered metadata (for ``vision-audit models``).

    Each dict: ``family``, ``description``, ``examples`` (the registered ``example`` first),
    ``kind``, ``attention`` (whether the family exposes attention probabilities, which attention
    methods need), ``checkpoint_help`` (how to give local weights) and ``groups``
    (:func:`architecture_groups`: per architecture, whether attention methods apply).
    """
    out = []
    for name in ADAPTERS.names():
        meta = ADAPTERS.meta(name)
        cls = ADAPTERS.get(name)
        examples = [e for e in (meta.get("example"), *meta.get("examples", ())) if e]
        out.append({
            "family": name,
            "description": meta.get("description") or (cls.__doc__ or "").strip().splitlines()[0],
            "examples": list(dict.fromkeys(examples)),
            "kind": meta.get("kind"),
            "attention": bool(meta.get("attention")),
            "checkpoint_help": meta.get("checkpoint_help", ""),
            "groups": architecture_groups(name),
        })
    return out


def architecture_groups(family: str) -> list[dict[str, Any]]:
    """The architecture groups of ``family`` whose adapters differ in what they expose: ``name``,
    ``adapter`` (class name), ``attention_maps`` (whether attention methods apply) and
    ``attention_refusal`` (why not). Families with a single adapter class give ``[]``."""
    from audit.models.hf import HFAdapter
    from audit.models.hf_hier import HFConvNeXtAdapter, HFDinov2Adapter, HFSwinAdapter
    from audit.models.timm_hier import TimmConvNeXtAdapter, TimmSwinAdapter
    from audit.models.timm_vit import TimmViTAdapter

    groups: dict[str, list[tuple[str, type[Adapter]]]] = {
        "timm": [("ViT / DeiT / register ViTs / EVA-02 / BEiT / CLIP towers", TimmViTAdapter),
                 ("Swin (v1/v2)", TimmSwinAdapter), ("ConvNeXt", TimmConvNeXtAdapter)],
        "hf": [("ViT / CLIP", HFAdapter), ("DINOv2 (with registers)", HFDinov2Adapter), ("Swin", HFSwinAdapter),
               ("ConvNeXt", HFConvNeXtAdapter)],
    }
    return [{"name": n, "adapter": c.__name__, "attention_maps": bool(c.attention_maps),
             "attention_refusal": c.attention_refusal} for n, c in groups.get(family, [])]


def __getattr__(name: str) -> Any:
    if name == "ZeroShotHead":
        from audit.models.zeroshot import ZeroShotHead

        return ZeroShotHead
    raise AttributeError(f"module 'audit.models' has no attribute {name!r}")
