"""The vision-audit command: sub-commands, exit codes (0 ok, 1 failure, 2 unusable input)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from audit.cli import main


def test_models_lists_every_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for fam in ("timm", "open_clip", "hf", "zoo"):
        assert fam in out
    assert "timm:vit_base_patch16_224" in out and "--checkpoint" in out


def test_python_dash_m_audit_is_the_command() -> None:
    r = subprocess.run([sys.executable, "-m", "audit", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "vision-audit" in r.stdout and "explain" in r.stdout


def test_unknown_subcommand_and_missing_args_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["explain", "x.png"])  # --model is required
    assert exc.value.code == 2


def test_run_with_invalid_config_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.csv").write_text("path,label\n")
    cfg = tmp_path / "a.yaml"
    cfg.write_text("model: {spec: 'zoo:vit-biased'}\ndata: {manifest: m.csv, colums: {}}\nrun: {output: out}\n")
    assert main(["run", str(cfg)]) == 2
    assert "data.colums: unknown key" in capsys.readouterr().err


def test_run_with_missing_manifest_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "a.yaml"
    cfg.write_text("model: {spec: 'zoo:vit-biased'}\ndata: {manifest: nope.csv}\nrun: {output: out}\n")
    assert main(["run", str(cfg)]) == 2
    assert "data.manifest" in capsys.readouterr().err


def test_bad_model_spec_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    assert main(["explain", str(img), "--model", "zoo:no-such-canary"]) == 2
    assert "vit-biased" in capsys.readouterr().err  # the error lists the known names


def test_explain_writes_a_grid_png(tmp_path: Path) -> None:
    from audit.zoo.world import render

    paths = []
    for i, shape in enumerate(["triangle", "circle"]):
        img, _ = render(shape, "dotted", "red", 14.0, False, np.random.default_rng(i))
        p = tmp_path / f"{shape}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p))
    out = tmp_path / "grid.png"
    code = main(["explain", *paths, "--model", "zoo:vit-biased", "--method", "rollout,gradcam", "--out", str(out)])
    assert code == 0 and out.is_file()
    with Image.open(out) as im:
        w, h = im.size
    assert w > h  # 2 rows (images) x 3 columns (image + 2 methods)


def test_explain_unknown_method_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    assert main(["explain", str(img), "--model", "zoo:vit-biased", "--method", "nonsense"]) == 2
    assert "unknown explanation method 'nonsense'" in capsys.readouterr().err


def test_check_on_a_missing_run_exits_2(tmp_path: Path) -> None:
    policy = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"
    assert main(["check", str(tmp_path / "nope"), "--policy", str(policy)]) == 2
