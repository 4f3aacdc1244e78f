"""Shared set-up for the pipeline integration tests: tiny image datasets and configs on disk."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

CLASSES = ["cat", "dog", "bird"]
TINY_MODEL = {
    "spec": "timm:vit_tiny_patch16_224",
    "class_names": CLASSES,
    "options": {"pretrained": False, "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
                "num_heads": 2, "num_classes": 3},
}


def make_dataset(root: Path, n: int, *, size: int = 40, fmt: str = "PNG", seed: int = 0,
                 bad_rows: tuple[int, ...] = ()) -> Path:
    """``n`` random images under ``root/img`` and a CSV manifest (path, label, group); returns the CSV.

    Rows in ``bad_rows`` get a truncated file (undecodable, header readable).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    img_dir = root / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,group"]
    suffix = ".png" if fmt == "PNG" else ".jpg"
    for i in range(n):
        arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        p = img_dir / f"im{i:05d}{suffix}"
        Image.fromarray(arr).save(p, format=fmt)
        if i in bad_rows:
            data = p.read_bytes()
            p.write_bytes(data[: len(data) // 2])
        lines.append(f"img/{p.name},{CLASSES[i % 3]},{'ab'[i % 2]}")
    csv = root / "manifest.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def config_dict(manifest: Path, output: Path, *, data: dict[str, Any] | None = None, **run: Any) -> dict[str, Any]:
    """An audit config with explanations and embedding statistics off (the forward path only)."""
    return {
        "model": TINY_MODEL,
        "data": {"manifest": str(manifest), "columns": {"image": "path", "label": "label", "groups": ["group"]},
                 **(data or {})},
        "explain": {"methods": [], "faithfulness": False, "sanity": False},
        "stats": {"n_boot": 50, "n_perm": 50, "embeddings": False, "intersections": False},
        "run": {"output": str(output), "batch_size": 4, "shard_size": 8, **run},
    }


def write_config(path: Path, manifest: Path, output: Path, *, data: dict[str, Any] | None = None, **run: Any) -> Path:
    path.write_text(yaml.safe_dump(config_dict(manifest, output, data=data, **run)))
    return path


def parse(manifest: Path, output: Path, *, data: dict[str, Any] | None = None, **run: Any):
    from audit.config import parse_config

    return parse_config(config_dict(manifest, output, data=data, **run))


def cli_env() -> dict[str, str]:
    """Environment for a ``python -m audit`` subprocess: CPU only, offline, 1-2 threads."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.update(CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    return env


PYTHON = sys.executable


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data", 30)
