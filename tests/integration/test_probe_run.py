"""A frozen SSL-style backbone (timm ViT, num_classes=0) audited through a fitted linear probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from audit.config import parse_config
from audit.models import load_model
from audit.models.probe import HEAD_FILE, load_head
from audit.pipeline import run_audit
from audit.runs import Run
from tests.helpers_models import TINY_CLIP_CFG, TINY_VIT
from tests.probe_data import make_probe_manifest

SSL_OPTS = {**TINY_VIT, "num_classes": 0}


def save_ssl_backbone(path: Path) -> Path:
    """A head-less ViT (as an MAE / DINO checkpoint), random weights, saved as safetensors."""
    from audit.models.checkpoints import save_state_dict

    torch.manual_seed(0)
    save_state_dict(load_model("timm:vit_tiny_patch16_224", **SSL_OPTS).model, path)
    return path


def probe_config(tmp_path: Path, model: dict, *, methods=("rollout", "gradcam"), sanity: bool = False) -> dict:
    train = make_probe_manifest(tmp_path, 60, seed=5, name="train.csv")
    audit = make_probe_manifest(tmp_path, 48, seed=9, name="audit.csv")
    return {
        "model": {**model, "probe": {"manifest": str(train), "seed": 3, "holdout": 0.25}},
        "data": {"manifest": str(audit), "columns": {"groups": ["group"]}},
        "explain": {"methods": list(methods), "max_images": 6, "faithfulness": sanity, "sanity": sanity,
                    "sanity_images": 2, "faithfulness_steps": 4},
        "stats": {"n_boot": 50, "n_perm": 50, "min_group_size": 5, "embeddings": False, "intersections": False},
        "slices": {"enabled": False},
        "run": {"output": str(tmp_path / "run"), "batch_size": 8, "shard_size": 16},
    }


def independent_predictions(run: Run, backbone) -> pd.DataFrame:
    """The probe's predictions of the audited images, computed here: backbone embedding, saved head."""
    w, b, _ = load_head(run.path / HEAD_FILE, dim=int(run.meta["model"]["probe"]["embed_dim"]))
    samples = run.table("samples")
    tf = backbone.preprocess.transform()
    root = Path(run.meta["dataset"]["root"])
    x = torch.stack([tf(Image.open(p if Path(p).is_absolute() else root / p).convert("RGB")) for p in samples["path"]])
    with torch.no_grad():
        emb = backbone.encode_image(x).double().numpy()
    names = np.array(run.class_names)
    return samples.assign(pred=names[np.argmax(emb @ w.T + b, axis=1)])


def test_probe_run_reproduces_sklearn_accuracy_by_group(tmp_path):
    from sklearn.metrics import accuracy_score

    ckpt = save_ssl_backbone(tmp_path / "ssl_vit.safetensors")
    model = {"spec": "timm:vit_tiny_patch16_224", "checkpoint": str(ckpt), "options": SSL_OPTS}
    run = run_audit(parse_config(probe_config(tmp_path, model, sanity=True)))
    probe = run.meta["model"]["probe"]
    assert run.meta["status"] == "complete" and probe["source"] == "fitted" and probe["seed"] == 3
    assert probe["n_train"] == 45 and probe["holdout_accuracy"]["n"] == 15 and (run.path / HEAD_FILE).is_file()
    assert run.meta["model"]["fingerprint"].endswith("+probe:" + probe["head_sha"])

    backbone = load_model("timm:vit_tiny_patch16_224", checkpoint=str(ckpt), **SSL_OPTS)
    ours = independent_predictions(run, backbone)
    preds = run.table("predictions").set_index("row_id").loc[ours["row_id"]]
    np.testing.assert_array_equal(preds["pred"].to_numpy(), ours["pred"].to_numpy())
    gp = run.table("group_performance")
    acc = gp[(gp["metric"] == "accuracy") & (gp["attribute"] == "group")].set_index("group")
    assert set(acc.index) == {"a", "b"}
    for g, sub in ours.groupby("group"):
        assert acc.loc[g, "value"] == accuracy_score(sub["label"], sub["pred"])  # exactly scikit-learn's
        assert acc.loc[g, "n"] == len(sub) and acc.loc[g, "ci_low"] <= acc.loc[g, "value"] <= acc.loc[g, "ci_high"]

    # explanations target the probe logit: the stored Grad-CAM maps are the reloaded probe's
    adapter, clf = run.load_model()
    assert clf is adapter and clf.fingerprint == run.meta["model"]["fingerprint"]
    from audit.explain import explain
    from audit.explain.targets import ClassTarget

    maps, rows = run.maps("gradcam")
    sub = ours.set_index("row_id").loc[rows]
    tf = adapter.preprocess.transform()
    root = Path(run.meta["dataset"]["root"])
    x = torch.stack([tf(Image.open(root / p).convert("RGB")) for p in sub["path"]])
    target = ClassTarget(index=[run.class_names.index(c) for c in sub["pred"]])
    again = explain(clf, x, method="gradcam", target=target, seed=0).grid_maps.detach().float().numpy()
    np.testing.assert_allclose(maps.astype(np.float32), again, rtol=2e-2, atol=2e-3 * float(np.abs(again).max()))
    assert len(run.maps("rollout")[1]) == len(rows)
    assert set(run.table("sanity")["method"]) >= {"gradcam"} and len(run.table("faithfulness")) > 0

    from audit.report import write_report

    out = write_report(run.path, formats=("html", "md", "pdf"))
    md = out["md"].read_text(encoding="utf-8")
    assert "Probe head" in md and "fitted by logistic regression" in md and "held-out accuracy" in md
    assert "<th>Probe head</th>" in out["html"].read_text(encoding="utf-8") and out["pdf"].stat().st_size > 0


def test_probe_run_through_the_cli_and_a_changed_head_is_refused(tmp_path, capsys):
    import yaml

    from audit.cli import main

    ckpt = save_ssl_backbone(tmp_path / "ssl_vit.safetensors")
    model = {"spec": "timm:vit_tiny_patch16_224", "checkpoint": str(ckpt), "options": SSL_OPTS}
    cfg = probe_config(tmp_path, model, methods=())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**cfg, "model": {**model, "probe": {**cfg["model"]["probe"], "weights": "h.st"}}}))
    assert main(["run", str(bad)]) == 2
    assert "model.probe: Value error, give weights (a safetensors head) or manifest" in capsys.readouterr().err
    good = tmp_path / "audit.yaml"
    good.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(good)]) == 0
    out = capsys.readouterr().out
    assert "probe head: linear probe (3 classes on the 32-d embedding) fitted by logistic regression" in out
    assert "held-out accuracy" in out and "(n=15)" in out
    run = Run.open(tmp_path / "run")
    from safetensors.numpy import save_file

    w, b, meta = load_head(run.path / HEAD_FILE, dim=32)
    save_file({"weight": w * 2, "bias": b}, str(run.path / HEAD_FILE), metadata=meta)
    from audit.errors import RunError

    with pytest.raises(RunError, match="is not the audited one"):
        run.load_model()


def test_probe_on_a_clip_image_tower(tmp_path):
    model = {"spec": "open_clip:tiny-clip", "options": {"model_cfg": TINY_CLIP_CFG}}
    torch.manual_seed(0)
    run = run_audit(parse_config(probe_config(tmp_path, model, methods=("gradcam",))))
    m = run.meta["model"]
    assert m["kind"] == "classifier" and m["backbone_kind"] == "clip" and m["probe"]["embed_dim"] == 32
    assert set(m["class_names"]) == {"red", "green", "blue"} and len(run.maps("gradcam")[1]) > 0
    _, clf = run.load_model()
    assert clf.fingerprint == m["fingerprint"]
