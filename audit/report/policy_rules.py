"""The rows of a policy verdict, rule by rule, read from the run's findings ledger and its
per-group tables (semantics: :mod:`audit.report.policy`)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from audit.errors import ConfigError
from audit.findings import metric_label, scope_of
from audit.report.policy_schema import (
    FAMILY_ORDER,
    KNOWN_METRICS,
    LEDGER_ALIAS,
    SCOPE_ORDER,
    SOURCE,
    Outcome,
    Policy,
)
from audit.report.summary import INTERSECTION_SEP, fmt, fmt_ci
from audit.runs import Run


# --------------------------------------------------------------------------- helpers
def num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(v: Any) -> int | None:
    f = num(v)
    return None if f is None else int(f)


def _row(rule: str, outcome: Outcome, *, attribute: str = "", metric: str = "", scope: str = "overall",
         group: str = "", observed: Any = None, threshold: float = float("nan"), lo: Any = None, hi: Any = None,
         n: Any = None, n_other: Any = None, p_value: Any = None, p_adj: Any = None, correction: str = "",
         note: str = "", text: str = "") -> dict[str, Any]:
    lo, hi = num(lo), num(hi)
    return {"rule": rule, "outcome": outcome, "attribute": attribute, "metric": metric, "scope": scope,
            "metric_label": metric_label(metric, scope) if metric else "", "group": group,
            "observed": num(observed), "threshold": float(threshold), "ci_low": lo, "ci_high": hi,
            "interval": fmt_ci(lo, hi) if lo is not None or hi is not None else "", "n": _int(n),
            "n_other": _int(n_other), "p_value": num(p_value), "p_adj": num(p_adj), "correction": correction,
            "passed": {"pass": True, "fail": False}.get(outcome), "note": note, "text": text,
            "p": num(p_adj)}  # the older name of p_adj


def attributes(run: Run, policy: Policy) -> list[str]:
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
    for f in FAMILY_ORDER:
        sel = rows[rows["family"] == f]
        if len(sel):
            return sel
    return rows


def _pick_scope(rows: pd.DataFrame) -> pd.DataFrame:
    """A metric's rows a gap rule judges per attribute: the whole-task row, else the macro mean, else
    the non-class rows, else the class rows (balanced accuracy has overall and macro rows: judging both
    would list one gap twice under one name)."""
    for s in SCOPE_ORDER:
        sel = rows[rows["scope"] == s]
        if len(sel):
            return sel
    other = rows[~rows["scope"].str.startswith("class:")]
    return other if len(other) else rows


def _ledger_row(ledger: pd.DataFrame, *, attribute: str, metric: str, scope: str) -> dict[str, Any] | None:
    """The ledger's row for one comparison (its preferred gap family), or None."""
    sel = ledger[(ledger["attribute"] == attribute) & (ledger["metric"] == LEDGER_ALIAS.get(metric, metric))
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
class Item:
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


def gap_items(ledger: pd.DataFrame, policy: Policy, attrs: list[str], run: Run) -> tuple[list[Item], list[dict]]:
    rule = policy.max_accuracy_gap
    assert rule is not None
    items: list[Item] = []
    rows: list[dict] = []
    available = set(ledger["metric"]) | {a for a, m in LEDGER_ALIAS.items() if m in set(ledger["metric"])}
    for metric in rule.metrics or policy.metrics:
        name = f"max_accuracy_gap:{metric}"
        if not _check_metric("max_accuracy_gap.metrics" if rule.metrics else "metrics", metric, available, run):
            src = SOURCE.get(metric, "disparities")
            rows.append(_missing(name, src, run, metric=metric, threshold=rule.threshold)
                        if not run.has_table(src) else
                        _row(name, "not tested", threshold=rule.threshold, metric=metric,
                             note=f"not tested: the run's {src} table has no {metric_label(metric)} comparison"))
            continue
        lm = ledger[ledger["metric"] == LEDGER_ALIAS.get(metric, metric)]
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
          group_by: str | None = None) -> Item:
    gap = num(r.get("gap"))
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
    return Item(rule=name, key=key, cfg=cfg, attribute=attr, row=r, metric=metric, observed=gap, small=small,
                 group_by=group_by)


def _reason(r: dict[str, Any]) -> str:
    """The ledger's reason for an untested row: the parenthesis of its sentence, else a default."""
    text = str(r.get("text") or "")
    if "not tested (" in text:
        return text.split("not tested (", 1)[1].rsplit(")", 1)[0]
    return "too few groups large enough to compare"


def classwise_items(ledger: pd.DataFrame, policy: Policy, attrs: list[str], run: Run) -> tuple[list[Item], list]:
    rule = policy.max_classwise_gap
    assert rule is not None
    name = f"max_classwise_gap:{rule.metric}"
    metric = LEDGER_ALIAS.get(rule.metric, rule.metric)
    cls_rows = ledger[ledger["scope"].str.startswith("class:")]
    if not _check_metric("max_classwise_gap.metric", rule.metric, set(cls_rows["metric"]) | set(ledger["metric"])
                         | {a for a, m in LEDGER_ALIAS.items() if m in set(cls_rows["metric"])}, run):
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


def association_items(ledger: pd.DataFrame, policy: Policy, attrs: list[str], run: Run) -> tuple[list, list]:
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
        d = num(r.get("gap"))
        it = Item(rule=f"{name}:{_scope_key(r['scope'])}", key=name, cfg=rule, attribute=str(r["attribute"]), row=r,
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


def apply_holm(items: list[Item]) -> None:
    """Set each item's p_gate: Holm over the policy family, or the ledger's p_adj."""
    from audit.stats.multiple import holm

    fam: dict[Any, float] = {}
    for it in items:
        if it.cfg.holm_family == "policy" and not it.small and getattr(it.cfg, "require_significance", False):
            p = num(it.row.get("p_value"))
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
            it.p_gate = num(it.row.get("p_adj"))
            it.row = {**it.row, "_correction": f"the run's correction ({it.row.get('correction') or 'none'})"}


def judge(it: Item) -> None:
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
        hi = num(it.row.get("ci_high"))
        failed = hi is None or hi > cfg.threshold
        it.note = ("upper end of the 95% interval "
                   + ("is missing" if hi is None else ("exceeds" if hi > cfg.threshold else "is within"))
                   + " the threshold (require_significance: false)")
    it.outcome = "fail" if failed else "pass"


def _item_row(it: Item, note: str | None = None, outcome: Outcome | None = None) -> dict[str, Any]:
    r = it.row
    scope = str(r.get("scope") or "overall")
    metric = it.metric
    wg, bg = str(r.get("worst_group") or ""), str(r.get("best_group") or "")
    group = f"{wg} vs {bg}" if wg and bg else wg
    ci_lo, ci_hi = r.get("ci_low"), r.get("ci_high")
    if it.key == "max_association_effect_size" and (num(r.get("gap")) or 0) < 0:
        lo_, hi_ = num(ci_lo), num(ci_hi)
        ci_lo, ci_hi = (None if hi_ is None else -hi_), (None if lo_ is None else -lo_)
    return _row(it.rule, outcome or it.outcome, attribute=it.attribute, metric=metric, scope=scope, group=group,
                observed=it.observed, threshold=it.cfg.threshold, lo=ci_lo, hi=ci_hi, n=r.get("n_worst"),
                n_other=r.get("n_best"), p_value=r.get("p_value"), p_adj=it.p_gate,
                correction=str(r.get("_correction", r.get("correction") or "")), note=note or it.note,
                text=str(r.get("text") or ""))


def group_rows(items: list[Item]) -> list[dict[str, Any]]:
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
def per_class_rows(run: Run, ledger: pd.DataFrame, policy: Policy, attrs: list[str]) -> list[dict[str, Any]]:
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


def worst_rows(run: Run, ledger: pd.DataFrame, policy: Policy, attrs: list[str]) -> list[dict[str, Any]]:
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
        observed = num(w[key])
        failed = observed is None or observed < rule.threshold
        lr = _ledger_row(ledger, attribute=attr, metric=rule.metric, scope=scope) or {}
        note = (f"worst group by {what} (point {fmt(w['value'])}, n={int(w['n'])}) "
                f"{'is below' if failed else 'meets'} the threshold{small_note}")
        rows.append(_row(name, "fail" if failed else "pass", attribute=attr, metric=rule.metric, scope=scope,
                         group=str(w["group"]), observed=observed, threshold=rule.threshold, lo=w["ci_low"],
                         hi=w["ci_high"], n=w["n"], p_value=lr.get("p_value"), p_adj=lr.get("p_adj"),
                         correction=str(lr.get("correction") or ""), note=note, text=str(lr.get("text") or "")))
    return rows


def harmful_rows(run: Run, ledger: pd.DataFrame, policy: Policy, attrs: list[str]) -> list[dict[str, Any]]:
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
        observed = num(w[key])
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


def slice_rows(run: Run, ledger: pd.DataFrame, policy: Policy, attrs: list[str]) -> list[dict[str, Any]]:
    """``max_confirmed_slice_gap``: one row per error slice confirmed on the held-out half (the ledger's
    ``slice`` rows); a slice that did not confirm cannot fail. No confirmed slice: one passing row."""
    rule = policy.max_confirmed_slice_gap
    assert rule is not None
    name, metric = "max_confirmed_slice_gap", "error_rate"
    if not run.has_table("slices"):
        why = run.meta.get("slices", {}).get("skipped") or "the run has no slices table (slices.enabled, or an older run)"
        return [_row(name, "not tested", metric=metric, threshold=rule.threshold, note=f"not tested: {why}")]
    ls = ledger[ledger["kind"] == "slice"]
    confirmed = ls[ls["significant"]]
    if confirmed.empty:
        tested = int((ls["status"] != "not tested").sum())
        return [_row(name, "pass", metric=metric, threshold=rule.threshold,
                     note=f"no error slice confirmed on the held-out half ({tested} candidate(s) tested, "
                          f"{len(ls) - tested} too small to test)")]
    rows = []
    for r in confirmed.to_dict("records"):
        observed = num(r["gap"] if rule.bound == "point" else r["ci_low"])
        failed = observed is None or observed > rule.threshold
        what = "difference" if rule.bound == "point" else "lower end of the difference's 95% interval"
        rows.append(_row(name, "fail" if failed else "pass", metric=metric, scope=str(r["scope"]),
                         group=str(r["worst_group"]), observed=observed, threshold=rule.threshold,
                         lo=r["ci_low"], hi=r["ci_high"], n=r["n_worst"], n_other=r["n_best"],
                         p_value=r["p_value"], p_adj=r["p_adj"], correction=str(r["correction"]),
                         note=f"confirmed slice's error-rate {what} {fmt(observed)} "
                              f"{'exceeds' if failed else 'is within'} the threshold",
                         text=str(r["text"])))
    return rows
