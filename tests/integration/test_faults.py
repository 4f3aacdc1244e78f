"""Write failures (disk full) during a run: earlier work is kept, the message says how to resume."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest

from audit.errors import AuditError, RunError
from audit.pipeline import run_audit
from audit.runs import Run
from audit.shards import read_shard

from .conftest import make_dataset, parse, write_config


def _enospc_on_shard(monkeypatch: pytest.MonkeyPatch, nth: int, *, everything_after: bool = False) -> None:
    """Make safetensors' save_file raise ENOSPC on the ``nth`` shard write (and, optionally, every
    later write of any file, like a disk that stays full)."""
    import safetensors.torch as st

    real = st.save_file
    state = {"shards": 0, "full": False}

    def save_file(tensors, filename, metadata=None):
        if ".forward-" in Path(filename).name:
            state["shards"] += 1
            if state["shards"] == nth:
                state["full"] = everything_after
                raise OSError(errno.ENOSPC, "No space left on device")
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", save_file)
    if everything_after:
        from audit import runs

        real_json = runs.write_json

        def write_json(path, obj):
            if state["full"]:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_json(path, obj)

        monkeypatch.setattr(runs, "write_json", write_json)


def test_disk_full_on_third_shard_keeps_earlier_work_and_resumes(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "data", 20)
    with pytest.MonkeyPatch.context() as mp, pytest.raises(RunError) as info:
        _enospc_on_shard(mp, 3)
        run_audit(parse(manifest, tmp_path / "run", shard_size=4))
    msg = str(info.value)
    assert "could not write forward shard 3 of 5" in msg
    assert "No space left on device [ENOSPC]" in msg
    assert "The 2 complete shard(s) already written are kept" in msg
    assert "free disk space, then continue with `vision-audit run CONFIG --resume`" in msg
    assert info.value.exit_code == 1 and isinstance(info.value, AuditError)
    out = tmp_path / "run"
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "failed" and "ENOSPC" in meta["error"]
    shards = sorted(p.name for p in (out / "shards").iterdir())
    assert shards == ["forward-00000.safetensors", "forward-00001.safetensors"]  # no temp file left behind
    assert read_shard(out / "shards" / shards[1])["row_id"].tolist() == [4, 5, 6, 7]
    resumed = run_audit(parse(manifest, out, shard_size=4, resume=True))
    assert resumed.meta["status"] == "complete" and "error" not in resumed.meta
    assert resumed.meta["forward"]["shards_done_before"] == 2
    whole = run_audit(parse(manifest, tmp_path / "whole", shard_size=4))
    assert resumed.table("predictions").equals(whole.table("predictions"))
    np.testing.assert_array_equal(resumed.arrays("embeddings")["image"], whole.arrays("embeddings")["image"])


def test_disk_stays_full_run_json_stays_readable(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "data", 12)
    with pytest.MonkeyPatch.context() as mp, pytest.raises(RunError, match="could not write forward shard 2 of 3"):
        _enospc_on_shard(mp, 2, everything_after=True)
        run_audit(parse(manifest, tmp_path / "run", shard_size=4))
    run = Run.open(tmp_path / "run", allow_partial=True)  # the last good run.json, intact
    assert run.meta["status"] == "partial"
    resumed = run_audit(parse(manifest, tmp_path / "run", shard_size=4, resume=True))
    assert resumed.meta["forward"]["shards_done_before"] == 1
    assert sorted(resumed.table("predictions")["row_id"]) == list(range(12))


def test_cli_reports_disk_full_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from audit.cli import main

    manifest = make_dataset(tmp_path / "data", 8)
    cfg = write_config(tmp_path / "cfg.yaml", manifest, tmp_path / "run", shard_size=4)
    with pytest.MonkeyPatch.context() as mp:
        _enospc_on_shard(mp, 1)
        assert main(["run", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "vision-audit: could not write forward shard 1 of 2" in err and "--resume" in err
    assert "Traceback" not in err
    assert main(["run", str(cfg), "--resume"]) == 0
    assert Run.open(tmp_path / "run").meta["dataset"]["n_used"] == 8
