"""Resume: a run killed at any moment continues from its last complete shard, with equal results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from audit.errors import RunError
from audit.pipeline import run_audit
from audit.runs import Run
from audit.shards import read_shard, shard_ranges

from .conftest import PYTHON, cli_env, make_dataset, parse, write_config


def _assert_same_results(a: Run, b: Run) -> None:
    assert a.table("predictions").equals(b.table("predictions"))
    assert a.table("samples").equals(b.table("samples"))
    np.testing.assert_array_equal(a.arrays("embeddings")["image"], b.arrays("embeddings")["image"])
    np.testing.assert_array_equal(a.arrays("embeddings")["row_id"], b.arrays("embeddings")["row_id"])
    np.testing.assert_array_equal(a.arrays("probs")["probs"], b.arrays("probs")["probs"])


def _check_partial_run(out: Path, n_rows: int, shard_size: int) -> int:
    """Everything in a killed run that reads as complete is complete; returns the number of shards."""
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "partial"
    assert not (out / "tables").exists() or not (out / "tables" / "predictions.parquet").exists()
    ranges = shard_ranges(n_rows, shard_size)
    shards = sorted((out / "shards").glob("forward-*.safetensors"))
    for p in shards:
        i = int(p.stem.split("-")[1])
        s, e = ranges[i]
        d = read_shard(p)  # readable, with exactly the rows of its range
        assert d["row_id"].tolist() == list(range(s, e))
        assert d["embeddings"].shape == (e - s, 32) and np.isfinite(d["embeddings"]).all()
    return len(shards)


def _kill_when(proc: subprocess.Popen, out: Path, n_shards: int, timeout: float = 240.0) -> None:
    """SIGKILL ``proc`` as soon as ``n_shards`` shard files exist (polling every 2 ms)."""
    t0 = time.monotonic()
    shards = out / "shards"
    while time.monotonic() - t0 < timeout:
        if shards.is_dir() and sum(1 for _ in shards.glob("forward-*.safetensors")) >= n_shards:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {n_shards} shards existed")
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("no shard appeared in time")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    n, shard = 240, 4
    manifest = make_dataset(tmp_path / "data", n, size=64)
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", manifest, out, shard_size=shard, batch_size=2)
    cmd = [PYTHON, "-m", "audit", "run", str(cfg)]
    # 1st attempt: killed once the 2nd shard file exists
    p = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(p, out, 2)
    k1 = _check_partial_run(out, n, shard)
    assert 2 <= k1 < n // shard, "the kill must land mid-run"
    # 2nd attempt (--resume): killed again after a few more shards
    p = subprocess.Popen([*cmd, "--resume"], env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(p, out, k1 + 3)
    k2 = _check_partial_run(out, n, shard)
    assert k1 < k2 < n // shard
    assert json.loads((out / "run.json").read_text())["resumed"] == 1
    # 3rd attempt completes
    r = subprocess.run([*cmd, "--resume"], env=cli_env(), capture_output=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    resumed = Run.open(out)
    assert resumed.meta["forward"]["shards_done_before"] == k2
    assert resumed.meta["forward"]["computed"] == n - k2 * shard
    assert resumed.meta["dataset"]["n_used"] == n
    assert not (out / "shards").exists()
    whole = run_audit(parse(manifest, tmp_path / "whole", shard_size=shard, batch_size=2))
    _assert_same_results(resumed, whole)
    assert sorted(resumed.table("predictions")["row_id"]) == list(range(n))  # nothing lost or counted twice


class _Killed(BaseException):
    """Stands in for SIGKILL inside the process: not an Exception, so nothing handles it."""


@pytest.mark.parametrize("kill_at", [1, 3, 5, 6])
def test_interrupted_at_each_write_then_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_at: int) -> None:
    """Stop the run at the k-th atomic write (shards, then tables, arrays, run.json) and resume."""
    from audit import runs

    manifest = make_dataset(tmp_path / "data", 20)
    calls = {"n": 0}
    real_atomic = runs.atomic_path

    def counting_atomic(final):  # every file of a run goes through runs.atomic_path
        calls["n"] += 1
        if calls["n"] == kill_at + 1:  # +1: run.json at creation
            raise _Killed(str(final))
        return real_atomic(final)

    monkeypatch.setattr(runs, "atomic_path", counting_atomic)
    with pytest.raises(_Killed):
        run_audit(parse(manifest, tmp_path / "run", shard_size=8))
    monkeypatch.setattr(runs, "atomic_path", real_atomic)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "partial"
    resumed = run_audit(parse(manifest, tmp_path / "run", shard_size=8, resume=True))
    whole = run_audit(parse(manifest, tmp_path / "whole", shard_size=8))
    _assert_same_results(resumed, whole)
    assert resumed.meta["forward"]["shards_done_before"] == min(kill_at - 1, 3)


def test_resume_refuses_a_different_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import audit.pipeline as pl

    manifest = make_dataset(tmp_path / "data", 12)
    real = pl.write_shard
    monkeypatch.setattr(pl, "write_shard", lambda *a, **k: (_ for _ in ()).throw(_Killed()))
    with pytest.raises(_Killed):
        run_audit(parse(manifest, tmp_path / "run", shard_size=4))
    monkeypatch.setattr(pl, "write_shard", real)
    with pytest.raises(RunError, match="--resume needs the same model, data and shard settings"):
        run_audit(parse(manifest, tmp_path / "run", shard_size=6, resume=True))


def test_resume_of_a_complete_run_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import audit.pipeline as pl

    manifest = make_dataset(tmp_path / "data", 8)
    first = run_audit(parse(manifest, tmp_path / "run"))
    monkeypatch.setattr(pl, "forward_shards", lambda *a, **k: pytest.fail("recomputed a complete run"))
    again = run_audit(parse(manifest, tmp_path / "run", resume=True))
    assert again.meta["run_id"] == first.meta["run_id"] and again.meta["status"] == "complete"


def test_damaged_shard_and_stray_temp_files_are_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import audit.pipeline as pl

    manifest = make_dataset(tmp_path / "data", 16)
    real = pl.write_shard
    n = {"k": 0}

    def stop_after_two(*a, **k):
        n["k"] += 1
        if n["k"] == 3:
            raise _Killed()
        return real(*a, **k)

    monkeypatch.setattr(pl, "write_shard", stop_after_two)
    with pytest.raises(_Killed):
        run_audit(parse(manifest, tmp_path / "run", shard_size=4))
    monkeypatch.setattr(pl, "write_shard", real)
    shards = tmp_path / "run" / "shards"
    (shards / "forward-00001.safetensors").write_bytes(b"\x00garbage")  # e.g. a bad copy of the run dir
    (shards / ".forward-00002.safetensors.abc.tmp").write_bytes(b"half")
    resumed = run_audit(parse(manifest, tmp_path / "run", shard_size=4, resume=True))
    assert resumed.meta["forward"]["shards_done_before"] == 1
    whole = run_audit(parse(manifest, tmp_path / "whole", shard_size=4))
    _assert_same_results(resumed, whole)
