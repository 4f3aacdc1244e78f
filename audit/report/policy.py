"""The release gate: ``vision-audit check RUN_DIR --policy policy.yaml [--json]``.

A policy is a YAML file of thresholds (validated by pydantic, unknown keys are errors, read
with ``yaml.safe_load``). :func:`evaluate` turns a run and a policy into a :class:`Verdict`;
:func:`check` prints the verdict and returns the exit code: 0 pass, 1 fail, 2 unusable input
(missing or damaged run, invalid policy, a policy naming an attribute the run does not have or
a metric vision-audit does not know).

The gate states no conclusion of its own: every comparison it judges is a row of the run's
findings ledger (:mod:`audit.findings`, read with :meth:`audit.runs.Run.findings`), and every
verdict row carries that row's sentence. Rules about one group or one class x group cell read
the per-group tables the ledger is built from (``group_performance``, ``harmful_rates``: the
ledger keeps only the two ends of each comparison) and carry the ledger's sentence for the
comparison the cell belongs to.

Each rule gives one row per attribute (per test for associations) with an outcome:

``pass`` / ``fail``
    judged against the threshold;
``not tested``
    the rule could not be judged, with the reason: the run lacks the table (e.g. a CLIP rule
    on a classifier run), fewer than two groups are large enough, or the groups (cells) are
    below ``min_group_size``. ``on_missing: skip`` lets the gate pass with untested rules,
    ``on_missing: fail`` (default) fails it.

Rule semantics (the same wording is in ``examples/policy.yaml``):

``max_accuracy_gap``
    The gap of each metric in ``metrics`` across the groups of each attribute: the ledger's
    whole-task row (scope ``overall``), else the macro mean of the one-vs-rest rows
    (``macro``), else its other rows (``labels:<set>`` for ``harmful_label_rate``,
    ``test:<name>`` for ``effect_size`` ...). ``require_significance: true`` -> fails only
    when the gap exceeds ``threshold`` AND the test is significant after Holm correction
    (adjusted p < ``alpha``). ``require_significance: false`` -> fails when the upper end
    of the gap's 95% interval exceeds ``threshold`` (the run must show the gap is small, not
    merely fail to show it is large); the stricter setting.
``max_classwise_gap``
    The same judgement on the per-class (one-vs-rest) rows of ``metric`` (scope
    ``class:<name>``): every class is judged, each attribute's row shows its worst class.
    This is the rule that sees one class failing on one group (a recall of 0.14 for one
    class on one background) that whole-task metrics average away.
``min_per_class_metric``
    The per-class value of ``metric`` in every (attribute, group, class) cell of
    ``group_performance`` with n >= ``min_group_size`` (n counted on the metric's
    denominator: the class's images for recall); fails when ``bound`` (``ci_high``, default:
    the run shows the cell is below the threshold; ``point``; ``ci_low``: the run must show it
    is above) is below ``threshold``. Smaller cells are not tested.
``min_worst_group_accuracy``
    The lowest group value of ``metric`` (whole-task row, else macro) per attribute;
    ``bound: ci_low`` (default) or ``point``.
``max_harmful_label_rate``
    CLIP runs: the highest group harmful-label rate per attribute, on ``bound`` ("point"
    or "ci_high").
``max_association_effect_size``
    CLIP runs: |effect size d| of each association test; with ``require_significance``
    only tests significant after Holm correction can fail.

Holm (``holm_family`` of the rules that test significance): ``policy`` (default) = Holm over
the raw p-values of every ledger row this policy judges by significance (all classes of
``max_classwise_gap`` included, each row counted once); ``run`` = the ledger's ``p_adj``
(the correction named in its ``correction`` column).

``attributes``
    The group columns judged; omitted: every group column of the run (a portable policy).
    An attribute the run lacks is exit 2 (the message names it and the run's columns).
``min_group_size``
    Groups (and association sets, and class x group cells) with fewer images are not judged:
    no claim is made about them either way.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from audit.errors import AuditError, ConfigError, RunError, UsageError
from audit.findings import METRIC_NAMES, metric_label, scope_of
from audit.report.summary import INTERSECTION_SEP, fmt, fmt_ci
from audit.runs import Run

VERDICT_COLUMNS = ["rule", "outcome", "attribute", "metric", "scope", "metric_label", "group", "observed",
                   "threshold", "ci_low", "ci_high", "interval", "n", "n_other", "p_value", "p_adj", "correction",
                   "passed", "note", "text", "p"]
Outcome = Literal["pass", "fail", "not tested"]
Family = Literal["range", "pairwise", "one_vs_rest"]
#: metric names vision-audit computes; one of them missing from a run is "not tested", any other is exit 2
KNOWN_METRICS = frozenset(METRIC_NAMES) | {"effect_size", "mass_in_mask", "skew", "probe_balanced_accuracy", "mmd2"}
#: the ledger keeps one row for a metric and its complement (same groups, gap and test)
_LEDGER_ALIAS = {"fnr": "tpr"}
_FAMILY_ORDER = ("range", "pairwise", "one_vs_rest")
#: the run table a ledger metric comes from (default: disparities)
_SOURCE = {"harmful_label_rate": "harmful_disparities", "effect_size": "association",
           "share": "prediction_disparities", "mass_in_mask": "region_mass", "skew": "retrieval_skew", "probe_balanced_accuracy": "linear_probe",
           "mmd2": "mmd"}
_SCOPE_ORDER = ("overall", "macro")


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


RULE_KEYS = ("max_accuracy_gap", "max_classwise_gap", "min_per_class_metric", "min_worst_group_accuracy",
             "max_harmful_label_rate", "max_association_effect_size")


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

    @model_validator(mode="after")
    def _some_rule(self) -> Policy:
        if not any(getattr(self, k) is not None for k in RULE_KEYS):
            raise ValueError("the policy sets no rule; set at least one of " + ", ".join(RULE_KEYS))
        if not self.metrics:
            raise ValueError("metrics is empty; list at least one metric (e.g. [accuracy])")
        return self


# --------------------------------------------------------------------------- verdict
def _show(v: Any, kind: Literal["rate", "p"] = "rate") -> str:
    return "" if _num(v) is None else fmt(v, kind)


def _json_value(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


@dataclass
class Verdict:
    """The outcome of a policy on a run.

    Attributes:
        passed: True when no row failed and (with ``on_missing: fail``) every row was tested.
        rows: one row per judged comparison (columns :data:`VERDICT_COLUMNS`); ``outcome`` is
            "pass", "fail" or "not tested"; ``passed`` is True, False, or None (not tested);
            ``p_adj`` is the adjusted p the gate used (also under its older name ``p``).
        policy_name: the policy's name.
        run: the run directory.
        on_missing: the policy's ``on_missing`` ("fail": an untested row fails the gate).
    """

    passed: bool
    rows: pd.DataFrame
    policy_name: str = ""
    run: str = ""
    on_missing: str = "fail"
    attributes: list[str] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return int((self.rows["outcome"] == "fail").sum())

    @property
    def n_not_tested(self) -> int:
        return int((self.rows["outcome"] == "not tested").sum())

    def summary(self) -> str:
        """One line: the gate's result and its counts."""
        n = len(self.rows)
        status = "PASSED" if self.passed else "FAILED"
        title = f"policy {self.policy_name!r} " if self.policy_name else "policy "
        untested = (f"{self.n_not_tested} not tested "
                    + ("(on_missing: fail, so they fail the gate)" if self.on_missing == "fail" and self.n_not_tested
                       else f"(on_missing: {self.on_missing})"))
        return f"{title}{status} on {self.run}: {self.n_failed} of {n} rule row(s) failed, {untested}"

    def to_text(self) -> str:
        """A plain-text table (one line per rule row, the ledger's sentence under it) and a summary line."""
        head = ["RESULT", "RULE", "ATTRIBUTE", "GROUP", "METRIC", "OBSERVED", "THRESHOLD", "95% INTERVAL", "N",
                "P_ADJ", "NOTE"]
        body, texts = [], []
        for r in self.rows.to_dict("records"):
            res = {"pass": "PASS", "fail": "FAIL"}.get(r["outcome"], "NOT TESTED")
            n = "" if r["n"] is None else str(r["n"])
            body.append([res, r["rule"], r["attribute"], r["group"], r["metric_label"], _show(r["observed"]),
                         _show(r["threshold"]), r["interval"], n, _show(r["p_adj"], "p"), r["note"]])
            texts.append(r["text"])
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)] if body else [len(h) for h in head]
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths)).rstrip(),
                 "  ".join("-" * w for w in widths)]
        for row, text in zip(body, texts):
            lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
            if text:
                lines.append(f"        finding: {text}")
        lines.append("")
        lines.append(self.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The verdict as JSON-ready data (NaN as None): what ``vision-audit check --json`` prints."""
        rules = [{k: _json_value(v) for k, v in r.items()} for r in self.rows.to_dict("records")]
        return {"policy": self.policy_name, "run": self.run, "passed": self.passed,
                "result": "pass" if self.passed else "fail", "on_missing": self.on_missing,
                "attributes": list(self.attributes), "n_rows": len(self.rows), "n_failed": self.n_failed,
                "n_not_tested": self.n_not_tested, "summary": self.summary(), "rules": rules}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)


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


# --------------------------------------------------------------------------- helpers
def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(v: Any) -> int | None:
    f = _num(v)
    return None if f is None else int(f)


def _row(rule: str, outcome: Outcome, *, attribute: str = "", metric: str = "", scope: str = "overall",
         group: str = "", observed: Any = None, threshold: float = float("nan"), lo: Any = None, hi: Any = None,
         n: Any = None, n_other: Any = None, p_value: Any = None, p_adj: Any = None, correction: str = "",
         note: str = "", text: str = "") -> dict[str, Any]:
    lo, hi = _num(lo), _num(hi)
    return {"rule": rule, "outcome": outcome, "attribute": attribute, "metric": metric, "scope": scope,
            "metric_label": metric_label(metric, scope) if metric else "", "group": group,
            "observed": _num(observed), "threshold": float(threshold), "ci_low": lo, "ci_high": hi,
            "interval": fmt_ci(lo, hi) if lo is not None or hi is not None else "", "n": _int(n),
            "n_other": _int(n_other), "p_value": _num(p_value), "p_adj": _num(p_adj), "correction": correction,
            "passed": {"pass": True, "fail": False}.get(outcome), "note": note, "text": text,
            "p": _num(p_adj)}  # the older name of p_adj


def _attributes(run: Run, policy: Policy) -> list[str]:
    cols = run.group_columns
    if policy.attributes is not None:
        unknown = [a for a in policy.attributes if a not in cols and a.split(INTERSECTION_SEP)[0] not in cols]
        if unknown:
            raise ConfigError(f"policy field 'attributes': {', '.join(map(repr, unknown))} not among the run's group "
                              f"columns ({', '.join(cols) or 'none'})")
        attrs = list(policy.attributes)
    else:
        attrs = list(cols)
    if policy.include_intersections:
        attrs += [INTERSECTION_SEP.join(c) for c in itertools.combinations(cols, 2)
                  if INTERSECTION_SEP.join(c) not in attrs]
    return attrs


def _missing(rule: str, table: str, run: Run, *, metric: str = "", scope: str = "overall",
             threshold: float = float("nan")) -> dict[str, Any]:
    return _row(rule, "not tested", metric=metric, scope=scope, threshold=threshold,
                note=f"not tested: table missing (run {run.path.name} has no {table} table)")


def _check_metric(fieldname: str, metric: str, available: set[str], run: Run) -> bool:
    """True when the run has ``metric``; False when it is a known metric the run lacks (not tested);
    raises ConfigError for a name vision-audit does not compute (a typo)."""
    if metric in available:
        return True
    if metric in KNOWN_METRICS:
        return False
    raise ConfigError(f"policy field {fieldname!r}: {metric!r} is not a metric of run {run.path} "
                      f"(metrics: {', '.join(sorted(available)) or 'none'}; vision-audit computes "
                      f"{', '.join(sorted(KNOWN_METRICS))})")


def _pick_family(rows: pd.DataFrame, family: str | None) -> pd.DataFrame:
    if rows.empty:
        return rows
    if family is not None:
        return rows[rows["family"] == family]
    for f in _FAMILY_ORDER:
        sel = rows[rows["family"] == f]
        if len(sel):
            return sel
    return rows


def _pick_scope(rows: pd.DataFrame) -> pd.DataFrame:
    """A metric's rows a gap rule judges per attribute: the whole-task row, else the macro mean, else
    the non-class rows, else the class rows (balanced accuracy has overall and macro rows: judging both
    would list one gap twice under one name)."""
    for s in _SCOPE_ORDER:
        sel = rows[rows["scope"] == s]
        if len(sel):
            return sel
    other = rows[~rows["scope"].str.startswith("class:")]
    return other if len(other) else rows


def _ledger_row(ledger: pd.DataFrame, *, attribute: str, metric: str, scope: str) -> dict[str, Any] | None:
    """The ledger's row for one comparison (its preferred gap family), or None."""
    sel = ledger[(ledger["attribute"] == attribute) & (ledger["metric"] == _LEDGER_ALIAS.get(metric, metric))
                 & (ledger["scope"] == scope)]
    sel = _pick_family(sel, None)
    return sel.iloc[0].to_dict() if len(sel) else None


def _small_note(sub: pd.DataFrame, min_size: int, label: str = "group") -> str:
    small = sub[sub["n"] < min_size]
    if small.empty:
        return ""
    cells = ", ".join(f"{g} (n={int(n)})" for g, n in zip(small[label], small["n"]))
    return f"; not tested (n < {min_size}): {cells}"


# --------------------------------------------------------------------------- significance items
@dataclass
class _Item:
    """One ledger row judged by a gap-type rule (before its outcome is known)."""

    rule: str                 # the verdict's rule name
    key: str                  # the YAML key
    cfg: Any                  # the rule's settings
    attribute: str
    row: dict[str, Any]       # the ledger row
    metric: str               # the metric as the policy names it
    observed: float | None
    small: str = ""           # why the row is not tested ("" = testable)
    group_by: str | None = None  # items with the same group_by are reported as one row (worst first)
    p_gate: float | None = None
    outcome: Outcome = "not tested"
    note: str = ""


def _gap_items(ledger: pd.DataFrame, policy: Policy, attrs: list[str], run: Run) -> tuple[list[_Item], list[dict]]:
    rule = policy.max_accuracy_gap
    assert rule is not None
    items: list[_Item] = []
    rows: list[dict] = []
    available = set(ledger["metric"]) | {a for a, m in _LEDGER_ALIAS.items() if m in set(ledger["metric"])}
    for metric in rule.metrics or policy.metrics:
        name = f"max_accuracy_gap:{metric}"
        if not _check_metric("max_accuracy_gap.metrics" if rule.metrics else "metrics", metric, available, run):
            src = _SOURCE.get(metric, "disparities")
            rows.append(_missing(name, src, run, metric=metric, threshold=rule.threshold)
                        if not run.has_table(src) else
                        _row(name, "not tested", threshold=rule.threshold, metric=metric,
                             note=f"not tested: the run's {src} table has no {metric_label(metric)} comparison"))
            continue
        lm = ledger[ledger["metric"] == _LEDGER_ALIAS.get(metric, metric)]
        for attr in attrs:
            sub = _pick_family(_pick_scope(lm[lm["attribute"] == attr]), rule.family)
            if sub.empty:
                rows.append(_row(name, "not tested", threshold=rule.threshold, attribute=attr, metric=metric,
                                 note=f"not tested: the run has no {metric_label(metric)} comparison by {attr}"
                                      + (f" of family {rule.family}" if rule.family else "")))
                continue
            for r in sub.to_dict("records"):
                label = metric if r["scope"] == "overall" else f"{metric}[{_scope_key(r['scope'])}]"
                items.append(_item(f"max_accuracy_gap:{label}", "max_accuracy_gap", rule, attr, r, policy,
                                   metric=metric))
    return items, rows


def _scope_key(scope: str) -> str:
    for p in ("class:", "labels:", "test:", "method:"):
        if scope.startswith(p):
            return scope[len(p):]
    return scope


def _item(name: str, key: str, cfg: Any, attr: str, r: dict[str, Any], policy: Policy, *, metric: str,
          group_by: str | None = None) -> _Item:
    gap = _num(r.get("gap"))
    small = ""
    if r.get("status") == "not tested":
        small = "not tested: " + _reason(r)
    elif gap is None:
        small = "not tested: the ledger row has no gap"
    else:
        low = [f"{g} (n={_int(n)})" for g, n in ((r.get("worst_group"), r.get("n_worst")),
                                                  (r.get("best_group"), r.get("n_best")))
               if _int(n) is not None and _int(n) < policy.min_group_size]
        if low:
            small = (f"not tested: {', '.join(low)} below the policy's min_group_size {policy.min_group_size}; "
                     "rerun with a larger sample")
    return _Item(rule=name, key=key, cfg=cfg, attribute=attr, row=r, metric=metric, observed=gap, small=small,
                 group_by=group_by)


def _reason(r: dict[str, Any]) -> str:
    """The ledger's reason for an untested row: the parenthesis of its sentence, else a default."""
    text = str(r.get("text") or "")
    if "not tested (" in text:
        return text.split("not tested (", 1)[1].rsplit(")", 1)[0]
    return "too few groups large enough to compare"


def _classwise_items(ledger: pd.DataFrame, policy: Policy, attrs: list[str], run: Run) -> tuple[list[_Item], list]:
    rule = policy.max_classwise_gap
    assert rule is not None
    name = f"max_classwise_gap:{rule.metric}"
    metric = _LEDGER_ALIAS.get(rule.metric, rule.metric)
    cls_rows = ledger[ledger["scope"].str.startswith("class:")]
    if not _check_metric("max_classwise_gap.metric", rule.metric, set(cls_rows["metric"]) | set(ledger["metric"])
                         | {a for a, m in _LEDGER_ALIAS.items() if m in set(cls_rows["metric"])}, run):
        if not run.has_table("disparities"):
            return [], [_missing(name, "disparities", run, metric=rule.metric, scope="class:*",
                                 threshold=rule.threshold)]
        return [], [_row(name, "not tested", threshold=rule.threshold, metric=rule.metric, scope="class:*",
                         note=f"not tested: the run has no per-class {metric_label(rule.metric)} comparison")]
    items, rows = [], []
    for attr in attrs:
        sub = cls_rows[(cls_rows["metric"] == metric) & (cls_rows["attribute"] == attr)]
        picked = [_pick_family(g, rule.family) for _, g in sub.groupby("scope", sort=False)] if len(sub) else []
        sub = pd.concat(picked) if picked else sub.iloc[0:0]
        if sub.empty:
            rows.append(_row(name, "not tested", threshold=rule.threshold, attribute=attr, metric=rule.metric,
                             scope="class:*",
                             note=f"not tested: the run has no per-class {metric_label(rule.metric)} comparison "
                                  f"by {attr}" + (f" of family {rule.family}" if rule.family else "")))
            continue
        for r in sub.to_dict("records"):
            items.append(_item(name, "max_classwise_gap", rule, attr, r, policy, metric=rule.metric,
                               group_by=f"{name}|{attr}"))
    return items, rows


def _association_items(ledger: pd.DataFrame, policy: Policy, attrs: list[str], run: Run) -> tuple[list, list]:
    rule = policy.max_association_effect_size
    assert rule is not None
    name = "max_association_effect_size"
    at = ledger[ledger["kind"] == "association"]
    if at.empty:
        if not run.has_table("association"):
            return [], [_missing(name, "association", run, metric="effect_size", scope="test:*",
                                 threshold=rule.threshold)]
        return [], [_row(name, "not tested", threshold=rule.threshold, metric="effect_size", scope="test:*",
                         note="not tested: the run's association table holds no test")]
    items = []
    for r in at[at["attribute"].isin(attrs)].to_dict("records"):
        d = _num(r.get("gap"))
        it = _Item(rule=f"{name}:{_scope_key(r['scope'])}", key=name, cfg=rule, attribute=str(r["attribute"]), row=r,
                   metric="effect_size", observed=None if d is None else abs(d))
        n = [_int(r.get("n_worst")), _int(r.get("n_best"))]
        n = [x for x in n if x is not None]
        if r.get("status") == "not tested" or d is None:
            it.small = "not tested: " + _reason(r)
        elif n and min(n) < policy.min_group_size:
            it.small = (f"not tested: n_x={_int(r.get('n_worst'))}, n_y={_int(r.get('n_best'))} below "
                        f"min_group_size {policy.min_group_size}")
        items.append(it)
    return items, []


def _apply_holm(items: list[_Item]) -> None:
    """Set each item's p_gate: Holm over the policy family, or the ledger's p_adj."""
    from audit.stats.multiple import holm

    fam: dict[Any, float] = {}
    for it in items:
        if it.cfg.holm_family == "policy" and not it.small and getattr(it.cfg, "require_significance", False):
            p = _num(it.row.get("p_value"))
            if p is not None:
                fam.setdefault(it.row.get("rank", id(it.row)), p)
    keys = list(fam)
    adj = dict(zip(keys, holm(np.array([fam[k] for k in keys], dtype=np.float64)))) if keys else {}
    m = len(keys)
    for it in items:
        k = it.row.get("rank", id(it.row))
        if it.cfg.holm_family == "policy" and k in adj:
            it.p_gate = float(adj[k])
            it.row = {**it.row, "_correction": f"Holm over the {m} test(s) this policy judges"}
        else:
            it.p_gate = _num(it.row.get("p_adj"))
            it.row = {**it.row, "_correction": f"the run's correction ({it.row.get('correction') or 'none'})"}


def _judge(it: _Item) -> None:
    if it.small:
        it.outcome, it.note = "not tested", it.small
        return
    cfg, gap = it.cfg, it.observed
    assert gap is not None
    what = "|d|" if it.key == "max_association_effect_size" else "gap"
    if getattr(cfg, "require_significance", False):
        sig = it.p_gate is not None and it.p_gate < cfg.alpha
        failed = gap > cfg.threshold and sig
        it.note = (f"{what} {'exceeds' if gap > cfg.threshold else 'within'} threshold; "
                   f"{'significant' if sig else 'not significant'} after Holm correction "
                   f"({it.row['_correction']}, alpha {cfg.alpha})")
    elif it.key == "max_association_effect_size":
        failed = gap > cfg.threshold
        it.note = f"|d| {'exceeds' if failed else 'is within'} the threshold"
    else:
        hi = _num(it.row.get("ci_high"))
        failed = hi is None or hi > cfg.threshold
        it.note = ("upper end of the 95% interval "
                   + ("is missing" if hi is None else ("exceeds" if hi > cfg.threshold else "is within"))
                   + " the threshold (require_significance: false)")
    it.outcome = "fail" if failed else "pass"


def _item_row(it: _Item, note: str | None = None, outcome: Outcome | None = None) -> dict[str, Any]:
    r = it.row
    scope = str(r.get("scope") or "overall")
    metric = it.metric
    wg, bg = str(r.get("worst_group") or ""), str(r.get("best_group") or "")
    group = f"{wg} vs {bg}" if wg and bg else wg
    ci_lo, ci_hi = r.get("ci_low"), r.get("ci_high")
    if it.key == "max_association_effect_size" and (_num(r.get("gap")) or 0) < 0:
        lo_, hi_ = _num(ci_lo), _num(ci_hi)
        ci_lo, ci_hi = (None if hi_ is None else -hi_), (None if lo_ is None else -lo_)
    return _row(it.rule, outcome or it.outcome, attribute=it.attribute, metric=metric, scope=scope, group=group,
                observed=it.observed, threshold=it.cfg.threshold, lo=ci_lo, hi=ci_hi, n=r.get("n_worst"),
                n_other=r.get("n_best"), p_value=r.get("p_value"), p_adj=it.p_gate,
                correction=str(r.get("_correction", r.get("correction") or "")), note=note or it.note,
                text=str(r.get("text") or ""))


def _group_rows(items: list[_Item]) -> list[dict[str, Any]]:
    """One verdict row per item, except grouped items (the classes of one attribute): one row for the
    group, showing the deciding class (the failing one with the largest gap, else the largest tested
    gap), the others counted in the note."""
    out: list[dict[str, Any]] = []
    done: set[str] = set()
    for it in items:
        if it.group_by is None:
            out.append(_item_row(it))
            continue
        if it.group_by in done:
            continue
        done.add(it.group_by)
        grp = [x for x in items if x.group_by == it.group_by]
        failed = [x for x in grp if x.outcome == "fail"]
        tested = [x for x in grp if x.outcome != "not tested"]
        pool = failed or tested or grp
        top = max(pool, key=lambda x: -math.inf if x.observed is None else x.observed)
        parts = [f"worst of {len(tested)} tested class(es): {top.note}" if tested else top.note]
        if failed:
            parts.append("failing: " + ", ".join(f"{_scope_key(x.row['scope'])} ({fmt(x.observed)})" for x in failed))
        untested = [x for x in grp if x.outcome == "not tested"]
        if untested and tested:
            parts.append(f"{len(untested)} class(es) not tested: " + ", ".join(_scope_key(x.row["scope"])
                                                                              for x in untested))
        outcome: Outcome = "fail" if failed else ("pass" if tested else "not tested")
        out.append(_item_row(top, note="; ".join(parts), outcome=outcome))
    return out


# --------------------------------------------------------------------------- per-group rules
def _per_class_rows(run: Run, ledger: pd.DataFrame, policy: Policy, attrs: list[str]) -> list[dict[str, Any]]:
    rule = policy.min_per_class_metric
    assert rule is not None
    name = f"min_per_class_metric:{rule.metric}"
    if not run.has_table("group_performance"):
        return [_missing(name, "group_performance", run, metric=rule.metric, scope="class:*",
                         threshold=rule.threshold)]
    perf = run.table("group_performance")
    cells = perf[(perf["metric"] == rule.metric) & ~perf["cls"].astype(str).str.startswith("__")]
    if not _check_metric("min_per_class_metric.metric", rule.metric, set(cells["metric"]), run):
        return [_row(name, "not tested", threshold=rule.threshold, metric=rule.metric, scope="class:*",
                     note=f"not tested: group_performance has no per-class {metric_label(rule.metric)} rows")]
    key = {"ci_high": "ci_high", "point": "value", "ci_low": "ci_low"}[rule.bound]
    what = {"ci_high": "upper end of the 95% interval", "point": "point estimate",
            "ci_low": "lower end of the 95% interval"}[rule.bound]
    rows = []
    for attr in attrs:
        sub = cells[cells["attribute"] == attr].assign(cell=lambda d: d["group"].astype(str) + " / " + d["cls"])
        if sub.empty:
            rows.append(_row(name, "not tested", attribute=attr, metric=rule.metric, scope="class:*",
                             threshold=rule.threshold, note=f"not tested: no per-class rows by {attr}"))
            continue
        ok = sub[(sub["n"] >= policy.min_group_size) & sub[key].notna()]
        small = _small_note(sub, policy.min_group_size, "cell")
        if ok.empty:
            rows.append(_row(name, "not tested", attribute=attr, metric=rule.metric, scope="class:*",
                             threshold=rule.threshold,
                             note=f"not tested: no class x group cell reaches min_group_size "
                                  f"{policy.min_group_size}{small}"))
            continue
        w = ok.assign(_k=ok[key].astype(float), _v=ok["value"].astype(float)).sort_values(
            ["_k", "_v"], kind="stable").iloc[0]  # lowest bound; ties: lowest point estimate
        observed = float(w[key])
        failing = ok[ok[key].astype(float) < rule.threshold]
        failed = len(failing) > 0
        scope = scope_of(str(w["cls"]))
        lr = _ledger_row(ledger, attribute=attr, metric=rule.metric, scope=scope) or {}
        note = (f"lowest cell by {what}: {w['group']} / {w['cls']} (point {fmt(w['value'])}, n={int(w['n'])}) "
                f"{'is below' if failed else 'meets'} the threshold; {len(ok)} cell(s) judged")
        if failed:
            note += f", {len(failing)} below: " + ", ".join(
                f"{g} / {c} ({fmt(v)})" for g, c, v in zip(failing["group"], failing["cls"], failing[key]))
        rows.append(_row(name, "fail" if failed else "pass", attribute=attr, metric=rule.metric, scope=scope,
                         group=str(w["group"]), observed=observed, threshold=rule.threshold, lo=w["ci_low"],
                         hi=w["ci_high"], n=w["n"], p_value=lr.get("p_value"), p_adj=lr.get("p_adj"),
                         correction=str(lr.get("correction") or ""), note=note + small,
                         text=str(lr.get("text") or "")))
    return rows


def _worst_rows(run: Run, ledger: pd.DataFrame, policy: Policy, attrs: list[str]) -> list[dict[str, Any]]:
    rule = policy.min_worst_group_accuracy
    assert rule is not None
    name = f"min_worst_group_{rule.metric}"
    if not run.has_table("group_performance"):
        return [_missing(name, "group_performance", run, metric=rule.metric, threshold=rule.threshold)]
    perf = run.table("group_performance")
    pm = perf[perf["metric"] == rule.metric]
    if not _check_metric("min_worst_group_accuracy.metric", rule.metric, set(perf["metric"]), run):
        return [_row(name, "not tested", threshold=rule.threshold, metric=rule.metric,
                     note=f"not tested: group_performance has no {metric_label(rule.metric)} rows")]
    for cls in ("__all__", "__macro__"):  # the whole-task row, else the macro mean
        if (pm["cls"] == cls).any():
            pm = pm[pm["cls"] == cls]
            break
    rows = []
    key = "ci_low" if rule.bound == "ci_low" else "value"
    what = "lower end of the 95% interval" if rule.bound == "ci_low" else "point estimate"
    for attr in attrs:
        sub = pm[pm["attribute"] == attr]
        if sub.empty:
            rows.append(_row(name, "not tested", attribute=attr, metric=rule.metric, threshold=rule.threshold,
                             note=f"not tested: no {metric_label(rule.metric)} rows by {attr}"))
            continue
        scope = scope_of(str(sub["cls"].iloc[0]))
        ok = sub[(sub["n"] >= policy.min_group_size) & sub["value"].notna()]
        small_note = _small_note(sub, policy.min_group_size)
        if ok.empty:
            rows.append(_row(name, "not tested", attribute=attr, metric=rule.metric, scope=scope,
                             threshold=rule.threshold,
                             note=f"not tested: no group reaches min_group_size {policy.min_group_size}{small_note}"))
            continue
        vals = ok[key].astype(float).fillna(-np.inf)
        w = ok.loc[vals.idxmin()]
        observed = _num(w[key])
        failed = observed is None or observed < rule.threshold
        lr = _ledger_row(ledger, attribute=attr, metric=rule.metric, scope=scope) or {}
        note = (f"worst group by {what} (point {fmt(w['value'])}, n={int(w['n'])}) "
                f"{'is below' if failed else 'meets'} the threshold{small_note}")
        rows.append(_row(name, "fail" if failed else "pass", attribute=attr, metric=rule.metric, scope=scope,
                         group=str(w["group"]), observed=observed, threshold=rule.threshold, lo=w["ci_low"],
                         hi=w["ci_high"], n=w["n"], p_value=lr.get("p_value"), p_adj=lr.get("p_adj"),
                         correction=str(lr.get("correction") or ""), note=note, text=str(lr.get("text") or "")))
    return rows


def _harmful_rows(run: Run, ledger: pd.DataFrame, policy: Policy, attrs: list[str]) -> list[dict[str, Any]]:
    rule = policy.max_harmful_label_rate
    assert rule is not None
    name = "max_harmful_label_rate"
    if not run.has_table("harmful_rates"):
        return [_missing(name, "harmful_rates", run, metric="harmful_label_rate", scope="labels:*",
                         threshold=rule.threshold)]
    hr = run.table("harmful_rates")
    lh = ledger[ledger["kind"] == "harmful_label"]
    rows = []
    for attr in attrs:
        sub = hr[hr["attribute"] == attr]
        lrs = lh[lh["attribute"] == attr]
        lr = lrs.iloc[0].to_dict() if len(lrs) else {}
        scope = str(lr.get("scope") or "labels:*")
        if sub.empty:
            rows.append(_row(name, "not tested", attribute=attr, metric="harmful_label_rate", scope=scope,
                             threshold=rule.threshold, note=f"not tested: no harmful-label rates by {attr}"))
            continue
        ok = sub[(sub["n"] >= policy.min_group_size) & sub["rate"].notna()]
        small_note = _small_note(sub, policy.min_group_size)
        if ok.empty:
            rows.append(_row(name, "not tested", attribute=attr, metric="harmful_label_rate", scope=scope,
                             threshold=rule.threshold,
                             note=f"not tested: no group reaches min_group_size {policy.min_group_size}{small_note}"))
            continue
        key = "rate" if rule.bound == "point" else "ci_high"
        vals = ok[key].astype(float).fillna(np.inf)
        w = ok.loc[vals.idxmax()]
        observed = _num(w[key])
        failed = observed is None or observed > rule.threshold
        note = (f"highest group by {'point estimate' if key == 'rate' else 'upper end of the 95% interval'} "
                f"(rate {fmt(w['rate'])}, n={int(w['n'])}) {'exceeds' if failed else 'is within'} the threshold"
                f"{small_note}")
        rows.append(_row(name, "fail" if failed else "pass", attribute=attr, metric="harmful_label_rate",
                         scope=scope, group=str(w["group"]), observed=observed, threshold=rule.threshold,
                         lo=w["ci_low"], hi=w["ci_high"], n=w["n"], p_value=lr.get("p_value"),
                         p_adj=lr.get("p_adj"), correction=str(lr.get("correction") or ""), note=note,
                         text=str(lr.get("text") or "")))
    return rows


# --------------------------------------------------------------------------- evaluation
def evaluate(run: Run, policy: Policy) -> Verdict:
    """Apply ``policy`` to ``run``.

    Args:
        run: an opened run.
        policy: a validated policy.

    Returns:
        The :class:`Verdict`; ``passed`` is False when any row failed, or when a row was not
        tested and the policy says ``on_missing: fail``.

    Raises:
        ConfigError: the policy names an attribute the run does not have, or a metric
            vision-audit does not compute.

    Example:
        >>> v = evaluate(Run.open("runs/demo/vit-biased"), load_policy("examples/policy.yaml"))  # doctest: +SKIP
        >>> print(v.to_text())                                                                  # doctest: +SKIP
    """
    attrs = _attributes(run, policy)
    ledger = run.findings()
    # gap-type rules: collect the ledger rows first, correct them as one family, then judge them
    items: list[_Item] = []
    early: dict[str, list[dict[str, Any]]] = {}
    builders = {"max_accuracy_gap": _gap_items, "max_classwise_gap": _classwise_items,
                "max_association_effect_size": _association_items}
    for key, build in builders.items():
        if getattr(policy, key) is not None:
            its, rows = build(ledger, policy, attrs, run)
            items += its
            early[key] = rows
    _apply_holm(items)
    for it in items:
        _judge(it)
    per_group = {"min_per_class_metric": _per_class_rows, "min_worst_group_accuracy": _worst_rows,
                 "max_harmful_label_rate": _harmful_rows}
    rows: list[dict[str, Any]] = []
    for key in RULE_KEYS:
        if getattr(policy, key) is None:
            continue
        if key in builders:
            rows += _group_rows([it for it in items if it.key == key]) + early.get(key, [])
        else:
            rows += per_group[key](run, ledger, policy, attrs)
    df = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    df["passed"] = pd.Series([r["passed"] for r in rows], dtype=object, index=df.index)
    for c in ("n", "n_other"):
        df[c] = pd.Series([r[c] for r in rows], dtype=object, index=df.index)
    failed = bool((df["outcome"] == "fail").any())
    untested = bool((df["outcome"] == "not tested").any())
    passed = not failed and not (untested and policy.on_missing == "fail")
    return Verdict(passed=passed, rows=df, policy_name=policy.name, run=str(run.path), on_missing=policy.on_missing,
                   attributes=attrs)


def check(run_dir: str | os.PathLike[str], policy_path: str | os.PathLike[str], *,
          stream: TextIO | None = None, err_stream: TextIO | None = None, as_json: bool = False) -> int:
    """Evaluate a policy file on a run directory and print the verdict (a table, or JSON).

    Returns:
        0 when the policy passes, 1 when it fails, 2 when the input is unusable (the run is
        missing, unfinished or damaged, or the policy is invalid; the message names the file
        and field).
    """
    out = stream if stream is not None else sys.stdout
    err = err_stream if err_stream is not None else sys.stderr
    try:
        policy = load_policy(policy_path)
        run = Run.open(run_dir)
        verdict = evaluate(run, policy)
    except (UsageError, RunError) as exc:
        print(f"error: {exc}", file=err)
        return 2
    except (KeyError, ValueError, OSError) as exc:  # a damaged table: documented columns missing or unreadable
        print(f"error: run {run_dir} cannot be evaluated ({type(exc).__name__}: {exc}); the run is damaged, "
              "run it again", file=err)
        return 2
    except AuditError as exc:
        print(f"error: {exc}", file=err)
        return 2
    print(verdict.to_json() if as_json else verdict.to_text(), file=out)
    return 0 if verdict.passed else 1


__all__ = [
    "KNOWN_METRICS",
    "RULE_KEYS",
    "VERDICT_COLUMNS",
    "AssociationRule",
    "ClasswiseGapRule",
    "GapRule",
    "HarmfulRule",
    "PerClassRule",
    "Policy",
    "Verdict",
    "WorstGroupRule",
    "check",
    "evaluate",
    "load_policy",
]
