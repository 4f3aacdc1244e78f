"""The release gate: ``vision-audit check RUN_DIR --policy policy.yaml``.

A policy is a YAML file of thresholds (validated by pydantic, unknown keys are errors, read
with ``yaml.safe_load``). :func:`evaluate` turns a run and a policy into a :class:`Verdict`;
:func:`check` prints the pass/fail table and returns the exit code: 0 pass, 1 fail,
2 unusable input (missing or damaged run, invalid policy, a policy naming an attribute or
metric the run does not have).

Rule semantics (the same wording is in ``examples/policy.yaml``):

``max_accuracy_gap``
    The max-min gap across groups (the run's ``disparities`` table; groups below the run's
    minimum size are already excluded there), for each metric in ``metrics``.
    ``require_significance: true`` -> fails only when the gap exceeds ``threshold`` AND the
    gap test is significant after Holm correction (adjusted p < ``alpha``). The Holm family
    is set by ``holm_family``: "policy" (default) = the gap tests this rule checks,
    "run" = every test in the run (its ``p_holm`` column).
    ``require_significance: false`` -> fails when the upper end of the gap's 95% interval
    exceeds ``threshold`` (the run must show the gap is small, not merely fail to show it is
    large). This is the stricter setting.
``min_worst_group_accuracy``
    The lowest group value of ``metric`` per attribute. ``bound: ci_low`` (default) fails
    when the lower end of the worst group's 95% interval is below ``threshold``;
    ``bound: point`` compares the point estimate.
``max_harmful_label_rate``
    CLIP runs: the highest group harmful-label rate per attribute, on ``bound`` ("point"
    or "ci_high").
``max_association_effect_size``
    CLIP runs: |effect size d| of each association test; with ``require_significance``
    only tests with p < ``alpha`` can fail.
``min_group_size``
    Groups (and association sets) with fewer images are not judged ("skip" rows, noted):
    no claim is made about them either way.
``on_missing``
    What a rule does when the run lacks its table (e.g. a harmful-label rule on a
    classifier run): "fail" (default) or "skip".
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from audit.errors import AuditError, ConfigError, RunError, UsageError
from audit.report.summary import INTERSECTION_SEP, fmt, fmt_ci
from audit.runs import Run

VERDICT_COLUMNS = ["rule", "attribute", "group", "observed", "threshold", "ci_low", "ci_high", "interval", "p",
                   "passed", "note"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GapRule(_Strict):
    """Maximum max-min gap across groups; see the module docstring for the semantics."""

    threshold: float = Field(gt=0, le=1)
    require_significance: bool = True
    alpha: float = Field(default=0.05, gt=0, lt=1)
    holm_family: Literal["policy", "run"] = "policy"


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
    min_worst_group_accuracy: WorstGroupRule | None = None
    max_harmful_label_rate: HarmfulRule | None = None
    max_association_effect_size: AssociationRule | None = None

    @model_validator(mode="after")
    def _some_rule(self) -> Policy:
        if not any([self.max_accuracy_gap, self.min_worst_group_accuracy, self.max_harmful_label_rate,
                    self.max_association_effect_size]):
            raise ValueError("the policy sets no rule; set at least one of max_accuracy_gap, "
                             "min_worst_group_accuracy, max_harmful_label_rate, max_association_effect_size")
        if not self.metrics:
            raise ValueError("metrics is empty; list at least one metric (e.g. [accuracy])")
        return self


def _show(v: Any, kind: Literal["rate", "p"] = "rate") -> str:
    return "" if _num(v) is None else fmt(v, kind)


@dataclass
class Verdict:
    """The outcome of a policy on a run.

    Attributes:
        passed: True when no row failed.
        rows: one row per check (columns :data:`VERDICT_COLUMNS`); ``passed`` is True,
            False, or None (not judged: too small, or skipped).
        policy_name: the policy's name.
        run: the run directory.
    """

    passed: bool
    rows: pd.DataFrame
    policy_name: str = ""
    run: str = ""

    @property
    def n_failed(self) -> int:
        return int((self.rows["passed"] == False).sum())

    def to_text(self) -> str:
        """A plain-text pass/fail table with a summary line."""
        head = ["RESULT", "RULE", "ATTRIBUTE", "GROUP", "OBSERVED", "THRESHOLD", "95% INTERVAL", "P", "NOTE"]
        body = []
        for r in self.rows.to_dict("records"):
            res = "PASS" if r["passed"] is True else "FAIL" if r["passed"] is False else "SKIP"
            body.append([res, r["rule"], r["attribute"], r["group"], _show(r["observed"]), _show(r["threshold"]),
                         r["interval"], _show(r["p"], "p"), r["note"]])
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)] if body else [len(h) for h in head]
        widths[-1] = min(widths[-1], 200)
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths)).rstrip(),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in body]
        n = len(self.rows)
        n_skip = int(self.rows["passed"].isna().sum()) if n else 0
        status = "PASSED" if self.passed else "FAILED"
        title = f"policy {self.policy_name!r} " if self.policy_name else "policy "
        lines.append("")
        lines.append(f"{title}{status} on {self.run}: {self.n_failed} of {n} check(s) failed, {n_skip} not judged")
        return "\n".join(lines)


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


# --------------------------------------------------------------------------- evaluation
def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _row(rule: str, attribute: str, group: str, observed: Any, threshold: float, lo: Any, hi: Any, p: Any,
         passed: bool | None, note: str) -> dict[str, Any]:
    lo, hi = _num(lo), _num(hi)
    return dict(rule=rule, attribute=attribute, group=group, observed=_num(observed), threshold=float(threshold),
                ci_low=lo, ci_high=hi, interval=fmt_ci(lo, hi) if lo is not None or hi is not None else "",
                p=_num(p), passed=passed, note=note)


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
        import itertools

        attrs += [INTERSECTION_SEP.join(c) for c in itertools.combinations(cols, 2)
                  if INTERSECTION_SEP.join(c) not in attrs]
    return attrs


def _missing(rule: str, table: str, policy: Policy, run: Run) -> dict[str, Any]:
    fail = policy.on_missing == "fail"
    return _row(rule, "", "", None, float("nan"), None, None, None, False if fail else None,
                f"not measured: run {run.path.name} has no {table} table"
                + ("; on_missing: fail" if fail else "; skipped (on_missing: skip)"))


def _headline_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One metric's rows a policy judges: the whole-task ``__all__`` rows where they exist (multiclass
    accuracy, balanced accuracy, ECE), else the ``__macro__`` mean of the one-vs-rest rows, else the
    per-class rows. Balanced accuracy has both ``__all__`` and ``__macro__`` rows; judging both would
    list the same gap twice under one name."""
    for cls in ("__all__", "__macro__"):
        rows = df[df.cls == cls]
        if len(rows):
            return rows
    return df


def _cls_label(cls: str) -> str:
    return "macro" if cls == "__macro__" else str(cls)


def _group_n(perf: pd.DataFrame, attribute: str, group: str, metric: str, cls: str) -> int | None:
    sel = perf[(perf.attribute == attribute) & (perf.group == group) & (perf.metric == metric) & (perf.cls == cls)]
    return int(sel.n.iloc[0]) if len(sel) else None


def _gap_rows(run: Run, policy: Policy, attrs: list[str]) -> list[dict[str, Any]]:
    from audit.stats.multiple import holm

    rule = policy.max_accuracy_gap
    assert rule is not None
    name = "max_accuracy_gap"
    if not run.has_table("disparities"):
        return [_missing(name, "disparities", policy, run)]
    disp = run.table("disparities")
    perf = run.table("group_performance") if run.has_table("group_performance") else None
    unknown = [m for m in policy.metrics if m not in set(disp.metric)]
    if unknown:
        raise ConfigError(f"policy field 'metrics': {', '.join(map(repr, unknown))} not tested in run "
                          f"{run.path} (tested: {', '.join(sorted(set(disp.metric)))})")
    sel = [_headline_rows(disp[disp.metric == m]) for m in policy.metrics]
    d = pd.concat(sel)
    d = d[d.attribute.isin(attrs)].reset_index(drop=True)
    if rule.holm_family == "policy":
        d["p_gate"] = holm(d["p_value"].astype(float).to_numpy())
        family = f"Holm over the {int(d.p_value.notna().sum())} gap test(s) of this policy"
    else:
        d["p_gate"] = d["p_holm"].astype(float)
        family = "Holm over all tests of the run"
    rows = []
    for r in d.to_dict("records"):
        metric = r["metric"] if r["cls"] == "__all__" else f"{r['metric']}[{_cls_label(r['cls'])}]"
        group = f"{r['max_group']} vs {r['min_group']}" if r["max_group"] else ""
        diff, p = _num(r["difference"]), _num(r["p_gate"])
        base = (f"{name}:{metric}", r["attribute"], group, diff, rule.threshold, r["diff_ci_low"], r["diff_ci_high"], p)
        if diff is None:
            rows.append(_row(*base, None, f"not tested: {r.get('note') or 'fewer than 2 groups of sufficient size'}"))
            continue
        small = []
        if perf is not None:
            for g in (r["max_group"], r["min_group"]):
                n = _group_n(perf, r["attribute"], g, r["metric"], r["cls"])
                if n is not None and n < policy.min_group_size:
                    small.append(f"{g} (n={n})")
        if small:
            rows.append(_row(*base, None, f"not judged: {', '.join(small)} below the policy's min_group_size "
                                          f"{policy.min_group_size}; rerun with a larger sample"))
            continue
        hi = _num(r["diff_ci_high"])
        if rule.require_significance:
            sig = p is not None and p < rule.alpha
            failed = diff > rule.threshold and sig
            note = (f"gap {'exceeds' if diff > rule.threshold else 'within'} threshold; "
                    f"{'significant' if sig else 'not significant'} after Holm correction "
                    f"({family}, alpha {rule.alpha})")
        else:
            failed = hi is None or hi > rule.threshold
            note = ("upper end of the 95% interval "
                    + ("is missing" if hi is None else ("exceeds" if hi > rule.threshold else "is within"))
                    + " the threshold (require_significance: false)")
        rows.append(_row(*base, not failed, note))
    if not rows:
        raise ConfigError(f"policy fields 'attributes'/'metrics' select no gap test in run {run.path}")
    return rows


def _worst_rows(run: Run, policy: Policy, attrs: list[str]) -> list[dict[str, Any]]:
    rule = policy.min_worst_group_accuracy
    assert rule is not None
    name = f"min_worst_group_{rule.metric}"
    if not run.has_table("group_performance"):
        return [_missing(name, "group_performance", policy, run)]
    perf = run.table("group_performance")
    pm = perf[perf.metric == rule.metric]
    if pm.empty:
        raise ConfigError(f"policy field 'min_worst_group_accuracy.metric': {rule.metric!r} not in run {run.path} "
                          f"(metrics: {', '.join(sorted(set(perf.metric)))})")
    pm = _headline_rows(pm)
    rows = []
    for attr in attrs:
        sub = pm[pm.attribute == attr]
        if sub.empty:
            continue
        ok = sub[(sub.n >= policy.min_group_size) & sub.value.notna()]
        small = sub[sub.n < policy.min_group_size]
        small_note = (f"; not judged (n < {policy.min_group_size}): "
                      + ", ".join(f"{g} (n={n})" for g, n in zip(small.group, small.n))) if len(small) else ""
        if ok.empty:
            rows.append(_row(name, attr, "", None, rule.threshold, None, None, None, None,
                             f"no group reaches min_group_size {policy.min_group_size}{small_note}"))
            continue
        key = "ci_low" if rule.bound == "ci_low" else "value"
        vals = ok[key].astype(float).fillna(-np.inf)
        w = ok.loc[vals.idxmin()]
        observed = float(w[key]) if np.isfinite(w[key]) else None
        failed = observed is None or observed < rule.threshold
        what = "lower end of the 95% interval" if rule.bound == "ci_low" else "point estimate"
        note = (f"worst group by {what} (point {fmt(w['value'])}, n={int(w['n'])}) "
                f"{'is below' if failed else 'meets'} the threshold{small_note}")
        rows.append(_row(name, attr, str(w["group"]), observed, rule.threshold, w["ci_low"], w["ci_high"], None,
                         not failed, note))
    return rows


def _harmful_rows(run: Run, policy: Policy, attrs: list[str]) -> list[dict[str, Any]]:
    rule = policy.max_harmful_label_rate
    assert rule is not None
    name = "max_harmful_label_rate"
    if not run.has_table("harmful_rates"):
        return [_missing(name, "harmful_rates", policy, run)]
    hr = run.table("harmful_rates")
    rows = []
    for attr in attrs:
        sub = hr[hr.attribute == attr]
        if sub.empty:
            continue
        ok = sub[(sub.n >= policy.min_group_size) & sub.rate.notna()]
        small = sub[sub.n < policy.min_group_size]
        small_note = (f"; not judged (n < {policy.min_group_size}): "
                      + ", ".join(f"{g} (n={n})" for g, n in zip(small.group, small.n))) if len(small) else ""
        if ok.empty:
            rows.append(_row(name, attr, "", None, rule.threshold, None, None, None, None,
                             f"no group reaches min_group_size {policy.min_group_size}{small_note}"))
            continue
        key = "rate" if rule.bound == "point" else "ci_high"
        vals = ok[key].astype(float).fillna(np.inf)
        w = ok.loc[vals.idxmax()]
        observed = _num(w[key])
        failed = observed is None or observed > rule.threshold
        note = (f"highest group by {'point estimate' if key == 'rate' else 'upper end of the 95% interval'} "
                f"(rate {fmt(w['rate'])}, n={int(w['n'])}) {'exceeds' if failed else 'is within'} the threshold"
                f"{small_note}")
        rows.append(_row(name, attr, str(w["group"]), observed, rule.threshold, w["ci_low"], w["ci_high"], None,
                         not failed, note))
    return rows


def _association_rows(run: Run, policy: Policy, attrs: list[str]) -> list[dict[str, Any]]:
    rule = policy.max_association_effect_size
    assert rule is not None
    name = "max_association_effect_size"
    if not run.has_table("association"):
        return [_missing(name, "association", policy, run)]
    at = run.table("association")
    rows = []
    for r in at.to_dict("records"):
        if r["attribute"] not in attrs:
            continue
        d, p = _num(r["effect_size"]), _num(r["p_value"])
        group = f"{r['X']} vs {r['Y']}"
        label = f"{name}:{r['test']}"
        if min(int(r["n_x"]), int(r["n_y"])) < policy.min_group_size:
            rows.append(_row(label, r["attribute"], group, None if d is None else abs(d), rule.threshold, None, None,
                             p, None, f"not judged: n_x={r['n_x']}, n_y={r['n_y']} below min_group_size "
                                      f"{policy.min_group_size}"))
            continue
        exceeds = d is None or abs(d) > rule.threshold
        if rule.require_significance:
            sig = p is not None and p < rule.alpha
            failed = exceeds and sig
            note = (f"|d| {'exceeds' if exceeds else 'within'} threshold; p "
                    f"{'<' if sig else '>='} alpha {rule.alpha}")
        else:
            failed = exceeds
            note = f"|d| {'exceeds' if exceeds else 'is within'} the threshold"
        rows.append(_row(label, r["attribute"], group, None if d is None else abs(d), rule.threshold, None, None, p,
                         not failed, note))
    return rows


def evaluate(run: Run, policy: Policy) -> Verdict:
    """Apply ``policy`` to ``run``.

    Args:
        run: an opened run.
        policy: a validated policy.

    Returns:
        The :class:`Verdict`; ``passed`` is False when any row failed.

    Raises:
        ConfigError: the policy names an attribute or metric the run does not have.

    Example:
        >>> v = evaluate(Run.open("runs/demo/vit-biased"), load_policy("examples/policy.yaml"))  # doctest: +SKIP
        >>> print(v.to_text())                                                                  # doctest: +SKIP
    """
    attrs = _attributes(run, policy)
    rows: list[dict[str, Any]] = []
    if policy.max_accuracy_gap is not None:
        rows += _gap_rows(run, policy, attrs)
    if policy.min_worst_group_accuracy is not None:
        rows += _worst_rows(run, policy, attrs)
    if policy.max_harmful_label_rate is not None:
        rows += _harmful_rows(run, policy, attrs)
    if policy.max_association_effect_size is not None:
        rows += _association_rows(run, policy, attrs)
    df = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    df["passed"] = df["passed"].astype(object)
    passed = not any(x is False for x in df["passed"])
    return Verdict(passed=passed, rows=df, policy_name=policy.name, run=str(run.path))


def check(run_dir: str | os.PathLike[str], policy_path: str | os.PathLike[str], *,
          stream: TextIO | None = None, err_stream: TextIO | None = None) -> int:
    """Evaluate a policy file on a run directory and print the table.

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
    print(verdict.to_text(), file=out)
    return 0 if verdict.passed else 1


__all__ = [
    "VERDICT_COLUMNS",
    "AssociationRule",
    "GapRule",
    "HarmfulRule",
    "Policy",
    "Verdict",
    "WorstGroupRule",
    "check",
    "evaluate",
    "load_policy",
]
