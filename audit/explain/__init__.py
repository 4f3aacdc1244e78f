"""Explanation maps for ViT and CLIP: attention (raw, rollout, GAE), Grad-CAM, captum methods.

Every method is registered in :data:`audit.registry.METHODS` with the signature
``fn(adapter, images, *, target=None, **params) -> Tensor (B, gh, gw)`` and its metadata
(``target_free``, ``needs_attention``, ``gradient``, ``families``, ``description``);
:func:`explain` runs one and wraps the result in an :class:`Explanation`. The registry finds the
methods itself: on its first use it imports every module of this package (``home="audit.explain"``),
so a new file here that registers is a new method, and ``import audit`` stays light.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_LAZY = {
    "explain": "audit.explain.api",
    "list_methods": "audit.explain.api",
    "method_metadata": "audit.explain.api",
    "Explanation": "audit.explain.types",
    "Target": "audit.explain.targets",
    "ClassTarget": "audit.explain.targets",
    "PromptTarget": "audit.explain.targets",
    "ZeroShotTarget": "audit.explain.targets",
    "EmbeddingDirectionTarget": "audit.explain.targets",
    "clip_gae": "audit.explain.gae",
    "deletion_insertion": "audit.explain.faithfulness",
    "faithfulness_table": "audit.explain.faithfulness",
    "chefer_perturbation": "audit.explain.faithfulness",
    "pointing_game": "audit.explain.faithfulness",
    "mass_in_mask": "audit.explain.faithfulness",
    "random_map_like": "audit.explain.faithfulness",
    "model_randomization": "audit.explain.sanity",
}

__all__ = sorted(_LAZY)  # noqa: PLE0605 (a list built from the lazy table)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'audit.explain' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    """``audit.explain`` is both this package and the :func:`explain` function.

    Importing the subpackage binds the name ``explain`` on :mod:`audit` to this module, which
    would shadow the curated ``audit.explain(...)`` function; making the module callable keeps
    ``audit.explain(model, images, method=...)`` working whatever was imported first.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from audit.explain.api import explain as _explain

        return _explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
