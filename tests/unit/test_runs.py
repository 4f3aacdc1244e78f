"""The run store: atomic writes, status, reading without a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.errors import RunError
from audit.runs import Run, atomic_path, write_json


def test_create_write_open_roundtrip(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "r", meta={"model": {"spec": "timm:x", "class_names": ["a", "b"]},
                                           "dataset": {"group_columns": ["g"]}})
    run.write_table("predictions", pd.DataFrame({"row_id": [0, 1], "pred": ["a", "b"]}))
    run.write_maps("rollout", np.arange(8, dtype=np.float32).reshape(2, 2, 2), [5, 7])
    run.write_array_file("embeddings", {"image": np.ones((2, 3), np.float32), "row_id": np.array([5, 7])})
    with pytest.raises(RunError, match="unfinished run"):
        Run.open(run.path)
    run.finish()
    again = Run.open(run.path)
    assert again.tables() == ["predictions"] and again.methods == ["rollout"]
    maps, rows = again.maps("rollout")
    assert maps.dtype == np.float16 and maps.shape == (2, 2, 2) and rows.tolist() == [5, 7]
    np.testing.assert_array_equal(again.map_for("rollout", 7), np.array([[4, 5], [6, 7]], np.float16))
    assert again.map_for("rollout", 99) is None
    assert again.class_names == ["a", "b"] and again.group_columns == ["g"]
    with pytest.raises(RunError, match="no table 'nope'"):
        again.table("nope")


def test_existing_run_is_not_overwritten_silently(tmp_path: Path) -> None:
    Run.create(tmp_path / "r")
    with pytest.raises(RunError, match="--overwrite"):
        Run.create(tmp_path / "r")
    Run.create(tmp_path / "r", overwrite=True)


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(OSError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise OSError(28, "No space left on device")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_not_a_run_and_wrong_schema(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="not a run directory"):
        Run.open(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"schema_version": 99, "status": "complete"}))
    with pytest.raises(RunError, match="schema_version 99"):
        Run.open(tmp_path)
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(RunError, match="damaged"):
        Run.open(tmp_path)


def test_nan_is_written_as_null(tmp_path: Path) -> None:
    write_json(tmp_path / "x.json", {"a": float("nan"), "b": np.float32(1.5)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": 1.5}


def _config(tmp_path: Path, **data: object) -> dict:
    return {"model": {"spec": "timm:vit_tiny_patch16_224"},
            "data": {"manifest": str(tmp_path / "gone.csv"), **data},
            "stats": {"min_group_size": 30}, "run": {"output": str(tmp_path / "r")}}


def test_config_is_the_parsed_config_without_path_checks(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "r", meta={"config": _config(tmp_path, columns={"groups": ["g"]})})
    cfg = run.config
    assert cfg.stats.min_group_size == 30 and cfg.stats.alpha == 0.05  # the config's own defaults fill in
    assert cfg.data.columns.label == "label" and cfg.data.columns.groups == ["g"]
    assert not cfg.data.manifest.exists()  # a finished run is read where its inputs may be gone
    run.meta["config"]["stats"]["min_group_size"] = 80  # meta is mutable: the view follows it
    assert run.config.stats.min_group_size == 80


def test_a_config_that_does_not_parse_is_a_run_error_naming_the_field(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "r", meta={"config": _config(tmp_path, label_column="label")})
    with pytest.raises(RunError, match=r"data\.label_column: unknown key"):
        _ = run.config
    with pytest.raises(RunError, match="records no config"):
        _ = Run.create(tmp_path / "s").config
