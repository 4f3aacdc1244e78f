"""The content-addressed cache: a new analysis of the same images and model reuses stored results."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

import audit.forward as fw
from audit.cache import ArrayCache, cached_rows, content_hashes, map_cache, map_keys, namespace_hash
from audit.pipeline import run_audit

from .conftest import make_dataset, parse


@pytest.fixture
def count_forward(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count images passed through the model (_forward_outputs is the only way to the model)."""
    calls = {"batches": 0, "images": 0}
    real = fw._forward_outputs

    def counting(classifier, x, **kw):
        calls["batches"] += 1
        calls["images"] += int(x.shape[0])
        return real(classifier, x, **kw)

    monkeypatch.setattr(fw, "_forward_outputs", counting)
    return calls


def test_second_analysis_hits_the_cache_for_every_row(tmp_path: Path, count_forward: dict[str, int]) -> None:
    manifest = make_dataset(tmp_path / "data", 20)
    cache = tmp_path / "cache"
    first = run_audit(parse(manifest, tmp_path / "run1", shard_size=8, cache_dir=str(cache)))
    assert count_forward["images"] == 20
    assert first.meta["cache"]["hits"] == 0 and first.meta["cache"]["writes"] == 20
    second = run_audit(parse(manifest, tmp_path / "run2", shard_size=6, batch_size=5, cache_dir=str(cache)))
    assert count_forward["images"] == 20  # no image went through the model again
    assert second.meta["cache"]["hits"] == 20 and second.meta["cache"]["misses"] == 0
    assert second.meta["forward"]["cached"] == 20 and second.meta["forward"]["computed"] == 0
    assert second.table("predictions").equals(first.table("predictions"))
    np.testing.assert_array_equal(second.arrays("embeddings")["image"], first.arrays("embeddings")["image"])


def test_partial_hits_and_keys_by_content_not_path(tmp_path: Path, count_forward: dict[str, int]) -> None:
    import shutil

    small = make_dataset(tmp_path / "a", 10)
    cache = tmp_path / "cache"
    run_audit(parse(small, tmp_path / "run1", cache_dir=str(cache)))
    # a second dataset: the same 10 images copied under new names, plus 6 new ones
    big = make_dataset(tmp_path / "b", 16, seed=1)
    for i in range(10):
        shutil.copy(tmp_path / "a" / "img" / f"im{i:05d}.png", tmp_path / "b" / "img" / f"im{i:05d}.png")
    for p in (tmp_path / "b" / "img").glob("*.png"):
        p.rename(p.with_name("x" + p.name))
    (tmp_path / "b" / "manifest.csv").write_text((tmp_path / "b" / "manifest.csv").read_text().replace("img/", "img/x"))
    before = count_forward["images"]
    run = run_audit(parse(big, tmp_path / "run2", cache_dir=str(cache)))
    assert count_forward["images"] - before == 6
    assert run.meta["forward"] == {"shards": 2, "shards_done_before": 0, "computed": 6, "cached": 10}
    nocache = run_audit(parse(big, tmp_path / "run3"))
    assert run.table("predictions").equals(nocache.table("predictions"))
    np.testing.assert_array_equal(run.arrays("probs")["probs"], nocache.arrays("probs")["probs"])


def test_other_precision_or_weights_do_not_hit(tmp_path: Path, count_forward: dict[str, int]) -> None:
    from audit.config import parse_config

    from .conftest import config_dict

    manifest = make_dataset(tmp_path / "data", 6)
    cache = str(tmp_path / "cache")
    run_audit(parse(manifest, tmp_path / "r1", cache_dir=cache))
    bf16 = run_audit(parse(manifest, tmp_path / "r2", cache_dir=cache, precision="bf16"))
    assert bf16.meta["cache"]["hits"] == 0
    d = config_dict(manifest, tmp_path / "r3", cache_dir=cache)
    d["stats"]["seed"] = 1  # other random init -> other weights fingerprint
    other = run_audit(parse_config(d))
    assert other.meta["cache"]["hits"] == 0
    assert count_forward["images"] == 18


def test_array_cache_round_trip_and_damaged_chunk(tmp_path: Path) -> None:
    c = ArrayCache(tmp_path, kind="forward", namespace={"model": "m@1"})
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 3)).astype(np.float32)
    assert c.put(["k0", "k1", "", "k3", "k4"], {"probs": a}) == 4
    found, got = c.get(["k4", "zz", "k0", ""])
    assert found.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(got["probs"], a[[4, 0]])
    assert (c.hits, c.misses) == (2, 2) and len(c) == 4
    # the same namespace from another object (another run) sees the rows; another namespace does not
    assert ArrayCache(tmp_path, kind="forward", namespace={"model": "m@1"}).contains(["k1"]).tolist() == [True]
    assert ArrayCache(tmp_path, kind="forward", namespace={"model": "m@2"}).contains(["k1"]).tolist() == [False]
    for f in (c.path / "chunks").iterdir():
        f.write_bytes(b"broken")
    found, got = c.get(["k0"])
    assert found.tolist() == [False] and got == {}
    assert namespace_hash({"a": 1, "b": 2}) == namespace_hash({"b": 2, "a": 1})


def _writer(root: str, start: int) -> None:
    c = ArrayCache(root, kind="maps", namespace={"x": 1})
    for j in range(10):
        keys = [f"k{(start + j + i) % 25}" for i in range(5)]
        vals = np.array([[float(k[1:])] * 4 for k in keys], np.float32)
        c.put(keys, {"maps": vals})


def test_concurrent_writers_and_readers(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s)) for s in (0, 7, 13)]
    for p in procs:
        p.start()
    c = ArrayCache(tmp_path, kind="maps", namespace={"x": 1})
    while any(p.is_alive() for p in procs):  # read while they write: every row seen is whole
        found, got = c.get([f"k{i}" for i in range(25)])
        if found.any():
            keys = np.array([i for i in range(25)])[found]
            np.testing.assert_array_equal(got["maps"], np.repeat(keys[:, None], 4, 1).astype(np.float32))
    for p in procs:
        p.join()
        assert p.exitcode == 0
    found, got = c.get([f"k{i}" for i in range(25)])
    assert found.all()
    np.testing.assert_array_equal(got["maps"][:, 0], np.arange(25, dtype=np.float32))


def test_map_cache_reuses_explanations(tmp_path: Path) -> None:
    """Maps keyed by model, method+params and image content (+ target): computed once, equal when reused."""
    import torch

    from audit.data import ImageDataset
    from audit.explain import ClassTarget, explain
    from audit.forward import forward_frame
    from audit.models import load_model

    from .conftest import CLASSES, TINY_MODEL

    manifest = make_dataset(tmp_path / "data", 6)
    torch.manual_seed(0)
    adapter = load_model(TINY_MODEL["spec"], class_names=CLASSES, **TINY_MODEL["options"])
    import pandas as pd

    df = pd.read_csv(manifest)
    df["path"] = [str(manifest.parent / p) for p in df["path"]]
    df["row_id"] = range(len(df))
    ds = ImageDataset(forward_frame(df), adapter.preprocess.transform())
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])  # (6, 3, 32, 32)
    targets = [0, 1, 2, 0, 1, 2]
    keys = map_keys(content_hashes(df["path"].tolist()), targets)
    calls = []

    def compute(idx: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(idx.tolist())
        e = explain(adapter, x[idx], method="rollout", target=ClassTarget(index=[targets[i] for i in idx]), seed=0)
        return {"maps": e.grid_maps.detach().float().numpy()}

    def cache(params: dict) -> ArrayCache:
        return map_cache(tmp_path / "c", adapter=adapter, classifier=adapter, method="rollout", params=params,
                         seed=0, device="cpu")

    first = cached_rows(cache({}), keys[:4], compute)["maps"]
    again = cached_rows(cache({}), keys, compute)["maps"]  # rows 0-3 stored, 4-5 new
    assert calls == [[0, 1, 2, 3], [4, 5]]
    np.testing.assert_array_equal(again[:4], first)
    direct = explain(adapter, x, method="rollout", target=ClassTarget(index=targets), seed=0).grid_maps
    np.testing.assert_allclose(again, direct.detach().float().numpy(), atol=1e-6)
    cached_rows(cache({"discard_ratio": 0.5}), keys[:2], compute)  # other params: other namespace
    assert calls[-1] == [0, 1]


def test_second_run_reuses_explanation_maps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's explanation stage goes through the map cache: a second run of the same images
    calls the method for no image and stores the same maps and faithfulness scores."""
    from audit.config import parse_config
    from audit.registry import METHODS

    from .conftest import config_dict

    calls = {"images": 0}
    real = METHODS.get("rollout")

    def counting(adapter, images, **kw):
        calls["images"] += int(images.shape[0])
        return real(adapter, images, **kw)

    counting.target_free = True  # type: ignore[attr-defined]
    monkeypatch.setitem(METHODS._items, "rollout", counting)
    manifest = make_dataset(tmp_path / "data", 10)

    def cfg(out: str, cache: bool) -> dict:
        c = config_dict(manifest, tmp_path / out, batch_size=4, **({"cache_dir": str(tmp_path / "cache")} if cache else {}))
        c["explain"] = {"methods": ["rollout"], "max_images": 8, "faithfulness": True, "faithfulness_steps": 4,
                        "sanity": False}
        return c

    first = run_audit(parse_config(cfg("run1", True)))
    assert calls["images"] == 8
    second = run_audit(parse_config(cfg("run2", True)))
    assert calls["images"] == 8  # every map came from the cache
    m1, r1 = first.maps("rollout")
    m2, r2 = second.maps("rollout")
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(m1, m2)
    assert second.table("faithfulness").equals(first.table("faithfulness"))
    fresh = run_audit(parse_config(cfg("run3", False)))  # no cache: computed again, same maps
    assert calls["images"] == 16
    np.testing.assert_allclose(fresh.maps("rollout")[0].astype(np.float32), m1.astype(np.float32), atol=1e-3)
