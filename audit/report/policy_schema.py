"""The release policy's schema: its rules as pydantic models, and reading a policy file.

Semantics of every rule: :mod:`audit.report.policy`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from audit.errors import ConfigError
from audit.findings import METRIC_NAMES

VERDICT_COLUMNS = ["rule", "outcome", "attribute", "metric", "scope", "metric_label", "group", "observed",
                   "threshold", "ci_low", "ci_high", "interval", "n", "n_other", "p_value", "p_adj", "correction",
                   "passed", "note", "text", "p"]
Outcome = Literal["pass", "fail", "not tested"]
Family = Literal["range", "pairwise", "one_vs_rest"]
#: metric names vision-audit computes; one of them missing from a run is "not tested", any other is exit 2
KNOWN_METRICS = frozenset(METRIC_NAMES) | {"error_rate", "effect_size", "mass_in_mask", "skew", "probe_balanced_accuracy", "mmd2"}
#: the ledger keeps one row for a metric and its complement (same groups, gap and test)
LEDGER_ALIAS = {"fnr": "tpr"}
FAMILY_ORDER = ("range", "pairwise", "one_vs_rest")
#: the run table a ledger metric comes from (default: disparities)
SOURCE = {"harmful_label_rate": "harmful_disparities", "effect_size": "association",
           "share": "prediction_disparities", "mass_in_mask": "region_mass", "skew": "retrieval_skew", "probe_balanced_accuracy": "linear_probe",
           "mmd2": "mmd"}
SCOPE_ORDER = ("overall", "macro")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GapRule(_Strict):
    """Maximum gap across groups of the policy's ``metrics``; see the module docstring."""

    threshold: float = Field(gt=0, le=1)
    require_significance: bool = True
    alpha: float = Field(default=0.05, gt=0, lt=1)
    holm_family: Literal["policy", "run"] = "policy"
    metrics: list[str] | None = None
    family: Family | None = None


class ClasswiseGapRule(_Strict):
    """Maximum per-class (one-vs-rest) gap of ``metric`` across groups, every class judged."""

    metric: str = "tpr"
    threshold: float = Field(gt=0, le=1)
    require_significance: bool = True
    alpha: float = Field(default=0.05, gt=0, lt=1)
    holm_family: Literal["policy", "run"] = "policy"
    family: Family | None = None


class PerClassRule(_Strict):
    """Minimum per-class value of ``metric`` in every group (class x group cells)."""

    metric: str = "tpr"
    threshold: float = Field(ge=0, le=1)
    bound: Literal["ci_high", "point", "ci_low"] = "ci_high"


class WorstGroupRule(_Strict):
    """Minimum value of ``metric`` in the worst group."""

    threshold: float = Field(ge=0, le=1)
    metric: str = "accuracy"
    bound: Literal["ci_low", "point"] = "ci_low"


class HarmfulRule(_Strict):
    """Maximum harmful-label rate in any group (CLIP runs)."""

    threshold: float = Field(ge=0, le=1)
    bound: Literal["point", "ci_high"] = "point"


class AssociationRule(_Strict):
    """Maximum |effect size| of the association tests (CLIP runs)."""

    threshold: float = Field(gt=0)
    require_significance: bool = False
    alpha: float = Field(default=0.05, gt=0, lt=1)
    holm_family: Literal["policy", "run"] = "policy"


class SliceRule(_Strict):
    """Maximum error-rate difference between a confirmed error slice and the rest of its scope."""

    threshold: float = Field(gt=0, le=1)
    bound: Literal["point", "ci_low"] = "point"


RULE_KEYS = ("max_accuracy_gap", "max_classwise_gap", "min_per_class_metric", "min_worst_group_accuracy",
             "max_harmful_label_rate", "max_association_effect_size", "max_confirmed_slice_gap")


class Policy(_Strict):
    """A release policy (YAML). At least one rule must be set."""

    version: Literal[1] = 1
    name: str = ""
    attributes: list[str] | None = None
    include_intersections: bool = False
    metrics: list[str] = ["accuracy"]
    min_group_size: int = Field(default=50, ge=1)
    on_missing: Literal["fail", "skip"] = "fail"
    max_accuracy_gap: GapRule | None = None
    max_classwise_gap: ClasswiseGapRule | None = None
    min_per_class_metric: PerClassRule | None = None
    min_worst_group_accuracy: WorstGroupRule | None = None
    max_harmful_label_rate: HarmfulRule | None = None
    max_association_effect_size: AssociationRule | None = None
    max_confirmed_slice_gap: SliceRule | None = None

    @model_validator(mode="after")
    def _some_rule(self) -> Policy:
        if not any(getattr(self, k) is not None for k in RULE_KEYS):
            raise ValueError("the policy sets no rule; set at least one of " + ", ".join(RULE_KEYS))
        if not self.metrics:
            raise ValueError("metrics is empty; list at least one metric (e.g. [accuracy])")
        return self


# --------------------------------------------------------------------------- loading
def _loc(err: dict[str, Any]) -> str:
    return ".".join(str(x) for x in err.get("loc", ())) or "(top level)"


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy YAML file.

    Raises:
        ConfigError: the file is missing, is not YAML, or a field is invalid (the message
            names the file and the field).
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"policy file {p} not found; pass the path of a policy YAML (see examples/policy.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"policy file {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"policy file {p} must hold a mapping of rules (got {type(data).__name__}); "
                          "see examples/policy.yaml")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        probs = []
        for e in exc.errors():
            if e["type"] == "extra_forbidden":
                probs.append(f"field {_loc(e)!r}: unknown key (check its spelling; allowed keys are documented "
                             "in examples/policy.yaml)")
            else:
                probs.append(f"field {_loc(e)!r}: {e['msg']}")
        raise ConfigError(f"policy file {p} is invalid:\n" + "\n".join(f"  - {x}" for x in probs)) from exc
