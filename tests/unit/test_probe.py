"""ProbeAdapter: a frozen backbone read by a linear head (file or fitted with scikit-learn)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from audit.config import parse_config
from audit.errors import ConfigError
from audit.forward import forward_rows, load_classifier
from audit.models import load_model
from audit.models.probe import HEAD_FILE, ProbeAdapter, fit_head, load_head
from audit.probing import probe_classifier as _probe_classifier
from tests.helpers_models import TINY_VIT
from tests.probe_data import PROBE_CLASSES, make_probe_manifest

SSL_OPTS = {**TINY_VIT, "num_classes": 0}
D = 32


def probe_classifier(cfg, backbone, **kw):
    return _probe_classifier(cfg, backbone, forward_rows=forward_rows, **kw)


def ssl_backbone():
    torch.manual_seed(0)
    return load_model("timm:vit_tiny_patch16_224", **SSL_OPTS)


def config(tmp_path: Path, probe: dict, **model) -> object:
    data = make_probe_manifest(tmp_path, 12, seed=1, name="audit.csv") if not (tmp_path / "audit.csv").exists() \
        else tmp_path / "audit.csv"
    return parse_config({
        "model": {"spec": "timm:vit_tiny_patch16_224", "options": SSL_OPTS, "probe": probe, **model},
        "data": {"manifest": str(data), "columns": {"groups": ["group"]}},
        "run": {"output": str(tmp_path / "run"), "batch_size": 8},
    })


def write_head(path: Path, c: int = 3, d: int = D, **extra: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    save_file({"weight": rng.normal(size=(c, d)).astype(np.float32), "bias": rng.normal(size=c).astype(np.float32),
               **extra}, str(path))
    return path


def test_file_head_logits_are_linear_in_the_embedding(tmp_path):
    head = write_head(tmp_path / "head.safetensors")
    cfg = config(tmp_path, {"weights": str(head), "class_names": PROBE_CLASSES})
    bb = ssl_backbone()
    probe = probe_classifier(cfg, bb)
    x = torch.randn(4, 3, 32, 32)
    w, b, _ = load_head(head, dim=D)
    expected = bb.encode_image(x).detach().double().numpy() @ w.T + b
    np.testing.assert_allclose(probe.logits(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    assert probe.class_names == PROBE_CLASSES and probe.kind == "classifier"
    assert probe.info["source"] == "file" and len(probe.info["sha256"]) == 64
    assert probe.fingerprint.startswith(bb.fingerprint + "+probe:")
    import copy  # the sanity check's re-initialised copy must not keep the original's fingerprint

    work = copy.deepcopy(probe)
    with torch.no_grad():
        for p in work.vision_blocks()[-1].parameters():
            p.add_(1.0)
    work.__dict__.pop("_fingerprint", None)
    assert work.fingerprint != probe.fingerprint and work.head_hash == probe.head_hash
    # gradients reach the input through the backbone; layout and blocks are the backbone's
    xi = x.clone().requires_grad_(True)
    probe.logits(xi)[:, 1].sum().backward()
    assert xi.grad is not None and xi.grad.abs().sum() > 0
    assert probe.token_layout() == bb.token_layout() and probe.vision_blocks() == bb.vision_blocks()
    emb, logits = probe.embed_and_logits(x)
    assert emb.shape == (4, D) and logits.shape == (4, 3)


def test_file_head_shape_and_key_errors_name_the_file(tmp_path):
    bad = write_head(tmp_path / "bad.safetensors", d=D + 1)
    with pytest.raises(ConfigError, match=r"bad\.safetensors.*expected weight \(C, 32\)"):
        probe_classifier(config(tmp_path, {"weights": str(bad), "class_names": PROBE_CLASSES}), ssl_backbone())
    extra = write_head(tmp_path / "extra.safetensors", scale=np.ones(3, np.float32))
    with pytest.raises(ConfigError, match=r"extra\.safetensors must hold exactly.*\['bias', 'scale', 'weight'\]"):
        probe_classifier(config(tmp_path, {"weights": str(extra), "class_names": PROBE_CLASSES}), ssl_backbone())
    ok = write_head(tmp_path / "ok.safetensors")
    with pytest.raises(ConfigError, match="model.probe.class_names: .* 3 classes"):
        probe_classifier(config(tmp_path, {"weights": str(ok), "class_names": ["x", "y"]}), ssl_backbone())
    with pytest.raises(ConfigError, match="model.probe.weights: .*missing.safetensors does not exist"):
        config(tmp_path, {"weights": str(tmp_path / "missing.safetensors")})


@pytest.mark.parametrize("probe, model, match", [
    ({"weights": "h.safetensors", "manifest": "m.csv"}, {}, "exactly one"),
    ({}, {}, "exactly one"),
    ({"manifest": "m.csv"}, {"class_prompts": {"a": ["a"]}}, "leave out model.class_prompts"),
    ({"weights": "h.safetensors", "C": 2.0}, {}, r"\['C'\] only apply to a fitted head"),
    ({"manifest": "m.csv", "class_names": ["a", "b"]}, {}, "class_names go with weights"),
    ({"manifest": "m.csv", "holdout": 1.5}, {}, "holdout must be a fraction"),
    ({"manifest": "m.csv", "columns": {"label": None}}, {}, "columns.label"),
])
def test_probe_config_errors(tmp_path, probe, model, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"model": {"spec": "timm:x", "probe": probe, **model}, "data": {"manifest": "d.csv"},
                      "run": {"output": "out"}}, check_paths=False)


def test_fit_head_predicts_as_sklearn_exactly():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 8)) * rng.uniform(0.1, 10, size=8) + rng.normal(size=8)
    y = np.array(PROBE_CLASSES)[(x[:, 0] + 0.3 * rng.normal(size=90) > 0).astype(int) + (x[:, 1] > 1)]
    test = rng.normal(size=(200, 8)) * 3
    for classes in (PROBE_CLASSES, PROBE_CLASSES[:2]):
        keep = np.isin(y, classes)
        w, b, fit = fit_head(x[keep], y[keep], classes, C=0.5, seed=7)
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, solver="lbfgs", max_iter=1000,
                                                                 random_state=7)).fit(x[keep], y[keep])
        assert w.shape == (len(classes), 8) and fit["converged"]
        ours = np.array(classes)[np.argmax(test @ w.T + b, axis=1)]
        np.testing.assert_array_equal(ours, ref.predict(test))
        cols = [classes.index(c) for c in ref.classes_]  # sklearn orders its columns by sorted label
        np.testing.assert_allclose(torch.softmax(torch.as_tensor(test @ w.T + b), 1).numpy()[:, cols],
                                   ref.predict_proba(test), rtol=1e-6, atol=1e-9)


def test_fitted_probe_records_seed_accuracy_and_saves_its_head(tmp_path):
    train = make_probe_manifest(tmp_path, 40, seed=5, name="train.csv")
    cfg = config(tmp_path, {"manifest": str(train), "seed": 11, "holdout": 0.25, "C": 0.5})
    bb = ssl_backbone()
    probe = probe_classifier(cfg, bb)
    info = probe.info
    assert info["source"] == "fitted" and info["seed"] == 11 and info["C"] == 0.5
    assert info["n_train"] == 30 and info["n_holdout"] == 10 and info["classes"] == sorted(PROBE_CLASSES)
    for key in ("train_accuracy", "holdout_accuracy"):
        acc = info[key]
        assert acc["n"] == info[key.replace("_accuracy", "").replace("train", "n_train").replace("holdout", "n_holdout")]
        assert acc["ci_low"] <= acc["value"] <= acc["ci_high"] and acc["k"] == round(acc["value"] * acc["n"])
    saved = tmp_path / "run" / HEAD_FILE
    _, _, meta = load_head(saved, dim=D)
    assert json.loads(meta["class_names"]) == sorted(PROBE_CLASSES) and json.loads(meta["info"])["seed"] == 11
    again = probe_classifier(cfg, ssl_backbone(), head_file=saved)
    assert again.fingerprint == probe.fingerprint  # the saved head is the head, bit for bit
    reused = probe_classifier(config(tmp_path, {"weights": str(saved)}), ssl_backbone())  # classes from its metadata
    assert reused.fingerprint == probe.fingerprint and reused.info["source"] == "file"
    other = probe_classifier(config(tmp_path, {"manifest": str(train), "seed": 12, "holdout": 0.25, "C": 0.5}),
                             ssl_backbone())
    assert other.info["seed"] == 12 and other.fingerprint != probe.fingerprint  # another split, another head


def test_fitted_probe_on_the_audited_manifest_needs_consent(tmp_path):
    cfg = config(tmp_path, {"manifest": str(make_probe_manifest(tmp_path, 12, seed=1, name="audit.csv"))})
    with pytest.raises(ConfigError, match="model.probe.manifest: .*also data.manifest.*allow_same_manifest"):
        probe_classifier(cfg, ssl_backbone())
    cfg = config(tmp_path, {"manifest": str(tmp_path / "audit.csv"), "allow_same_manifest": True, "holdout": 0})
    probe = probe_classifier(cfg, ssl_backbone())
    assert probe.info["same_manifest"] and "optimistic" in probe.info["notes"][0]
    assert probe.info["holdout_accuracy"] is None


def test_probe_adapter_refuses_bad_heads():
    bb = ssl_backbone()
    with pytest.raises(Exception, match="distinct class names"):
        ProbeAdapter(bb, np.zeros((2, D)), np.zeros(2), ["a", "a"])
    with pytest.raises(Exception, match="NaN"):
        ProbeAdapter(bb, np.full((2, D), np.nan), np.zeros(2), ["a", "b"])


def test_probe_on_a_bare_hf_dinov2(tmp_path):
    """A transformers Dinov2Model (no classifier) read by a fitted probe: Grad-CAM targets the probe logit."""
    from audit.explain import explain
    from audit.explain.targets import ClassTarget
    from tests.helpers_models import save_tiny_hf_hier

    d = save_tiny_hf_hier("dinov2", tmp_path / "dinov2_features", head=False)
    train = make_probe_manifest(tmp_path, 30, seed=5, name="train.csv")
    cfg = parse_config({"model": {"spec": f"hf:{d}", "probe": {"manifest": str(train), "holdout": 0}},
                        "data": {"manifest": str(make_probe_manifest(tmp_path, 6, seed=1, name="audit.csv"))},
                        "run": {"output": str(tmp_path / "run"), "batch_size": 8}})
    adapter, clf = load_classifier(cfg)
    assert clf is adapter and adapter.backbone.family == "hf" and adapter.info["n_train"] == 30
    x = torch.randn(2, 3, 32, 32)
    expected = adapter.backbone.encode_image(x).detach().double() @ adapter.weight.T + adapter.bias
    torch.testing.assert_close(clf.logits(x).detach(), expected)
    maps = explain(clf, x, method="gradcam", target=ClassTarget(index=[0, 2])).grid_maps
    assert maps.shape[0] == 2 and torch.isfinite(maps).all() and maps.abs().sum() > 0
