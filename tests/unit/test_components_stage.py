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


def test_unknown_finding_names_are_refused(tmp_path) -> None:
    from audit.pipeline import run_audit

    with pytest.raises(ConfigError, match="components.findings names \\['nope'\\]"):
        run_audit(_config(tmp_path, findings=["nope"]))
