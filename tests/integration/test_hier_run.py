"""A tiny timm Swin and an HF ConvNeXt through run_audit: group statistics, embeddings, Grad-CAM / IG maps,
faithfulness; the default explain methods that need attention maps are left out and named in the
limitations, an explicit one is refused before any work (exit-2 UsageError)."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.config import parse_config
from audit.errors import UsageError
from audit.pipeline import run_audit
from tests.helpers_models import CLASS_NAMES, TINY_SWIN, save_tiny_hf_hier, tiny_timm_swin

from .conftest import config_dict, make_dataset


def _config(tmp_path: Path, model: dict, explain: dict) -> dict:
    manifest = make_dataset(tmp_path / "data", 24)
    cfg = config_dict(manifest, tmp_path / "run", batch_size=8)
    cfg["model"] = model
    cfg["explain"] = {"max_images": 6, "faithfulness": True, "faithfulness_steps": 4, "sanity": False, **explain}
    cfg["stats"] = {**cfg["stats"], "embeddings": True, "min_group_size": 5}
    cfg["slices"] = {"enabled": False}
    return cfg


def _swin_model(tmp_path: Path) -> dict:
    tiny_timm_swin(tmp_path)  # writes the checkpoint
    return {"spec": "timm:swin_tiny_patch4_window7_224",
            "checkpoint": str(tmp_path / "swin_tiny_patch4_window7_224.safetensors"),
            "class_names": CLASS_NAMES, "options": {k: list(v) if isinstance(v, tuple) else v
                                                    for k, v in TINY_SWIN.items()}}


def test_swin_run_default_methods_skip_attention_and_say_so(tmp_path: Path) -> None:
    run = run_audit(parse_config(_config(tmp_path, _swin_model(tmp_path), {})))
    assert run.meta["status"] == "complete"
    gp = run.table("group_performance")
    assert {"a", "b"} <= set(gp["group"]) and (gp["n"] > 0).all()
    assert {"ci_low", "ci_high"} <= set(gp.columns)
    faith = run.table("faithfulness")
    assert set(faith["method"]) == {"gradcam"}  # rollout and gae of the default set do not apply to Swin
    assert len(faith) == 6 and faith["deletion_auc"].notna().all() and faith["insertion_auc"].notna().all()
    lim = " ".join(run.meta["limitations"])
    assert "Explanation methods rollout, gae of the default set were left out" in lim
    assert "shifted local windows" in lim
    assert {"embedding_groups", "embedding_distances", "linear_probe"} <= set(run.meta["tables"])
    assert len(run.table("embedding_groups")) > 0


def test_swin_run_with_explicit_rollout_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, _swin_model(tmp_path), {"methods": ["gradcam", "rollout"]})
    with pytest.raises(UsageError, match=r"explain.methods: method 'rollout' does not apply.*use gradcam"):
        run_audit(parse_config(cfg))
    # refused when the model is loaded, before the forward pass: no run directory was written
    assert not (Path(cfg["run"]["output"]) / "run.json").exists()


def test_hf_convnext_run_with_ig(tmp_path: Path) -> None:
    d = tmp_path / "hf_convnext"
    save_tiny_hf_hier("convnext", d)
    cfg = _config(tmp_path, {"spec": f"hf:{d}"}, {"methods": ["gradcam", "ig"], "params": {"ig": {"n_steps": 4}}})
    run = run_audit(parse_config(cfg))
    assert run.meta["status"] == "complete"
    assert set(run.table("faithfulness")["method"]) == {"gradcam", "ig"}
    assert len(run.table("group_performance")) > 0
