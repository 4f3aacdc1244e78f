"""The policy gate: exit codes on the biased and control runs, rule semantics, invalid input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from audit.errors import ConfigError
from audit.report.policy import Policy, check, evaluate, load_policy
from tests.run_factory import shared_run

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"


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


def test_example_policy_fails_biased_and_passes_control(biased, control) -> None:
    out = io.StringIO()
    assert check(biased.path, EXAMPLE, stream=out) == 1
    text = out.getvalue()
    assert "FAIL" in text and "FAILED" in text and "water" in text
    out = io.StringIO()
    assert check(control.path, EXAMPLE, stream=out) == 0
    assert "PASSED" in out.getvalue() and "FAIL " not in out.getvalue()


def test_gap_rule_values_and_policy_holm(biased) -> None:
    pol = Policy.model_validate({"metrics": ["accuracy", "balanced_accuracy"],
                                 "max_accuracy_gap": {"threshold": 0.1}})
    v = evaluate(biased, pol)
    disp = biased.table("disparities")
    # the gate judges the whole-task rows ("__all__"): balanced accuracy also has a "__macro__" row (the
    # mean of one-vs-rest balanced accuracies), which is not judged a second time under the same name;
    # gaps with fewer than two groups of sufficient size carry no p-value and are reported as not tested
    assert {"__all__", "__macro__"} <= set(disp[disp.metric == "balanced_accuracy"].cls)
    sel = disp[disp.metric.isin(["accuracy", "balanced_accuracy"]) & disp.attribute.isin(["background", "colour"])
               & (disp.cls == "__all__")]
    rows = v.rows
    assert len(rows) == len(sel)
    assert not rows.rule.duplicated().any() or not rows[["rule", "attribute"]].duplicated().any()
    untested = rows[rows.observed.isna()]
    assert len(untested) == int(sel.p_value.isna().sum())
    assert untested.passed.isna().all() and all(n.startswith("not tested") for n in untested.note)
    sel = sel[sel.p_value.notna()]
    assert len(sel) >= 2
    sel = sel.assign(p_expected=_holm(sel.p_value.tolist()))
    rule = {"accuracy": "max_accuracy_gap:accuracy", "balanced_accuracy": "max_accuracy_gap:balanced_accuracy"}
    for _, d in sel.iterrows():
        r = rows[(rows.attribute == d.attribute) & (rows.rule == rule[d.metric])
                 & (rows.group == f"{d.max_group} vs {d.min_group}")]
        assert len(r) == 1
        r = r.iloc[0]
        p = d.p_expected
        assert r.observed == pytest.approx(d.difference)
        assert r.ci_high == pytest.approx(d.diff_ci_high)
        assert r.p == pytest.approx(p)
        assert r.passed == (not (d.difference > 0.1 and p < 0.05))
    bg = rows[(rows.attribute == "background") & (rows.rule == "max_accuracy_gap:accuracy")].iloc[0]
    assert bg.passed is False and "significant after Holm" in bg.note


def test_require_significance_false_judges_the_upper_bound(control) -> None:
    d = control.table("disparities")
    acc = d[(d.metric == "accuracy") & (d.attribute == "background")].iloc[0]
    thr = float((acc.difference + acc.diff_ci_high) / 2)  # above the gap, below its upper bound
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
    # a minimum size above every group: nothing is judged, no claim is made
    big = evaluate(biased, Policy.model_validate(
        {"min_group_size": 10_000, "min_worst_group_accuracy": {"threshold": 0.99}}))
    assert big.passed and big.rows.passed.isna().all()
    assert all("min_group_size" in n for n in big.rows.note)
    # intersections include the sparse cell, which is never judged
    inter = evaluate(biased, Policy.model_validate(
        {"attributes": ["background"], "include_intersections": True,
         "min_worst_group_accuracy": {"threshold": 0.5, "bound": "point"}}))
    row = inter.rows[inter.rows.attribute == "background×colour"].iloc[0]
    assert "water×blue" in row.note and "not judged" in row.note


def test_clip_rules(biased) -> None:
    clip = shared_run(kind="clip", biased=True)
    hr = clip.table("harmful_rates")
    top = hr[hr.attribute == "background"].rate.max()
    v = evaluate(clip, Policy.model_validate({"attributes": ["background"],
                                              "max_harmful_label_rate": {"threshold": float(top) - 0.01}}))
    assert not v.passed and v.rows.group.iloc[0] == "water" and v.rows.observed.iloc[0] == pytest.approx(top)
    at = clip.table("association")
    d = float(np.abs(at[at.attribute == "background"].effect_size).iloc[0])
    v = evaluate(clip, Policy.model_validate({"attributes": ["background"],
                                              "max_association_effect_size": {"threshold": d + 0.1}}))
    assert v.passed
    # harmful-label rule on a classifier run: missing table -> fail by default, skip on request
    pol = {"max_harmful_label_rate": {"threshold": 0.5}}
    assert not evaluate(biased, Policy.model_validate(pol)).passed
    assert evaluate(biased, Policy.model_validate({**pol, "on_missing": "skip"})).passed


@pytest.mark.parametrize("text, field", [
    ("max_accuracy_gap: {threshold: 0.1}\nmax_acuracy_gap: 3\n", "max_acuracy_gap"),
    ("max_accuracy_gap: {threshold: 0.1, requre_significance: true}\n", "max_accuracy_gap.requre_significance"),
    ("max_accuracy_gap: {threshold: 1.5}\n", "max_accuracy_gap.threshold"),
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


def test_damaged_run_exit_2(biased, tmp_path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(biased.path, broken)
    (broken / "tables" / "disparities.parquet").write_bytes(b"not parquet")
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
    assert lines[0].split()[:4] == ["RESULT", "RULE", "ATTRIBUTE", "GROUP"]
    assert sum(line.startswith("FAIL") for line in lines) == v.n_failed > 0
    assert list(v.rows.columns)[:5] == ["rule", "attribute", "group", "observed", "threshold"]


def test_one_vs_rest_metrics_are_judged_on_their_macro_mean(biased) -> None:
    v = evaluate(biased, Policy.model_validate({"metrics": ["tpr"], "max_accuracy_gap": {"threshold": 0.1}}))
    disp = biased.table("disparities")
    macro = disp[(disp.metric == "tpr") & (disp.cls == "__macro__") & disp.attribute.isin(["background", "colour"])]
    assert len(v.rows) == len(macro) and set(v.rows.rule) == {"max_accuracy_gap:tpr[macro]"}
