"""The ``zoo`` family: canary names (``zoo:vit-biased``) resolved through :mod:`audit.zoo`.

A zoo spec is not a model family of its own: :func:`audit.zoo.resolve` names the real family's
spec, the weight file and the options, and the model loads through that family's adapter. The
adapter keeps the ``zoo:NAME`` spec (its fingerprint names the canary) and the resolved spec in
``resolved_spec``. The zoo is imported by name when a zoo model is loaded, so this package never
imports it and an installation without it fails with a :class:`ModelLoadError` that says so.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import torch

from audit.errors import ModelLoadError
from audit.models.base import Adapter, ModelSpec
from audit.registry import ADAPTERS


@ADAPTERS.register(
    "zoo", kind="classifier or clip", attention=True, example="zoo:vit-biased",
    checkpoint_help="embedded: the weights ship in audit/zoo/weights (vision-audit zoo list)",
)
class ZooFamily:
    """The canary zoo: tiny trained models with planted biases (offline, embedded)."""

    family: ClassVar[str] = "zoo"
    description: ClassVar[str] = "the canary zoo: tiny trained models with planted biases (offline, embedded)"
    examples: ClassVar[tuple[str, ...]] = ("zoo:vit-biased",)

    @classmethod
    def load(cls, spec: ModelSpec, *, device: str | torch.device = "cpu") -> Adapter:
        """Load ``zoo:NAME`` through the family its :func:`audit.zoo.resolve` entry names."""
        from audit.models import load_model

        try:
            zoo = importlib.import_module("audit.zoo")
            resolve = zoo.resolve
        except (ImportError, AttributeError) as e:
            raise ModelLoadError(
                f"cannot load zoo:{spec.name}: the canary zoo (audit.zoo) is not available in this installation ({e})"
            ) from e
        inner, path, extra = resolve(spec.name)
        opts: dict[str, Any] = dict(extra or {})
        recorded = getattr(zoo, "preprocess_of", None)
        if callable(recorded):  # the values the canary was trained with, as the zoo's own record
            opts.pop("preprocess", None)  # the same values in open_clip's form
            kw = opts.get("model_kwargs")
            if isinstance(kw, dict) and "pretrained_cfg_overlay" in kw:  # ... and in timm's
                opts["model_kwargs"] = {k: v for k, v in kw.items() if k != "pretrained_cfg_overlay"}
            opts["preprocess_layers"] = [("zoo", recorded(spec.name))]
        opts.update({k: v for k, v in spec.options.items()})
        inner_spec = ModelSpec.parse(inner) if isinstance(inner, str) else inner
        if inner_spec.family == "zoo":
            raise ModelLoadError(
                f"zoo:{spec.name} resolves to another zoo spec ({inner}); zoo entries must name a family"
            )
        adapter = load_model(inner_spec, checkpoint=spec.checkpoint or path, device=device, **opts)
        adapter.resolved_spec = adapter.spec  # type: ignore[attr-defined]
        adapter.spec = ModelSpec(family="zoo", name=spec.name, checkpoint=spec.checkpoint or path, options=opts)
        return adapter
