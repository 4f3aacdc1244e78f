"""vision-audit: interpretability and bias audits for Vision Transformers and CLIP.

The public API, imported lazily (``import audit`` does not import torch)::

    import audit
    model = audit.load_model("zoo:vit-biased")
    expl = audit.explain(model, images, method="gae")
    run = audit.run_audit(audit.load_config("audit.yaml"))
    run = audit.Run.open("runs/demo/vit-biased")
    audit.write_report([run.path])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # models
    "load_model": "audit.models",
    "ZeroShotHead": "audit.models",
    "Adapter": "audit.models.base",
    "TokenLayout": "audit.models.base",
    "ModelSpec": "audit.models.base",
    "capture": "audit.capture",
    # data
    "load_manifest": "audit.data",
    "Manifest": "audit.data",
    "open_image": "audit.data",
    # explanations
    "explain": "audit.explain",
    "Explanation": "audit.explain",
    "ClassTarget": "audit.explain",
    "PromptTarget": "audit.explain",
    "ZeroShotTarget": "audit.explain",
    "EmbeddingDirectionTarget": "audit.explain",
    "rollout": "audit.explain.attention",
    "deletion_insertion": "audit.explain.faithfulness",
    "model_randomization": "audit.explain.sanity",
    "list_methods": "audit.explain.api",
    "clip_gae": "audit.explain.gae",
    # statistics
    "group_performance": "audit.stats",
    "disparity_tests": "audit.stats",
    "weat": "audit.stats",
    "retrieval_skew": "audit.stats",
    "holm": "audit.stats",
    "zeroshot_label_distribution": "audit.stats",
    "harmful_label_rates": "audit.stats",
    "write_test_set": "audit.zoo.world",
    # runs, pipeline, reports
    "AuditConfig": "audit.config",
    "load_config": "audit.config",
    "run_audit": "audit.pipeline",
    "Run": "audit.runs",
    "write_report": "audit.report",
    "load_policy": "audit.report.policy",
    "evaluate_policy": "audit.report.policy",
    # errors
    "AuditError": "audit.errors",
    "UsageError": "audit.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'audit' has no attribute {name!r}")
    attr = "evaluate" if name == "evaluate_policy" else name
    value = getattr(importlib.import_module(mod), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
