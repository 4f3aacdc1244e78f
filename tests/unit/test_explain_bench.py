"""``vision-audit bench explain`` runs end to end on a tiny configuration (a smoke test, not a timing)."""

from __future__ import annotations

import pytest

from audit.bench import available, run
from audit.errors import UsageError


def test_bench_explain_smoke(capsys) -> None:
    argv = [
        "--model",
        "vit_tiny_patch16_224",
        "--size",
        "32",
        "--batch",
        "2",
        "--repeats",
        "1",
        "--ig-steps",
        "2",
        "--internal-batch-size",
        "4",
        "--threads",
        "1",
    ]
    assert run("explain", argv) == 0
    out = capsys.readouterr().out
    for label in ("capture + rollout", "GAE", "IG (n_steps=2, ibs=4)", "Grad-CAM", "ratio", "goal"):
        assert label in out
    assert out.count("pass") + out.count("miss") == 4


def test_bench_dispatch_errors(capsys) -> None:
    assert "explain" in available()
    with pytest.raises(UsageError, match="unknown benchmark 'nope'; available: .*explain"):
        run("nope", [])
    assert run("explain", ["--methods", "bogus"]) == 2
