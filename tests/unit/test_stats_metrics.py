"""The metric table (audit/stats/metrics.py): one registered definition per group metric."""

from __future__ import annotations

import typing

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from audit.config import StatsConfig
from audit.registry import METRICS as REGISTRY
from audit.stats import metrics
from audit.stats.metrics import Counts, Formula, MetricDef, metric_def, metric_definitions, metric_names
from audit.stats.rules import ALPHA, MIN_GROUP_SIZE

BUILTIN = ("accuracy", "balanced_accuracy", "tpr", "fnr", "fpr", "precision", "selection_rate", "ece")


def test_every_registered_metric_has_its_fields():
    assert metric_names() == BUILTIN
    assert typing.get_args(metrics.Metric) == BUILTIN
    for d in metric_definitions():
        assert isinstance(d, MetricDef) and REGISTRY.get(d.name) is d
        assert d.display_name and d.denominator
        assert d.higher_is_better in (True, False, None)
        assert d.scopes and set(d.scopes) <= {"__all__", "one_vs_rest"}
        for f in (d.overall, d.one_vs_rest):
            if f is None:
                continue
            assert callable(f.estimator()), d.name
            if not d.calibration:
                assert callable(f.value) and callable(f.denominator) and callable(f.score_parts), d.name
    lower = {d.name for d in metric_definitions() if d.higher_is_better is False}
    assert lower == {"fnr", "fpr", "ece"}
    assert metric_def("selection_rate").higher_is_better is None
    assert metric_def("tpr").denominator == "positives" and metric_def("fpr").denominator == "negatives"
    assert metric_def("ece").calibration and metric_def("ece").scopes == ("__all__",)
    assert metric_def("balanced_accuracy").scopes == ("__all__", "one_vs_rest")


def test_formulas_from_counts_match_their_parts():
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 30, size=(5, 3, 3))  # (G, K, K)
    c = metrics.ovr_counts(cm)
    for d in metric_definitions():
        if d.calibration:
            continue
        if d.one_vs_rest is not None:
            x, n = d.one_vs_rest.score_parts(c)  # (G, K, J)
            np.testing.assert_allclose(d.one_vs_rest.value(c), np.mean(x / n, axis=-1), err_msg=d.name)
        if d.overall is not None:
            x, n = d.overall.score_parts(cm)  # (G, J)
            np.testing.assert_allclose(d.overall.value(cm), np.mean(x / n, axis=-1), err_msg=d.name)


def test_registry_config_and_findings_agree():
    from audit import findings
    from audit.report import summary
    from audit.stats import performance

    assert REGISTRY.names() == sorted(BUILTIN)
    assert performance.METRICS == metric_names()
    assert StatsConfig().metrics == list(metric_names())
    assert StatsConfig(metrics=list(REGISTRY.names())).metrics == sorted(BUILTIN)
    with pytest.raises(ValidationError, match=r"unknown metric\(s\) \['recall'\]"):
        StatsConfig(metrics=["recall"])
    for d in metric_definitions():
        assert findings.METRIC_NAMES[d.name] == d.display_name
        assert (d.name in findings.LOWER_IS_BETTER) == (d.higher_is_better is False)
    assert StatsConfig().min_group_size == MIN_GROUP_SIZE == summary.DEFAULT_MIN_GROUP_SIZE
    assert StatsConfig().alpha == ALPHA == summary.DEFAULT_ALPHA == findings.DEFAULT_ALPHA


def test_a_registered_metric_is_accepted_by_the_config_and_computed():
    """One definition plus its registration: the config accepts it and group_performance computes it."""
    from audit.stats import group_performance

    def _tnr(c: Counts) -> np.ndarray:
        return c.tn

    def _negatives(c: Counts) -> np.ndarray:
        return c.tn + c.fp

    def _estimator():
        from fairlearn.metrics import true_negative_rate

        return lambda y, p, sample_weight=None: true_negative_rate(y, p, pos_label=1, sample_weight=sample_weight)

    tnr = MetricDef("throwaway_tnr", "specificity (TNR)", "negatives", True, one_vs_rest=Formula(
        estimator=_estimator, value=lambda c: metrics.div(_tnr(c), _negatives(c)), denominator=_negatives,
        score_parts=lambda c: (_tnr(c)[..., None], _negatives(c)[..., None])))
    with pytest.raises(ValidationError, match="unknown metric"):
        StatsConfig(metrics=["accuracy", "throwaway_tnr"])
    metrics.register(tnr)
    try:
        assert StatsConfig(metrics=["accuracy", "throwaway_tnr"]).metrics == ["accuracy", "throwaway_tnr"]
        assert metric_names()[-1] == "throwaway_tnr"
        df = pd.DataFrame({"label": ["a", "a", "b", "b"] * 30, "pred": ["a", "b", "b", "b"] * 30, "g": "x"})
        gp = group_performance(df, group_cols=["g"], metrics=["throwaway_tnr"], score_col=None, n_boot=20,
                               classes="ovr")
        v = gp.set_index("cls").value
        assert v["a"] == pytest.approx(1.0) and v["b"] == pytest.approx(0.5)  # negatives of b: the a rows
    finally:
        if hasattr(REGISTRY, "unregister"):
            REGISTRY.unregister("throwaway_tnr")
        else:  # pragma: no cover - a registry without unregister
            REGISTRY._items.pop("throwaway_tnr", None)
    assert "throwaway_tnr" not in REGISTRY
    with pytest.raises(ValidationError, match="unknown metric"):
        StatsConfig(metrics=["throwaway_tnr"])


def test_a_definition_without_formulas_is_refused():
    with pytest.raises(ValueError, match="overall or a one_vs_rest"):
        MetricDef("nothing", "nothing", "rows", True)
    with pytest.raises(ValueError, match="value and denominator"):
        MetricDef("half", "half", "rows", True, overall=Formula(estimator=lambda: len))


def test_reading_a_default_costs_no_scipy():
    import subprocess
    import sys

    code = ("import sys\nfrom audit.stats.rules import MIN_GROUP_SIZE\nimport audit.stats.metrics, audit.config\n"
            "assert 'scipy' not in sys.modules and 'pandas' not in sys.modules, 'heavy import'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
