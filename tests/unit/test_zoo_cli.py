"""``vision-audit zoo``: list, testset, train (a few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from audit.zoo.cli import main
from audit.zoo.train import build_vit


def test_list_prints_every_canary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for n in ("zoo:vit-biased", "zoo:vit-control", "zoo:clip-biased", "zoo:clip-control"):
        assert n in out
    assert "planted bias" in out


def test_testset_writes_a_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "testset", str(tmp_path / "ts"), "--n-per-cell", "3", "--seed", "5"]) == 0
    df = pd.read_csv(tmp_path / "ts" / "manifest.csv")
    assert len(df) == 36 and (tmp_path / "ts" / df["path"][0]).is_file()
    assert "manifest.csv" in capsys.readouterr().out


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--only", "vit-huge"]) == 2
    assert "--only 'vit-huge': unknown canary; known: vit-biased" in capsys.readouterr().err
    assert main(["testset", "x", "--n-per-cell", "0"]) == 2
    assert main(["frobnicate"]) == 2


def test_train_smoke_writes_weights_and_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--only", "vit-control", "--out", str(tmp_path), "--steps", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "step 3/3" in out and "trained 1 model(s)" in out
    rec = json.loads((tmp_path / "vit-control.json").read_text())
    assert rec["steps"] == 3 and rec["images_seen"] == 3 * rec["recipe"]["batch_size"]
    assert 0.0 <= rec["test"]["overall"] <= 1.0 and rec["test"]["n"] >= 1800
    model = build_vit()
    model.load_state_dict(load_file(tmp_path / "vit-control.safetensors"), strict=True)
