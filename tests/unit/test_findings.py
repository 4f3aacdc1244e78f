"""The findings ledger (audit.findings): one ranked table, names that never collide, honest wording."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.findings import FINDINGS_COLUMNS, build_findings, headline, metric_key, metric_label, summary_line


def _disp(**kw) -> dict:
    row = dict(attribute="bg", metric="accuracy", cls="__all__", k=3, n_excluded=0, max_group="plain",
               min_group="dotted", max_value=0.95, min_value=0.70, difference=0.25, diff_ci_low=0.15,
               diff_ci_high=0.35, ratio=0.7 / 0.95, ratio_ci_low=0.6, ratio_ci_high=0.85, p_value=0.001,
               p_holm=0.004, p_bh=0.002, significant=True, test="permutation max-min gap, 1000 perms", note="",
               family="range", correction="holm within range (m=4)")
    row.update(kw)
    return row


def _perf(attribute: str, group: str, metric: str, cls: str, n: int) -> dict:
    return dict(attribute=attribute, group=group, metric=metric, cls=cls, value=0.5, ci_low=0.4, ci_high=0.6, n=n,
                n_rows=n, small=n < 50, note="")


@pytest.fixture
def tables() -> dict[str, pd.DataFrame]:
    disp = pd.DataFrame([
        _disp(),
        _disp(metric="balanced_accuracy", difference=0.10, diff_ci_low=0.0, diff_ci_high=0.2, p_value=0.2,
              p_holm=0.6, significant=False),
        _disp(metric="balanced_accuracy", cls="__macro__", difference=0.12, diff_ci_low=0.0, diff_ci_high=0.25,
              p_value=0.3, p_holm=0.6, significant=False),
        _disp(metric="tpr", cls="triangle", max_value=1.0, min_value=0.14, difference=0.86, diff_ci_low=0.79,
              diff_ci_high=0.92),
        _disp(metric="fnr", cls="triangle", max_group="dotted", min_group="plain", max_value=0.86, min_value=0.0,
              difference=0.86, diff_ci_low=0.79, diff_ci_high=0.92),
        _disp(metric="ece", max_group="dotted", min_group="plain", max_value=0.08, min_value=0.02, difference=0.06,
              diff_ci_low=0.0, diff_ci_high=0.1, p_value=0.04, p_holm=0.16, significant=False),
        _disp(attribute="colour", k=1, n_excluded=2, max_group="", min_group="", max_value=np.nan,
              min_value=np.nan, difference=np.nan, diff_ci_low=np.nan, diff_ci_high=np.nan, p_value=np.nan,
              p_holm=np.nan, significant=False, test="not tested", note="2 group(s) excluded: n < min_group_size=50"),
    ])
    perf = pd.DataFrame([
        _perf("bg", "dotted", "accuracy", "__all__", 300), _perf("bg", "plain", "accuracy", "__all__", 310),
        _perf("bg", "dotted", "tpr", "triangle", 102), _perf("bg", "plain", "tpr", "triangle", 98),
    ])
    harm = pd.DataFrame([dict(attribute="bg", k=3, difference=0.5, diff_ci_low=0.45, diff_ci_high=0.55,
                              max_group="dotted", min_group="plain", p_value=0.001, p_holm=0.002, significant=True,
                              label_set="canary")])
    rates = pd.DataFrame([dict(attribute="bg", group="dotted", n=400, rate=0.5, ci_low=0.45, ci_high=0.55, small=False),
                          dict(attribute="bg", group="plain", n=400, rate=0.0, ci_low=0.0, ci_high=0.01, small=False)])
    return {"disparities": disp, "group_performance": perf, "harmful_disparities": harm, "harmful_rates": rates}


def test_columns_and_ranks(tables) -> None:
    f = build_findings(tables)
    assert list(f.columns) == FINDINGS_COLUMNS
    assert list(f["rank"]) == list(range(1, len(f) + 1))
    # significant first, then by effect: the planted recall gap leads, then the harmful-label gap
    assert f.iloc[0][["metric", "scope", "worst_group", "best_group"]].tolist() == [
        "tpr", "class:triangle", "dotted", "plain"]
    assert f.iloc[1]["kind"] == "harmful_label" and f.iloc[1]["worst_group"] == "dotted"
    sig = f["significant"].to_numpy()
    assert not (np.diff(sig.astype(int)) > 0).any(), "a significant finding ranks below a not significant one"
    assert f.iloc[-1]["status"] == "not tested"


def test_worst_and_best_follow_the_metric_direction(tables) -> None:
    f = build_findings(tables)
    f = f[f["attribute"] == "bg"].set_index(["metric", "scope"])
    acc = f.loc[("accuracy", "overall")]
    assert (acc["worst_group"], acc["worst_value"], acc["best_group"]) == ("dotted", 0.70, "plain")
    ece = f.loc[("ece", "overall")]  # lower is better: the worst group has the highest ECE
    assert (ece["worst_group"], ece["worst_value"], ece["kind"]) == ("dotted", 0.08, "calibration")
    assert (acc["n_worst"], acc["n_best"]) == (300, 310)


def test_fnr_is_not_a_second_finding_of_the_same_test(tables) -> None:
    f = build_findings(tables)
    assert "fnr" not in set(f["metric"])
    assert (f["metric"] == "tpr").sum() == 1


def test_names_never_collide() -> None:
    labels = {metric_label("balanced_accuracy", s) for s in ("overall", "macro", "class:a")}
    assert len(labels) == 3
    assert metric_key("balanced_accuracy", "__all__") != metric_key("balanced_accuracy", "__macro__")


def test_text_states_n_interval_and_verdict(tables) -> None:
    f = build_findings(tables)
    first = f.iloc[0]["text"]
    assert "0.140 for dotted, n=102" in first and "1.000 for plain, n=98" in first
    assert "95% CI 0.790 to 0.920" in first and "significant after Holm correction" in first
    not_sig = f[(f["metric"] == "balanced_accuracy") & (f["scope"] == "macro")].iloc[0]["text"]
    assert "macro mean" in not_sig and "not significant after Holm correction" in not_sig
    untested = f[f["status"] == "not tested"].iloc[0]
    assert untested["text"].startswith("accuracy by colour: not tested (2 group(s) excluded")
    assert "n/a" not in untested["text"] and not untested["significant"]


def test_every_interval_contains_its_gap(tables) -> None:
    f = build_findings(tables)
    ok = f["ci_low"].notna()
    assert ((f.loc[ok, "ci_low"] <= f.loc[ok, "gap"] + 1e-12) & (f.loc[ok, "gap"] <= f.loc[ok, "ci_high"] + 1e-12)).all()


def test_one_vs_rest_rows_read_as_group_against_rest() -> None:
    disp = pd.DataFrame([_disp(family="one_vs_rest", max_group="dotted", min_group="rest of bg", max_value=0.70,
                               min_value=0.93, difference=-0.23, diff_ci_low=-0.3, diff_ci_high=-0.15)])
    row = build_findings({"disparities": disp}).iloc[0]
    assert (row["worst_group"], row["best_group"]) == ("dotted", "rest of bg")
    assert row["gap"] == pytest.approx(0.23) and row["ci_low"] == pytest.approx(0.15)
    assert "gap to the rest 0.230" in row["text"]


def test_empty_and_summary() -> None:
    f = build_findings({})
    assert f.empty and list(f.columns) == FINDINGS_COLUMNS
    assert headline(f) == []
    assert summary_line(f).startswith("No finding could be computed")


def test_summary_line_counts(tables) -> None:
    f = build_findings(tables)
    tested = f["status"].isin(["significant", "not significant"]).sum()
    assert summary_line(f) == (f"{int(f['significant'].sum())} of {tested} tested comparisons are significant after "
                               "correction; 1 comparison(s) could not be tested.")


def test_label_free_run_reports_its_embedding_findings() -> None:
    lp = pd.DataFrame([dict(attribute="bg", k=3, n=600, balanced_accuracy=0.9, bacc_ci_low=0.87, bacc_ci_high=0.93,
                            auc=0.95, majority_rate=0.34, null_mean=0.33, null_p95=0.36, p_value=0.001)])
    f = build_findings({"linear_probe": lp})
    assert len(f) == 1 and f.iloc[0]["significant"]
    assert "embeddings encode bg" in f.iloc[0]["text"]
    assert summary_line(f).startswith("1 of 1 tested comparisons are significant")


def test_a_tie_names_no_worst_and_best_pair() -> None:
    disp = pd.DataFrame([_disp(max_group="dotted", min_group="dotted", max_value=1.0, min_value=1.0, difference=0.0,
                               diff_ci_low=0.0, diff_ci_high=0.01, p_value=1.0, p_holm=1.0, significant=False)])
    text = build_findings({"disparities": disp}).iloc[0]["text"]
    assert text.startswith("accuracy by bg: 1.000 in each of the 3 groups compared (no gap)")
    assert "dotted" not in text


def test_prediction_shares_lead_a_label_free_run_only(tables) -> None:
    pdisp = pd.DataFrame([dict(attribute="bg", cls="cat", k=3, max_group="dotted", min_group="plain", max_value=0.6,
                               min_value=0.2, difference=0.4, diff_ci_low=0.3, diff_ci_high=0.5, p_value=0.001,
                               p_holm=0.002, significant=True, test="permutation", note="")])
    dist = pd.DataFrame([dict(attribute="bg", group=g, cls="cat", n=300, count=1, share=0.5, ci_low=0.4, ci_high=0.6,
                              small=False) for g in ("dotted", "plain")])
    free = build_findings({"prediction_disparities": pdisp, "prediction_distribution": dist})
    assert free.iloc[0]["kind"] == "prediction_distribution" and free.iloc[0]["n_worst"] == 300
    assert "share predicted 'cat' by bg: 0.600 for dotted" in free.iloc[0]["text"]
    with_labels = build_findings({**tables, "prediction_disparities": pdisp, "prediction_distribution": dist})
    assert "prediction_distribution" not in set(with_labels["kind"])  # selection_rate rows carry the same test
