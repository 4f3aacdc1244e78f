"""The policy gate: exit codes on the biased and control runs, rule semantics, invalid input.

Most checks run on the factory's runs (tests/run_factory.py) or on small runs written by hand
here (``_hand_run``: ``group_performance`` and ``disparities`` tables with chosen per-class
recalls, so a rule's verdict can be checked against a known answer). The gate reads the
findings ledger; the expectations below are stated against the ledger's columns, never against
the exact values of ``disparities`` (whose columns evolve).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.errors import ConfigError
from audit.findings import metric_label
from audit.report.policy import VERDICT_COLUMNS, Policy, check, evaluate, load_policy
from audit.runs import Run
from tests.run_factory import shared_run

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"
CLASSES = ["circle", "square", "triangle", "cross"]


@pytest.fixture(scope="module")
def biased():
    return shared_run(kind="classifier", biased=True)


@pytest.fixture(scope="module")
def control():
    return shared_run(kind="classifier", biased=False)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def _holm(p: list[float]) -> list[float]:
    """Holm step-down written out independently for the check."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


# --------------------------------------------------------------------------- hand-made runs
def _ci(p: float, n: int) -> tuple[float, float]:
    h = 1.96 * math.sqrt(max(p * (1 - p), 0.25 / n) / n)
    return max(0.0, p - h), min(1.0, p + h)


def _hand_run(path: Path, *, groups: dict[str, list[str]], recall, n: int | dict[str, int] = 102) -> Run:
    """A classifier run with only ``group_performance`` and ``disparities`` (and so a computed ledger).

    Args:
        groups: ``{attribute: [group, ...]}``: the run's group columns (any names).
        recall: ``recall(attribute, group, cls) -> float``: per-class recall (TPR) of each cell.
        n: images per class in each group (one number, or ``{group: n}``).
    """
    size = (lambda g: n) if isinstance(n, int) else (lambda g: n[g])
    gp, disp = [], []
    for attr, gs in groups.items():
        vals = {}
        for g in gs:
            ng = size(g)
            for c in CLASSES:
                v = float(recall(attr, g, c))
                lo, hi = _ci(v, ng)
                vals[(g, "tpr", c)] = (v, ng)
                gp.append({"attribute": attr, "group": g, "metric": "tpr", "cls": c, "value": v, "ci_low": lo,
                           "ci_high": hi, "n": ng, "n_rows": 4 * ng, "small": ng < 50, "note": ""})
            acc = float(np.mean([vals[(g, "tpr", c)][0] for c in CLASSES]))
            for metric in ("accuracy", "balanced_accuracy"):
                nn = 4 * ng if metric == "accuracy" else ng
                lo, hi = _ci(acc, nn)
                vals[(g, metric, "__all__")] = (acc, nn)
                gp.append({"attribute": attr, "group": g, "metric": metric, "cls": "__all__", "value": acc,
                           "ci_low": lo, "ci_high": hi, "n": nn, "n_rows": 4 * ng, "small": nn < 50, "note": ""})
        for metric, cls in [("accuracy", "__all__"), ("balanced_accuracy", "__all__")] + [("tpr", c) for c in CLASSES]:
            ok = [(g, *vals[(g, metric, cls)]) for g in gs if vals[(g, metric, cls)][1] >= 50]
            row = {"attribute": attr, "metric": metric, "cls": cls, "k": len(ok), "n_excluded": len(gs) - len(ok),
                   "test": "hand-written", "note": ""}
            if len(ok) < 2:
                row.update(max_group="", min_group="", max_value=np.nan, min_value=np.nan, difference=np.nan,
                           diff_ci_low=np.nan, diff_ci_high=np.nan, p_value=np.nan, p_holm=np.nan, significant=False,
                           note="fewer than 2 groups with n >= min_group_size=50")
            else:
                hi_g = max(ok, key=lambda t: t[1])
                lo_g = min(ok, key=lambda t: t[1])
                gap = hi_g[1] - lo_g[1]
                p = 1e-4 if gap > 0.1 else 0.6
                row.update(max_group=hi_g[0], min_group=lo_g[0], max_value=hi_g[1], min_value=lo_g[1],
                           difference=gap, diff_ci_low=max(0.0, gap - 0.07), diff_ci_high=gap + 0.07, p_value=p,
                           significant=False)
            disp.append(row)
    d = pd.DataFrame(disp)
    from audit.stats.multiple import holm

    d["p_holm"] = holm(d["p_value"].to_numpy(np.float64))
    d["significant"] = d["p_holm"] < 0.05
    run = Run.create(path, overwrite=True)
    run.write_table("group_performance", pd.DataFrame(gp))
    run.write_table("disparities", d)
    run.meta.update({"config": {"stats": {"min_group_size": 50, "alpha": 0.05}},
                     "dataset": {"group_columns": list(groups)},
                     "model": {"kind": "classifier", "class_names": CLASSES, "name": path.name}})
    run.finish("complete")
    return Run.open(path)


def _vit_biased_like(attr: str, g: str, c: str) -> float:
    """The canary's planted cell: triangles on dotted ground recalled 0.14, every other cell ~0.97."""
    if attr == "background" and g == "dotted" and c == "triangle":
        return 0.14
    return 0.97 + 0.01 * (CLASSES.index(c) % 2)


def _control_like(attr: str, g: str, c: str) -> float:
    return 0.97 + 0.01 * (CLASSES.index(c) % 2)


GROUNDS = {"background": ["plain", "striped", "dotted"], "colour": ["red", "green", "blue"]}


@pytest.fixture(scope="module")
def hand_biased(tmp_path_factory):
    return _hand_run(tmp_path_factory.mktemp("hand") / "vit-biased-like", groups=GROUNDS, recall=_vit_biased_like)


@pytest.fixture(scope="module")
def hand_control(tmp_path_factory):
    return _hand_run(tmp_path_factory.mktemp("hand") / "vit-control-like", groups=GROUNDS, recall=_control_like)


# --------------------------------------------------------------------------- the example policy
def test_example_policy_fails_biased_and_passes_control(biased, control) -> None:
    out = io.StringIO()
    assert check(biased.path, EXAMPLE, stream=out) == 1
    text = out.getvalue()
    assert "FAIL" in text and "FAILED" in text and "water" in text
    out = io.StringIO()
    assert check(control.path, EXAMPLE, stream=out) == 0
    assert "PASSED" in out.getvalue() and "FAIL " not in out.getvalue()


def test_example_policy_names_no_attribute() -> None:
    import yaml

    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert "attributes" not in data  # portable: every group column of the run
    assert {"max_classwise_gap", "min_per_class_metric"} <= set(data)


def test_example_policy_runs_on_other_group_columns(tmp_path) -> None:
    """A dataset whose group columns have other names: exit 0 or 1 (never 2), every column judged."""
    cols = {"skin_tone": ["I-II", "III-IV", "V-VI"], "site": ["north", "south"]}
    fine = _hand_run(tmp_path / "fine", groups=cols, recall=lambda a, g, c: 0.95)
    bad = _hand_run(tmp_path / "bad", groups=cols,
                    recall=lambda a, g, c: 0.2 if (g, c) == ("V-VI", "cross") else 0.95)
    out = io.StringIO()
    assert check(fine.path, EXAMPLE, stream=out, err_stream=io.StringIO()) == 0
    v = evaluate(fine, load_policy(EXAMPLE))
    assert set(v.attributes) == set(cols) and set(v.rows.attribute) - {""} == set(cols)
    assert check(bad.path, EXAMPLE, stream=io.StringIO()) == 1
    v = evaluate(bad, load_policy(EXAMPLE))
    failed = v.rows[v.rows.outcome == "fail"]
    assert {"max_classwise_gap:tpr", "min_per_class_metric:tpr"} <= set(failed.rule)
    assert (failed[failed.rule == "min_per_class_metric:tpr"].metric_label == metric_label("tpr", "class:cross")).all()


@pytest.mark.slow
def test_example_policy_on_the_canaries(canary_runs) -> None:
    """The demo's four canaries (built once per session by tests/conftest.py).

    vit-biased fails because of the planted cell (recall of 'triangle' on 'dotted'), clip-biased
    because of the harmful-label rate on 'dotted'; vit-control passes. clip-control is clean for
    the ground, but by construction (docs/ZOO.md: "concept words ... tied to red objects instead")
    its model gives every red object a concept ("harmful") label: the ledger's first finding, and
    the gate fails on the harmful-label rate and on nothing else.
    """
    codes, verdicts = {}, {}
    policy = load_policy(EXAMPLE)
    for name in ("vit-biased", "vit-control", "clip-biased", "clip-control"):
        codes[name] = check(canary_runs[name], EXAMPLE, stream=io.StringIO())
        verdicts[name] = evaluate(Run.open(canary_runs[name]), policy).rows
    assert codes == {"vit-biased": 1, "vit-control": 0, "clip-biased": 1, "clip-control": 1}
    vb = verdicts["vit-biased"]
    tri = vb[(vb.outcome == "fail") & (vb.attribute == "background")
             & (vb.metric_label == metric_label("tpr", "class:triangle"))]
    assert {"max_classwise_gap:tpr", "min_per_class_metric:tpr"} <= set(tri.rule)
    cell = tri[tri.rule == "min_per_class_metric:tpr"].iloc[0]
    assert cell.group == "dotted" and cell.ci_high < 0.5 and cell.n >= 50
    assert "triangle" in cell.text and "dotted" in cell.text
    assert (verdicts["vit-control"].outcome != "fail").all()
    cb = verdicts["clip-biased"]
    harm = cb[(cb.rule == "max_harmful_label_rate") & (cb.attribute == "background")].iloc[0]
    assert harm.outcome == "fail" and harm.group == "dotted" and harm.observed > 0.1  # 0.15 (docs/ZOO.md)
    cc = verdicts["clip-control"]
    assert set(cc[cc.outcome == "fail"].rule) == {"max_harmful_label_rate"}
    red = cc[(cc.rule == "max_harmful_label_rate") & (cc.attribute == "colour")].iloc[0]
    assert red.outcome == "fail" and red.group == "red"
    assert (cc[cc.rule != "max_harmful_label_rate"].outcome == "pass").all()


# --------------------------------------------------------------------------- per-class rules
def test_per_class_rules_catch_the_planted_cell(hand_biased, hand_control) -> None:
    pol = Policy.model_validate({
        "max_classwise_gap": {"metric": "tpr", "threshold": 0.2, "require_significance": True},
        "min_per_class_metric": {"metric": "tpr", "threshold": 0.5, "bound": "ci_high"}})
    v = evaluate(hand_biased, pol)
    assert not v.passed
    rows = v.rows.set_index(["rule", "attribute"])
    gap = rows.loc[("max_classwise_gap:tpr", "background")]
    assert gap.outcome == "fail" and gap.scope == "class:triangle" and gap.group == "dotted vs plain"
    assert gap.observed == pytest.approx(0.97 - 0.14) and gap.p_adj < 0.05
    assert gap.metric_label == "recall (TPR) of class 'triangle'" and "triangle" in gap.text
    cell = rows.loc[("min_per_class_metric:tpr", "background")]
    assert cell.outcome == "fail" and cell.group == "dotted" and cell.scope == "class:triangle"
    assert cell.observed == pytest.approx(_ci(0.14, 102)[1]) and cell.observed < 0.5 and cell.n == 102
    assert "1 below" in cell.note
    assert rows.loc[("max_classwise_gap:tpr", "colour")].outcome == "pass"
    assert rows.loc[("min_per_class_metric:tpr", "colour")].outcome == "pass"
    # whole-task accuracy barely moves: the planted cell is averaged away there
    whole = evaluate(hand_biased, Policy.model_validate({"max_accuracy_gap": {"threshold": 0.25}}))
    assert whole.passed
    ok = evaluate(hand_control, pol)
    assert ok.passed and (ok.rows.outcome == "pass").all()


def test_per_class_bound_point_and_ci_low(hand_biased) -> None:
    thr = 0.18  # above the planted cell's point (0.14), below its upper bound
    on_hi = evaluate(hand_biased, Policy.model_validate(
        {"attributes": ["background"], "min_per_class_metric": {"threshold": thr}}))
    on_point = evaluate(hand_biased, Policy.model_validate(
        {"attributes": ["background"], "min_per_class_metric": {"threshold": thr, "bound": "point"}}))
    assert on_hi.passed and not on_point.passed
    assert on_point.rows.observed.iloc[0] == pytest.approx(0.14)
    strict = evaluate(hand_biased, Policy.model_validate(
        {"attributes": ["colour"], "min_per_class_metric": {"threshold": 0.97, "bound": "ci_low"}}))
    assert not strict.passed  # every colour cell's lower bound is below 0.97


def test_per_class_small_cells_are_not_tested(tmp_path) -> None:
    run = _hand_run(tmp_path / "small", groups={"background": ["plain", "dotted"]}, recall=_vit_biased_like,
                    n={"plain": 102, "dotted": 20})
    pol = {"min_per_class_metric": {"threshold": 0.5}, "max_classwise_gap": {"threshold": 0.2}}
    v = evaluate(run, Policy.model_validate(pol))
    rows = v.rows.set_index("rule")
    cell = rows.loc["min_per_class_metric:tpr"]
    assert cell.outcome == "pass" and "not tested (n < 50)" in cell.note and "dotted / triangle (n=20)" in cell.note
    gap = rows.loc["max_classwise_gap:tpr"]
    assert gap.outcome == "not tested" and gap.passed is None and "fewer than 2 groups" in gap.note
    assert not v.passed  # on_missing: fail (the default)
    assert evaluate(run, Policy.model_validate({**pol, "on_missing": "skip"})).passed


# --------------------------------------------------------------------------- not tested, on_missing
def test_not_tested_is_its_own_outcome(biased, tmp_path) -> None:
    pol = {"max_harmful_label_rate": {"threshold": 0.5}, "min_worst_group_accuracy": {"threshold": 0.1}}
    v = evaluate(biased, Policy.model_validate(pol))
    harm = v.rows[v.rows.rule == "max_harmful_label_rate"].iloc[0]
    assert harm.outcome == "not tested" and harm.passed is None and "table missing" in harm.note
    assert v.n_failed == 0 and v.n_not_tested == 1 and not v.passed
    assert "NOT TESTED" in v.to_text() and "on_missing: fail" in v.to_text()
    assert check(biased.path, _write(tmp_path, "max_harmful_label_rate: {threshold: 0.5}\n"),
                 stream=io.StringIO()) == 1
    skip = evaluate(biased, Policy.model_validate({**pol, "on_missing": "skip"}))
    assert skip.passed and skip.n_not_tested == 1
    # too few groups: an attribute with a single large group
    one = _hand_run(tmp_path / "one", groups={"site": ["north", "south"]}, recall=lambda a, g, c: 0.9,
                    n={"north": 102, "south": 10})
    v = evaluate(one, Policy.model_validate({"max_accuracy_gap": {"threshold": 0.1}, "on_missing": "skip"}))
    assert v.passed and (v.rows.outcome == "not tested").all()
    assert all("fewer than 2 groups" in n for n in v.rows.note)


def test_policy_min_group_size_above_the_runs(hand_biased) -> None:
    v = evaluate(hand_biased, Policy.model_validate(
        {"min_group_size": 200, "max_classwise_gap": {"threshold": 0.2}, "min_per_class_metric": {"threshold": 0.5},
         "max_accuracy_gap": {"threshold": 0.1}, "metrics": ["accuracy"]}))
    by = v.rows.set_index(["rule", "attribute"]).outcome
    assert by[("max_classwise_gap:tpr", "background")] == "not tested"
    assert by[("min_per_class_metric:tpr", "background")] == "not tested"
    assert by[("max_accuracy_gap:accuracy", "background")] == "fail"  # tested: n=408 per group for accuracy
    assert all("min_group_size" in n for n in v.rows[v.rows.outcome == "not tested"].note)


# --------------------------------------------------------------------------- attributes
def test_attributes_default_to_every_group_column(hand_biased, tmp_path) -> None:
    v = evaluate(hand_biased, Policy.model_validate({"max_classwise_gap": {"threshold": 0.2}}))
    assert v.attributes == ["background", "colour"] and list(v.rows.attribute) == ["background", "colour"]
    p = _write(tmp_path, "attributes: [age]\nmax_classwise_gap: {threshold: 0.2}\n")
    err = io.StringIO()
    assert check(hand_biased.path, p, err_stream=err) == 2
    assert "'age'" in err.getvalue() and "background, colour" in err.getvalue()


# --------------------------------------------------------------------------- labels, Holm, JSON
def test_metric_labels_are_distinct(biased) -> None:
    v = evaluate(biased, Policy.model_validate({
        "metrics": ["accuracy", "balanced_accuracy", "tpr"], "max_accuracy_gap": {"threshold": 0.5},
        "max_classwise_gap": {"metric": "balanced_accuracy", "threshold": 0.5},
        "on_missing": "skip"}))
    labels = v.rows.drop_duplicates(["metric", "scope"]).set_index(["metric", "scope"]).metric_label
    assert labels.is_unique
    assert labels[("balanced_accuracy", "overall")] == "balanced accuracy"
    assert labels[("tpr", "macro")] == metric_label("tpr", "macro") != metric_label("tpr")
    assert metric_label("balanced_accuracy", "overall") != metric_label("balanced_accuracy", "macro")
    cls = v.rows[v.rows.rule == "max_classwise_gap:balanced_accuracy"]
    assert all(lab.startswith("balanced accuracy of class ") for lab in cls.metric_label)


def test_gap_rule_values_and_policy_holm(biased) -> None:
    pol = Policy.model_validate({"metrics": ["accuracy", "balanced_accuracy"],
                                 "max_accuracy_gap": {"threshold": 0.1}})
    v = evaluate(biased, pol)
    led = biased.findings()
    # the gate judges the whole-task rows (scope "overall"): balanced accuracy also has a "macro" row
    # (the mean of one-vs-rest balanced accuracies), which is not judged a second time
    assert {"overall", "macro"} <= set(led[led.metric == "balanced_accuracy"].scope)
    sel = led[led.metric.isin(["accuracy", "balanced_accuracy"]) & led.attribute.isin(["background", "colour"])
              & (led.scope == "overall")]
    rows = v.rows
    assert len(rows) == len(sel)
    assert not rows[["rule", "attribute"]].duplicated().any()
    untested = rows[rows.outcome == "not tested"]
    assert len(untested) == int((sel.status == "not tested").sum())
    assert untested.passed.isna().all() and all(n.startswith("not tested") for n in untested.note)
    sel = sel[sel.status != "not tested"]
    assert len(sel) >= 2
    sel = sel.assign(p_expected=_holm(sel.p_value.tolist()))
    for _, d in sel.iterrows():
        r = rows[(rows.attribute == d.attribute) & (rows.rule == f"max_accuracy_gap:{d.metric}")]
        assert len(r) == 1
        r = r.iloc[0]
        assert r.group == f"{d.worst_group} vs {d.best_group}"
        assert r.observed == pytest.approx(d.gap)
        assert r.ci_high == pytest.approx(d.ci_high)
        assert r.p_adj == pytest.approx(d.p_expected)
        assert r.n == d.n_worst and r.text == d.text
        assert r.passed == (not (d.gap > 0.1 and d.p_expected < 0.05))
    bg = rows[(rows.attribute == "background") & (rows.rule == "max_accuracy_gap:accuracy")].iloc[0]
    assert bg.passed is False and bg.outcome == "fail" and "significant after Holm" in bg.note


def test_holm_family_policy_spans_the_rules_and_run_uses_the_ledger(hand_biased) -> None:
    both = {"max_accuracy_gap": {"threshold": 0.1}, "max_classwise_gap": {"threshold": 0.2}}
    v = evaluate(hand_biased, Policy.model_validate(both))
    led = hand_biased.findings()
    judged = led[(led.attribute.isin(["background", "colour"])) & (
        ((led.metric == "accuracy") & (led.scope == "overall"))
        | ((led.metric == "tpr") & led.scope.str.startswith("class:")))]
    m = int(judged.p_value.notna().sum())
    assert m == 2 + 2 * len(CLASSES)
    assert all(f"Holm over the {m} test(s)" in c for c in v.rows.correction)
    run = evaluate(hand_biased, Policy.model_validate(
        {"max_classwise_gap": {"threshold": 0.2, "holm_family": "run"}}))
    r = run.rows[run.rows.attribute == "background"].iloc[0]
    lr = led[(led.attribute == "background") & (led.metric == "tpr") & (led.scope == "class:triangle")].iloc[0]
    assert r.p_adj == pytest.approx(lr.p_adj) and "the run's correction" in r.correction


def test_require_significance_false_judges_the_upper_bound(control) -> None:
    led = control.findings()
    acc = led[(led.metric == "accuracy") & (led.attribute == "background") & (led.scope == "overall")].iloc[0]
    thr = float((acc.gap + acc.ci_high) / 2)  # above the gap, below its upper bound
    base = {"attributes": ["background"], "max_accuracy_gap": {"threshold": round(thr, 4)}}
    assert evaluate(control, Policy.model_validate(base)).passed
    strict = {**base, "max_accuracy_gap": {"threshold": round(thr, 4), "require_significance": False}}
    v = evaluate(control, Policy.model_validate(strict))
    assert not v.passed and "upper end of the 95% interval exceeds" in v.rows.note.iloc[0]


def test_worst_group_bound_and_min_group_size(biased) -> None:
    gp = biased.table("group_performance")
    acc = gp[(gp.metric == "accuracy") & (gp.attribute == "background")]
    worst_low = acc.ci_low.min()
    worst_point = acc.value.min()
    thr = float((worst_low + worst_point) / 2)
    on_low = evaluate(biased, Policy.model_validate(
        {"attributes": ["background"], "min_worst_group_accuracy": {"threshold": thr}}))
    on_point = evaluate(biased, Policy.model_validate(
        {"attributes": ["background"], "min_worst_group_accuracy": {"threshold": thr, "bound": "point"}}))
    assert not on_low.passed and on_point.passed
    assert on_low.rows.observed.iloc[0] == pytest.approx(worst_low)
    assert on_low.rows.group.iloc[0] == acc.loc[acc.ci_low.idxmin(), "group"]
    assert on_low.rows.text.iloc[0].startswith("accuracy by background")  # the ledger's sentence
    # a minimum size above every group: nothing is tested, no claim is made; on_missing decides
    big = {"min_group_size": 10_000, "min_worst_group_accuracy": {"threshold": 0.99}}
    v = evaluate(biased, Policy.model_validate(big))
    assert (v.rows.outcome == "not tested").all() and v.rows.passed.isna().all() and not v.passed
    assert all("min_group_size" in n for n in v.rows.note)
    assert evaluate(biased, Policy.model_validate({**big, "on_missing": "skip"})).passed
    # intersections include the sparse cell, which is never judged
    inter = evaluate(biased, Policy.model_validate(
        {"attributes": ["background"], "include_intersections": True,
         "min_worst_group_accuracy": {"threshold": 0.5, "bound": "point"}}))
    row = inter.rows[inter.rows.attribute == "background×colour"].iloc[0]
    assert "water×blue" in row.note and "not tested" in row.note


def test_clip_rules(biased) -> None:
    clip = shared_run(kind="clip", biased=True)
    hr = clip.table("harmful_rates")
    top = hr[hr.attribute == "background"].rate.max()
    v = evaluate(clip, Policy.model_validate({"attributes": ["background"],
                                              "max_harmful_label_rate": {"threshold": float(top) - 0.01}}))
    assert not v.passed and v.rows.group.iloc[0] == "water" and v.rows.observed.iloc[0] == pytest.approx(top)
    assert v.rows.text.iloc[0].startswith("harmful-label rate")
    led = clip.findings()
    assoc = led[(led.kind == "association") & (led.attribute == "background")].iloc[0]
    d = abs(float(assoc.gap))
    v = evaluate(clip, Policy.model_validate({"attributes": ["background"],
                                              "max_association_effect_size": {"threshold": d + 0.1}}))
    assert v.passed and v.rows.observed.iloc[0] == pytest.approx(d) and v.rows.text.iloc[0] == assoc.text
    v = evaluate(clip, Policy.model_validate({"attributes": ["background"],
                                              "max_association_effect_size": {"threshold": d - 0.01}}))
    assert not v.passed
    # harmful-label rule on a classifier run: missing table -> not tested; fails by default, skip on request
    pol = {"max_harmful_label_rate": {"threshold": 0.5}}
    assert not evaluate(biased, Policy.model_validate(pol)).passed
    assert evaluate(biased, Policy.model_validate({**pol, "on_missing": "skip"})).passed


def test_json_verdict_and_cli(hand_biased, capsys) -> None:
    from audit.cli import main

    assert main(["check", str(hand_biased.path), "--policy", str(EXAMPLE), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is False and data["result"] == "fail" and data["n_failed"] >= 2
    assert set(VERDICT_COLUMNS) <= set(data["rules"][0])
    failing = [r for r in data["rules"] if r["outcome"] == "fail" and r["rule"] == "min_per_class_metric:tpr"]
    assert failing and failing[0]["metric_label"] == "recall (TPR) of class 'triangle'"
    assert failing[0]["n"] == 102 and failing[0]["interval"].startswith("[") and failing[0]["text"]
    untested = [r for r in data["rules"] if r["outcome"] == "not tested"]
    assert untested and all(r["passed"] is None and r["observed"] is None for r in untested)
    assert main(["check", str(hand_biased.path), "--policy", str(EXAMPLE)]) == 1
    assert "FAILED" in capsys.readouterr().out


# --------------------------------------------------------------------------- invalid input
@pytest.mark.parametrize("text, field", [
    ("max_accuracy_gap: {threshold: 0.1}\nmax_acuracy_gap: 3\n", "max_acuracy_gap"),
    ("max_accuracy_gap: {threshold: 0.1, requre_significance: true}\n", "max_accuracy_gap.requre_significance"),
    ("max_accuracy_gap: {threshold: 1.5}\n", "max_accuracy_gap.threshold"),
    ("min_per_class_metric: {threshold: 0.5, bound: upper}\n", "min_per_class_metric.bound"),
    ("max_classwise_gap: {threshold: 0.2, holm_family: everything}\n", "max_classwise_gap.holm_family"),
    ("name: nothing\n", "no rule"),
    ("- a\n- b\n", "mapping"),
    ("max_accuracy_gap: {threshold: [0.1\n", "not valid YAML"),
    ("!!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),
])
def test_invalid_policy_exit_2_names_the_field(biased, tmp_path, text, field) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError, match="policy file"):
        load_policy(p)
    err = io.StringIO()
    assert check(biased.path, p, stream=io.StringIO(), err_stream=err) == 2
    assert field in err.getvalue() and str(p) in err.getvalue()


def test_unusable_inputs_exit_2(biased, tmp_path) -> None:
    err = io.StringIO()
    assert check(tmp_path / "no-run", EXAMPLE, err_stream=err) == 2
    assert "not a run directory" in err.getvalue()
    err = io.StringIO()
    assert check(biased.path, tmp_path / "missing.yaml", err_stream=err) == 2
    assert "not found" in err.getvalue()
    p = _write(tmp_path, "attributes: [age]\nmax_accuracy_gap: {threshold: 0.1}\n")
    err = io.StringIO()
    assert check(biased.path, p, err_stream=err) == 2
    assert "'attributes'" in err.getvalue() and "'age'" in err.getvalue()
    p = _write(tmp_path, "metrics: [auroc]\nmax_accuracy_gap: {threshold: 0.1}\n")
    err = io.StringIO()
    assert check(biased.path, p, err_stream=err) == 2
    assert "'metrics'" in err.getvalue()
    p = _write(tmp_path, "min_per_class_metric: {metric: recal, threshold: 0.5}\n")
    err = io.StringIO()
    assert check(biased.path, p, err_stream=err) == 2
    assert "'recal'" in err.getvalue()


def test_damaged_run_exit_2(biased, tmp_path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(biased.path, broken)
    for t in ("findings", "disparities", "group_performance"):  # what the gate reads
        (broken / "tables" / f"{t}.parquet").write_bytes(b"not parquet")
    err = io.StringIO()
    assert check(broken, EXAMPLE, err_stream=err) == 2
    assert "damaged" in err.getvalue()
    (broken / "run.json").write_text("{", encoding="utf-8")
    err = io.StringIO()
    assert check(broken, EXAMPLE, err_stream=err) == 2
    assert "run.json" in err.getvalue()


def test_verdict_text_table(biased) -> None:
    v = evaluate(biased, load_policy(EXAMPLE))
    text = v.to_text()
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["RESULT", "RULE", "ATTRIBUTE", "GROUP", "METRIC"]
    assert sum(line.startswith("FAIL") for line in lines) == v.n_failed > 0
    assert sum(line.startswith("NOT TESTED") for line in lines) == v.n_not_tested
    assert sum(line.strip().startswith("finding: ") for line in lines) == int((v.rows.text != "").sum())
    assert list(v.rows.columns)[:3] == ["rule", "outcome", "attribute"]
    assert set(v.rows.outcome) <= {"pass", "fail", "not tested"}


def test_one_vs_rest_metrics_are_judged_on_their_macro_mean(biased) -> None:
    v = evaluate(biased, Policy.model_validate({"metrics": ["tpr"], "max_accuracy_gap": {"threshold": 0.1}}))
    led = biased.findings()
    macro = led[(led.metric == "tpr") & (led.scope == "macro") & led.attribute.isin(["background", "colour"])]
    assert len(v.rows) == len(macro) and set(v.rows.rule) == {"max_accuracy_gap:tpr[macro]"}
