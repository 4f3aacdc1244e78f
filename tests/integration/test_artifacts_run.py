"""A run on a tiny ViT with a planted high-norm artefact token writes artifact_tokens / artifact_images,
puts the caveat on the affected images and in the run's limitations; a plain tiny ViT writes empty tables."""

from __future__ import annotations

from pathlib import Path

import torch

from audit.config import parse_config
from audit.models import load_model
from audit.models.checkpoints import save_state_dict
from audit.pipeline import run_audit
from tests.helpers_models import CLASS_NAMES, TINY_PP, TINY_VIT
from tests.unit.test_explain_artifacts import plant_artifact

from .conftest import config_dict, make_dataset


def _cfg(tmp_path: Path, model: dict | None = None) -> dict:
    manifest = make_dataset(tmp_path / "data", 16)
    cfg = config_dict(manifest, tmp_path / "run", batch_size=8)
    if model is not None:
        cfg["model"] = model
    cfg["explain"] = {"methods": ["rollout"], "max_images": 6, "faithfulness": False, "sanity": False}
    cfg["slices"] = {"enabled": False}
    return cfg


def test_run_with_planted_artifact_writes_tables_and_caveat(tmp_path: Path) -> None:
    torch.manual_seed(0)
    opts = dict(TINY_VIT)
    a = load_model("timm:vit_tiny_patch16_224", class_names=CLASS_NAMES, **opts)
    plant_artifact(a, torch.randn(8, 3, 32, 32), ratio=200.0)
    ckpt = tmp_path / "planted.safetensors"
    save_state_dict(a.model, ckpt, preprocess=TINY_PP)
    model = {"spec": "timm:vit_tiny_patch16_224", "checkpoint": str(ckpt), "class_names": CLASS_NAMES,
             "options": {k: v for k, v in opts.items() if k != "pretrained"}}
    run = run_audit(parse_config(_cfg(tmp_path, model)))
    assert run.meta["status"] == "complete"
    tok, per = run.table("artifact_tokens"), run.table("artifact_images")
    assert len(per) == 6 and per["affected"].all()
    assert set(zip(tok["token_row"], tok["token_col"])) == {(1, 1)}
    assert (tok["norm_ratio"] > 10).all() and set(tok["row_id"]) == set(per["row_id"])
    assert per["caveat"].str.match(r"attention map dominated by 1 high-norm artefact token \(\d+% of the CLS attention\); "
                                   r"read with care").all()
    assert run.meta["artifacts"]["n"] == 6 and run.meta["artifacts"]["n_affected"] == 6
    lim = " ".join(run.meta["limitations"])
    assert "High-norm artefact tokens (Darcet et al. 2024) in 6 of 6 explained images" in lim


def test_run_on_plain_vit_has_no_artifacts(tmp_path: Path) -> None:
    run = run_audit(parse_config(_cfg(tmp_path)))
    assert len(run.table("artifact_tokens")) == 0
    per = run.table("artifact_images")
    assert len(per) == 6 and not per["affected"].any() and (per["caveat"] == "").all()
    assert "artefact" not in " ".join(run.meta["limitations"])
