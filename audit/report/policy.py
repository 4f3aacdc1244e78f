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

``max_confirmed_slice_gap``
    Runs with labels: every error slice confirmed on the held-out half (the ledger's ``slice``
    rows; Benjamini-Hochberg over the candidates) whose error-rate difference to the rest of its
    scope exceeds ``threshold`` fails (``bound``: ``point``, default, or ``ci_low``: only a slice
    whose whole interval is above the threshold). Unconfirmed slices cannot fail; no confirmed slice
    passes. A run without a ``slices`` table (label-free, ``slices.enabled: false``) is not tested.

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

import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import numpy as np
import pandas as pd

from audit.errors import AuditError, RunError, UsageError
from audit.report.policy_rules import (
    Item,
    apply_holm,
    association_items,
    attributes,
    classwise_items,
    gap_items,
    group_rows,
    harmful_rows,
    judge,
    num,
    per_class_rows,
    slice_rows,
    worst_rows,
)
from audit.report.policy_schema import (
    KNOWN_METRICS,
    RULE_KEYS,
    VERDICT_COLUMNS,
    AssociationRule,
    ClasswiseGapRule,
    GapRule,
    HarmfulRule,
    PerClassRule,
    Policy,
    WorstGroupRule,
    load_policy,
)
from audit.report.summary import fmt
from audit.runs import Run


# --------------------------------------------------------------------------- verdict
def _show(v: Any, kind: Literal["rate", "p"] = "rate") -> str:
    return "" if num(v) is None else fmt(v, kind)


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
    attrs = attributes(run, policy)
    ledger = run.findings()
    # gap-type rules: collect the ledger rows first, correct them as one family, then judge them
    items: list[Item] = []
    early: dict[str, list[dict[str, Any]]] = {}
    builders = {"max_accuracy_gap": gap_items, "max_classwise_gap": classwise_items,
                "max_association_effect_size": association_items}
    for key, build in builders.items():
        if getattr(policy, key) is not None:
            its, rows = build(ledger, policy, attrs, run)
            items += its
            early[key] = rows
    apply_holm(items)
    for it in items:
        judge(it)
    per_group = {"min_per_class_metric": per_class_rows, "min_worst_group_accuracy": worst_rows,
                 "max_harmful_label_rate": harmful_rows, "max_confirmed_slice_gap": slice_rows}
    rows: list[dict[str, Any]] = []
    for key in RULE_KEYS:
        if getattr(policy, key) is None:
            continue
        if key in builders:
            rows += group_rows([it for it in items if it.key == key]) + early.get(key, [])
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
