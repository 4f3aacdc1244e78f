"""The local forward path: values against an independent computation, workers, shards, devices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from audit.errors import RunError, UsageError
from audit.forward import _ShardBatches
from audit.pipeline import run_audit
from audit.shards import consolidate_shards, shard_path, shard_ranges, write_shard

from .conftest import CLASSES, TINY_MODEL, make_dataset, parse, write_config

# audit.stats.disparity_tests (not this module) triggers this pandas deprecation at the moment


def _independent_outputs(manifest: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """probs (N, C) and pre-logit embeddings (N, D) computed with timm + PIL directly."""
    import pandas as pd
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from audit.models import weights_hash

    torch.manual_seed(0)  # the pipeline seeds with stats.seed (0) before building the model
    model = timm.create_model(TINY_MODEL["spec"].split(":", 1)[1], **TINY_MODEL["options"]).eval()
    tf = create_transform(**resolve_data_config({"input_size": (3, 32, 32)}, model=model))  # timm's own eval preprocessing
    df = pd.read_csv(manifest)
    x = torch.stack([tf(Image.open(manifest.parent / p).convert("RGB")) for p in df["path"]])  # (N, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        emb = model.forward_head(feats, pre_logits=True)  # (N, D)
        probs = torch.softmax(model.forward_head(feats), dim=1)  # (N, C)
    return probs.numpy(), emb.numpy(), weights_hash(model)


def test_forward_matches_independent_computation(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "data", 20)
    run = run_audit(parse(manifest, tmp_path / "run", shard_size=8, batch_size=3))
    probs, emb, whash = _independent_outputs(manifest)
    assert run.meta["model"]["fingerprint"].endswith(whash)  # same weights
    arr = run.arrays("probs")
    np.testing.assert_array_equal(arr["row_id"], np.arange(20))
    np.testing.assert_allclose(arr["probs"], probs, atol=1e-5)
    np.testing.assert_allclose(run.arrays("embeddings")["image"], emb, atol=1e-5)
    pred = run.table("predictions")
    assert pred["pred"].tolist() == [CLASSES[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(pred["score"], probs.max(1), atol=1e-5)
    assert run.meta["status"] == "complete"
    assert run.meta["device"] == "cpu" and run.meta["dtype"] == "float32"
    assert run.meta["forward"] == {"shards": 3, "shards_done_before": 0, "computed": 20, "cached": 0}
    assert not (run.path / "shards").exists()


def _first_probs(run, classifier, adapter) -> tuple[np.ndarray, np.ndarray]:
    """(probs of the first used image by ``classifier``, the stored probs of that image)."""
    from PIL import Image

    row = int(run.arrays("probs")["row_id"][0])
    x = adapter.preprocess.transform()(Image.open(run.image_path(row)).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        live = torch.softmax(classifier.logits(x).float(), dim=1)[0].numpy()
    return live, run.arrays("probs")["probs"][0]


def test_the_runs_config_and_model_are_those_of_the_pipeline(tmp_path: Path) -> None:
    """Run.config is the config the run was made with; Run.load_model rebuilds its model (the same
    weights also without a checkpoint: the run's seed) and leaves the caller's random state alone."""
    from audit.runs import Run

    manifest = make_dataset(tmp_path / "data", 6)
    config = parse(manifest, tmp_path / "run")
    run = Run.open(run_audit(config).path)
    assert run.config == config
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    adapter, classifier = run.load_model()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert classifier is adapter and adapter.fingerprint == run.meta["model"]["fingerprint"]
    assert classifier.class_names == CLASSES == run.class_names
    live, stored = _first_probs(run, classifier, adapter)
    np.testing.assert_allclose(live, stored, atol=1e-5)


def test_a_clip_runs_model_is_its_zero_shot_classifier(tmp_path: Path) -> None:
    """A CLIP run records its zero-shot classes; Run.load_model builds the same ZeroShotHead."""
    from audit.config import parse_config
    from audit.runs import Run

    from .conftest import config_dict

    tiny_clip = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2,
                                                 "head_width": 16, "mlp_ratio": 2.0},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                              "mlp_ratio": 2.0}}
    manifest = make_dataset(tmp_path / "data", 6)
    cfg = config_dict(manifest, tmp_path / "run")
    cfg["model"] = {"spec": "open_clip:tiny-test", "options": {"model_cfg": tiny_clip, "pretrained": False}}
    cfg["clip"] = {"label_set": None, "ks": [2]}
    run = Run.open(run_audit(parse_config(cfg)).path)
    assert run.kind == "clip" and run.class_names == sorted(CLASSES)
    adapter, classifier = run.load_model()
    assert classifier is not adapter and classifier.class_names == sorted(CLASSES)
    assert adapter.fingerprint == run.meta["model"]["fingerprint"]
    live, stored = _first_probs(run, classifier, adapter)
    np.testing.assert_allclose(live, stored, atol=1e-5)


def test_workers_and_batch_sizes_give_identical_results(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "data", 21)
    a = run_audit(parse(manifest, tmp_path / "a", num_workers=0, batch_size=4, shard_size=8))
    b = run_audit(parse(manifest, tmp_path / "b", num_workers=2, batch_size=4, shard_size=8))
    np.testing.assert_array_equal(a.arrays("embeddings")["image"], b.arrays("embeddings")["image"])
    np.testing.assert_array_equal(a.arrays("probs")["probs"], b.arrays("probs")["probs"])
    assert a.table("predictions").equals(b.table("predictions"))


def test_batches_never_cross_a_shard() -> None:
    s = _ShardBatches([8, 0, 5, 3], batch_size=3)
    assert s.per_shard == [3, 0, 2, 1]
    assert list(s) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9, 10], [11, 12], [13, 14, 15]]
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]


def test_skip_bad_records_rows_once(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "data", 18, bad_rows=(3, 11))
    # the manifest check reads headers only, so truncated data is found by the forward decode
    run = run_audit(parse(manifest, tmp_path / "run", shard_size=8, data={"skip_bad": True}))
    skipped = {int(s["row_id"]) for s in run.meta["skipped"]}
    assert skipped == {3, 11}
    assert sorted(run.table("predictions")["row_id"]) == [r for r in range(18) if r not in (3, 11)]
    assert run.meta["dataset"]["n_used"] == 16


def test_lost_or_duplicated_rows_are_detected(tmp_path: Path) -> None:
    import shutil

    from audit.runs import Run

    manifest = make_dataset(tmp_path / "data", 16)
    run = run_audit(parse(manifest, tmp_path / "run", shard_size=8))
    df = run.table("samples")
    # rebuild shards by hand: shard 1 a copy of shard 0 (rows duplicated, rows 8..15 lost)

    arr = run.arrays("probs")
    emb = run.arrays("embeddings")["image"]
    write_shard(shard_path(run, 0), {"row_id": arr["row_id"][:8], "probs": arr["probs"][:8], "embeddings": emb[:8],
                                     "skipped": []})
    shutil.copy(shard_path(run, 0), shard_path(run, 1))
    with pytest.raises(RunError, match="lost or duplicated"):
        consolidate_shards(Run.open(run.path), shard_ranges(16, 8), df)
    shard_path(run, 1).unlink()
    with pytest.raises(RunError, match="missing; rerun with --resume"):
        consolidate_shards(Run.open(run.path), shard_ranges(16, 8), df)


def test_device_cuda_without_cuda_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from audit.cli import main

    assert not torch.cuda.is_available()
    manifest = make_dataset(tmp_path / "data", 4)
    cfg = write_config(tmp_path / "cfg.yaml", manifest, tmp_path / "run")
    assert main(["run", str(cfg), "--device", "cuda", "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert "run.device: cuda was requested but no CUDA device is available; use --device cpu" in err
    assert not (tmp_path / "run").exists()


def test_resolve_device_rejects_cuda_without_cuda() -> None:
    from audit.forward import resolve_device

    with pytest.raises(UsageError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_autocast_close_to_cpu_fp32(tmp_path: Path, precision: str) -> None:
    manifest = make_dataset(tmp_path / "data", 24)
    cpu = run_audit(parse(manifest, tmp_path / "cpu"))
    gpu = run_audit(parse(manifest, tmp_path / "gpu", device="cuda", precision=precision))
    assert gpu.meta["device"] == "cuda" and gpu.meta["dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[precision]
    assert gpu.arrays("probs")["probs"].dtype == np.float32
    np.testing.assert_allclose(gpu.arrays("probs")["probs"], cpu.arrays("probs")["probs"], atol=3e-2)
    np.testing.assert_allclose(gpu.arrays("embeddings")["image"], cpu.arrays("embeddings")["image"], atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
def test_cuda_fp32_equals_cpu(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "data", 24)
    cpu = run_audit(parse(manifest, tmp_path / "cpu"))
    gpu = run_audit(parse(manifest, tmp_path / "gpu", device="cuda", num_workers=2))
    np.testing.assert_allclose(gpu.arrays("probs")["probs"], cpu.arrays("probs")["probs"], atol=1e-4)
    assert gpu.table("predictions")["pred"].tolist() == cpu.table("predictions")["pred"].tolist()
