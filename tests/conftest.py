"""Shared test set-up: CPU only, no network, deterministic, bounded threads."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def canary_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, "object"]:
    """The demo's four canary runs (the main job, built once per test session).

    Returns ``{name: Path}`` for vit-biased, vit-control, clip-biased, clip-control, plus
    ``"data"``: the test-set manifest.
    """
    from audit.demo import CANARIES, run_demo

    out = tmp_path_factory.mktemp("canary-runs")
    code = run_demo(out=out, report=False)
    assert code == 0
    paths = {name: out / name for name in CANARIES}
    paths["data"] = out / "data" / "manifest.csv"
    return paths
