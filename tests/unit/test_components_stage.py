"""The components stage in a run: tables ``components`` and ``ablations`` for the association test."""

from __future__ import annotations

import pytest

from audit.components.ablate import ABLATION_COLUMNS
from audit.components.run import COMPONENT_COLUMNS
from audit.errors import ConfigError


def _config(tmp_path, **components):
    from audit.config import parse_config
    from audit.demo import demo_config
    from audit.zoo.world import write_test_set

    manifest = write_test_set(tmp_path / "data", n_per_cell=6)
    cfg = demo_config("clip-biased", manifest, tmp_path)
    cfg["explain"] = {"methods": []}
    cfg["slices"] = {"enabled": False}
    cfg["stats"] = {"n_boot": 100, "n_perm": 200, "seed": 0}
    cfg["components"] = {"enabled": True, "layers": 3, "k": [1, 2], "n_boot": 50, "n_random": 50, **components}
    return parse_config(cfg, source="test")


def test_components_stage_writes_both_tables(tmp_path) -> None:
    from audit.pipeline import run_audit

    run = run_audit(_config(tmp_path))
    comp, abl = run.table("components"), run.table("ablations")
    assert list(comp.columns) == COMPONENT_COLUMNS and list(abl.columns) == ABLATION_COLUMNS
    assert len(comp) == 9 and set(comp["kind"]) == {"head", "mlp"}
    assert comp.iloc[0]["roles"] != ""  # the top component is named in words
    assert list(abl["k"]) == [1, 2] and abl["accuracy_before"].between(0, 1).all()
    assert run.meta["components"]["correction"] == "holm"
    from audit.report import write_report

    write_report([run.path], formats=("md",))
    md = next(run.path.rglob("report.md")).read_text()
    assert "## Where the association is carried (heads)" in md
    assert str(abl.iloc[0]["components"]) in md


def test_unknown_finding_names_are_refused(tmp_path) -> None:
    from audit.pipeline import run_audit

    with pytest.raises(ConfigError, match="components.findings names \\['nope'\\]"):
        run_audit(_config(tmp_path, findings=["nope"]))


def test_only_significant_ablations_enter_the_ledger() -> None:
    import numpy as np
    import pandas as pd

    from audit.findings import build_findings

    base = {"finding": "concept", "n_test": 300, "before": 2.0, "after": 1.4, "change": -0.6, "reduction": 0.6,
            "random_mean": 0.1, "random_q95": 0.3, "n_random": 200, "exact": False, "accuracy_before": 0.95,
            "accuracy_after": 0.94}
    abl = pd.DataFrame([{**base, "k": 1, "components": "L2.H1", "random_p": 0.004, "p_adj": 0.008, "significant": True},
                        {**base, "k": 2, "components": "L2.H1, L1.H0", "random_p": 0.2, "p_adj": 0.2,
                         "significant": False}])
    ledger = build_findings({"ablations": abl})
    rows = ledger[ledger["kind"] == "component"]
    assert len(rows) == 1 and rows.iloc[0]["worst_group"] == "L2.H1" and bool(rows.iloc[0]["significant"])
    text = rows.iloc[0]["text"]
    assert "carried by head(s) L2.H1" in text and "n=300" in text and "Holm" in text and "random" in text
    assert np.isclose(rows.iloc[0]["gap"], 0.5)
