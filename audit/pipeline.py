"""run_audit(config) -> Run: one pass of the flow in DESIGN.md.

Stages (each timed in run.json):

1. ``load``     model adapter (CLIP wrapped in a ZeroShotHead), manifest, run directory
2. ``forward``  one forward pass per image, in shards of ``run.shard_size`` rows:
                probabilities and image embeddings; every shard is written atomically to
                ``shards/`` so a killed run resumes from the last complete shard
3. ``tables``   samples, predictions, embeddings consolidated from the shards
4. ``stats``    group performance, disparity tests, embedding statistics (pure functions)
5. ``explain``  maps for a stratified subset, faithfulness, sanity check, region mass by group
6. ``clip``     zero-shot harms, association tests, retrieval skew (CLIP models only)
7. ``finish``   limitations, the findings ledger (:mod:`audit.findings`), status "complete"

The local backend streams the rows through one DataLoader (workers decode ahead of the
model; batches never straddle a shard) in this process; ``run.backend: ray`` hands the
rows to Ray Data (``audit.scale``). Both feed the same shard writer, so resume,
the cache (``run.cache_dir``, :mod:`audit.cache`) and consolidation are shared and the
results are equal either way. Peak memory is one shard plus the final per-image arrays.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit.config import AuditConfig
from audit.errors import NumericsError, RunError, UsageError
from audit.runs import Run, read_arrays, write_arrays

Progress = Callable[[str, int, int], None]


def _noop_progress(stage: str, done: int, total: int) -> None:  # pragma: no cover - trivial
    return None


@dataclass
class _Timer:
    timings: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)


# --------------------------------------------------------------------------- model


def load_classifier(config: AuditConfig, class_names: Sequence[str] | None = None, *, device: str = "cpu"):
    """Load the configured model; wrap a CLIP in a ZeroShotHead so it classifies.

    Returns ``(adapter, classifier)`` where ``classifier`` has ``logits`` and
    ``classifier is adapter`` for plain classifiers.
    """
    from audit.models import ZeroShotHead, load_model
    from audit.models.base import normalize_preprocess

    # model.preprocess wins over model.options.preprocess (open_clip's older form of the same)
    options = dict(config.model.options)
    preprocess = normalize_preprocess(options.pop("preprocess", None), what="model.options.preprocess")
    given = normalize_preprocess(config.model.preprocess.given(), what="model.preprocess")
    if "resize" in given or "crop_pct" in given:
        preprocess = {k: v for k, v in preprocess.items() if k not in ("resize", "crop_pct")}
    preprocess.update(given)
    adapter = load_model(
        config.model.spec,
        checkpoint=str(config.model.checkpoint) if config.model.checkpoint else None,
        device=device,
        class_names=config.model.class_names,
        preprocess=preprocess,
        **options,
    )
    if adapter.kind != "clip":
        return adapter, adapter
    prompts = config.model.class_prompts
    if prompts is None:
        names = list(class_names or adapter.class_names or [])
        if not names:
            raise UsageError(
                "model.class_prompts: a CLIP model needs class names to classify; give model.class_prompts "
                "or a manifest label column"
            )
        prompts = {c: [t.format(c) for t in config.clip.templates] for c in names}
    return adapter, ZeroShotHead(adapter, prompts, where="model.class_prompts" if config.model.class_prompts is not None
                                 else "clip.templates (zero-shot prompts of the classes)")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("run.device: cuda was requested but no CUDA device is available; use --device cpu")
    return name


# --------------------------------------------------------------------------- forward shards


def shard_ranges(n_rows: int, shard_size: int) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` positions of each shard over ``n_rows`` manifest rows."""
    return [(s, min(s + shard_size, n_rows)) for s in range(0, n_rows, shard_size)]


def shard_path(run: Run, index: int) -> Path:
    return run.path / "shards" / f"forward-{index:05d}.safetensors"


def autocast_context(device: str, precision: str):
    """``torch.autocast`` for bf16/fp16 forward passes; a no-op for fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


def _forward_outputs(classifier: Any, x: Any, *, device: str, precision: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass through the tower: ``(probs (B, C), embeddings (B, D), bad (B,) bool)``.

    ``bad`` marks images whose logits or embedding hold NaN/Inf (their probs are not meaningful).
    The model runs under autocast for bf16/fp16; softmax and the outputs are float32.
    """
    import torch

    with torch.no_grad():
        x = x.to(device, non_blocking=True)
        with autocast_context(device, precision):
            emb, logits = classifier.embed_and_logits(x)  # (B, D), (B, C): one pass through the tower
        logits = logits.float()
        emb = emb.float()
        bad = ~(torch.isfinite(logits).all(dim=1) & torch.isfinite(emb).all(dim=1))  # (B,)
        probs = torch.softmax(logits, dim=1)  # (B, C)
    return probs.cpu().numpy(), emb.cpu().numpy(), bad.cpu().numpy()


def _nonfinite_reason(precision: str) -> str:
    return "non-finite model outputs (NaN/Inf in logits or embedding)" + (
        f"; {precision} may have overflowed: rerun with --precision fp32" if precision != "fp32" else ""
    )


def forward_batch(
    classifier: Any, adapter: Any, x: Any, row_ids: Sequence[int], *, device: str = "cpu", precision: str = "fp32"
) -> tuple[np.ndarray, np.ndarray]:
    """One forward pass: ``x (B, 3, H, W)`` -> ``(probs (B, C), embeddings (B, D))`` float32 numpy.

    Raises:
        NumericsError: NaN/Inf in the outputs; names the row ids (see :func:`forward_collated` to
            record such images as skipped instead).
    """
    probs, emb, bad = _forward_outputs(classifier, x, device=device, precision=precision)
    if bad.any():
        ids = [int(r) for r, b in zip(row_ids, bad.tolist()) if b]
        raise NumericsError(f"{_nonfinite_reason(precision)} for row ids {ids[:20]}")
    return probs, emb


def forward_collated(
    classifier: Any, batch: dict[str, Any], *, device: str, precision: str, skip_bad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Forward a collated batch (:func:`audit.data.collate_skip_bad`), image by image accountable.

    Returns ``(row_id (b,), probs (b, C), embeddings (b, D), skipped)``: the decoder's skipped rows
    plus, with ``skip_bad``, the images whose outputs were NaN/Inf (each with its reason). Without
    ``skip_bad`` such an image raises :class:`NumericsError` naming the row ids and paths.
    """
    skipped = list(batch.get("skipped", []))
    ids = np.asarray([int(r) for r in batch["row_id"]], dtype=np.int64)
    if ids.size == 0:
        return ids, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), skipped
    probs, emb, bad = _forward_outputs(classifier, batch["image"], device=device, precision=precision)
    if bad.any():
        paths = list(batch.get("path") or [""] * ids.size)
        reason = _nonfinite_reason(precision)
        if not skip_bad:
            where = [f"row id {int(r)} ({paths[j]})" for j, r in enumerate(ids.tolist()) if bad[j]]
            raise NumericsError(f"{reason}: {', '.join(where[:20])}; or pass --skip-bad to record them as skipped")
        skipped += [{"row": int(r) + 1, "row_id": int(r), "path": paths[j], "reason": reason}
                    for j, r in enumerate(ids.tolist()) if bad[j]]
        keep = ~bad
        ids, probs, emb = ids[keep], probs[keep], emb[keep]
    return ids, probs, emb, skipped


def forward_frame(df: Any) -> Any:
    """The manifest rows as a :class:`~audit.data.Manifest` for forward decoding (masks dropped:
    the forward pass does not need them)."""
    from audit.data import Manifest

    sub = df[["row_id", "path"]].reset_index(drop=True).copy()
    sub["mask_path"] = None
    return Manifest(df=sub, group_columns=[], label_column=None, class_names=[])


def forward_rows(
    classifier: Any,
    adapter: Any,
    df: Any,
    *,
    batch_size: int,
    num_workers: int,
    skip_bad: bool,
    device: str = "cpu",
    precision: str = "fp32",
) -> dict[str, Any]:
    """Forward pass over the manifest rows in ``df`` (one DataLoader, in order).

    Returns ``{"row_id": (n,), "probs": (n, C), "embeddings": (n, D), "skipped": [...]}``
    (float32 numpy). Rows that fail to decode raise, or are recorded in ``skipped``
    when ``skip_bad``. Non-finite outputs are reported per image.
    """
    from audit.data import ImageDataset, make_loader

    ds = ImageDataset(forward_frame(df), adapter.preprocess.transform(), skip_bad=skip_bad)
    loader = make_loader(ds, batch_size=batch_size, num_workers=num_workers)
    rows, probs, embs, skipped = [], [], [], []
    for batch in loader:
        _append_forward(classifier, batch, rows, probs, embs, skipped, device=device, precision=precision,
                        skip_bad=skip_bad)
    return _stack_parts(rows, probs, embs, skipped)


def _append_forward(classifier: Any, batch: dict[str, Any], rows: list, probs: list, embs: list, skipped: list,
                    **kw: Any) -> None:
    ids, p, e, sk = forward_collated(classifier, batch, **kw)
    skipped.extend(sk)
    if ids.size:
        rows.append(ids)
        probs.append(p)
        embs.append(e)


def _stack_parts(rows: list, probs: list, embs: list, skipped: list) -> dict[str, Any]:
    return {
        "row_id": np.concatenate(rows) if rows else np.zeros(0, np.int64),
        "probs": np.concatenate(probs) if probs else np.zeros((0, 0), np.float32),
        "embeddings": np.concatenate(embs) if embs else np.zeros((0, 0), np.float32),
        "skipped": list(skipped),
    }


@dataclass
class ShardPlan:
    """What one forward shard needs: its rows, which are cached, which must be computed.

    Attributes:
        index: shard number (``shards/forward-<index>.safetensors``).
        start, end: half-open positions in the manifest table.
        row_id: ``(n,)`` row ids of the shard, in manifest order.
        keys: per row, the cache key (image content hash), or ``None`` without a cache.
        cached: ``(n,)`` bool, rows found in the cache.
    """

    index: int
    start: int
    end: int
    row_id: np.ndarray
    keys: list[str] | None
    cached: np.ndarray

    @property
    def n_compute(self) -> int:
        return int((~self.cached).sum())


def plan_shards(df: Any, ranges: Sequence[tuple[int, int]], todo: Sequence[int], cache: Any | None) -> list[ShardPlan]:
    """Hash the images of the shards still to do and look them up in the cache (if any)."""
    from audit.cache import content_hashes

    plans = []
    for i in todo:
        s, e = ranges[i]
        rows = df["row_id"].to_numpy(dtype=np.int64)[s:e]
        if cache is not None:
            keys = content_hashes(df["path"].iloc[s:e].tolist())
            cached = cache.contains(keys)
        else:
            keys, cached = None, np.zeros(e - s, dtype=bool)
        plans.append(ShardPlan(index=i, start=s, end=e, row_id=rows, keys=keys, cached=cached))
    return plans


def compute_frame(df: Any, plans: Sequence[ShardPlan]) -> Any:
    """The rows to compute, shard after shard, with a ``_shard`` column."""
    import pandas as pd

    parts = []
    for p in plans:
        sub = df.iloc[p.start : p.end][["row_id", "path"]]
        sub = sub[~p.cached].copy()
        sub["_shard"] = p.index
        parts.append(sub)
    if not parts:
        return pd.DataFrame({"row_id": np.zeros(0, np.int64), "path": [], "_shard": np.zeros(0, np.int64)})
    return pd.concat(parts, ignore_index=True)


class _ShardBatches:
    """Batch sampler over :func:`compute_frame` rows: ``batch_size`` rows, never across a shard."""

    def __init__(self, shard_sizes: Sequence[int], batch_size: int) -> None:
        self.batches: list[list[int]] = []
        self.per_shard: list[int] = []
        pos = 0
        for n in shard_sizes:
            k = 0
            for s in range(0, n, batch_size):
                self.batches.append(list(range(pos + s, pos + min(s + batch_size, n))))
                k += 1
            self.per_shard.append(k)
            pos += n

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def local_compute(
    classifier: Any,
    adapter: Any,
    frame: Any,
    plans: Sequence[ShardPlan],
    *,
    batch_size: int,
    num_workers: int,
    skip_bad: bool,
    device: str,
    precision: str,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream the rows of ``frame`` through one DataLoader (workers decode ahead) and the model.

    Yields ``(shard index, {"row_id", "probs", "embeddings", "skipped"})`` for every plan, in
    order, as soon as that shard's last batch is done (plans with nothing to compute yield
    empty results). Memory holds one shard's outputs plus the loader's prefetched batches.
    """
    import torch
    from torch.utils.data import DataLoader

    from audit.data import ImageDataset, collate_skip_bad

    sizes = [p.n_compute for p in plans]
    sampler = _ShardBatches(sizes, batch_size)
    it: Iterator[Any] = iter(())
    if len(sampler):
        ds = ImageDataset(forward_frame(frame), adapter.preprocess.transform(), skip_bad=skip_bad)
        kwargs: dict[str, Any] = {}
        if num_workers > 0:
            kwargs.update(prefetch_factor=4, persistent_workers=False)
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_skip_bad,
                            pin_memory=device.startswith("cuda") and torch.cuda.is_available(), **kwargs)
        it = iter(loader)
    for plan, n_batches in zip(plans, sampler.per_shard):
        rows, probs, embs, skipped = [], [], [], []
        for _ in range(n_batches):
            _append_forward(classifier, next(it), rows, probs, embs, skipped, device=device, precision=precision,
                            skip_bad=skip_bad)
        yield plan.index, _stack_parts(rows, probs, embs, skipped)


def assemble_shard(plan: ShardPlan, computed: dict[str, Any], cache: Any | None,
                   log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Merge cached and computed rows of one shard in manifest order; store computed rows in the cache.

    Raises:
        RunError: a row is missing or appears twice (never silently).
    """
    got = computed["row_id"]
    skipped = list(computed["skipped"])
    skipped_ids = {int(s["row_id"]) for s in skipped}
    want = plan.row_id[~plan.cached]
    if len(np.unique(got)) != len(got) or set(got.tolist()) | skipped_ids != set(want.tolist()) \
            or len(got) + len(skipped_ids) != len(want):
        raise RunError(
            f"forward shard {plan.index}: the backend returned rows {sorted(set(got.tolist()))[:10]}... for "
            f"{len(want)} requested rows (some lost or duplicated); rerun with --resume"
        )
    stored: dict[str, np.ndarray] = {}
    if cache is not None and plan.cached.any():
        keys = [k for k, c in zip(plan.keys or [], plan.cached) if c]
        found, stored = cache.get(keys)
        if not found.all():  # an entry vanished between planning and now: compute it next time
            raise RunError(
                f"forward shard {plan.index}: {int((~found).sum())} cache entries disappeared from "
                f"{cache.path} during the run (another process cleaned the cache?); rerun with --resume"
            )
    if cache is not None and len(got):
        key_of = dict(zip(plan.row_id.tolist(), plan.keys or []))
        try:
            cache.put([key_of[int(r)] for r in got], {"probs": computed["probs"], "embeddings": computed["embeddings"]})
        except OSError as exc:
            log(f"cache write to {cache.path} failed ({exc}); continuing without caching")
    n_c = computed["probs"].shape[1] if len(got) else (stored["probs"].shape[1] if stored else 0)
    n_d = computed["embeddings"].shape[1] if len(got) else (stored["embeddings"].shape[1] if stored else 0)
    ok = np.array([(c or int(r) not in skipped_ids) for r, c in zip(plan.row_id, plan.cached)], dtype=bool)
    row_id = plan.row_id[ok]
    probs = np.zeros((len(row_id), n_c), np.float32)
    emb = np.zeros((len(row_id), n_d), np.float32)
    cached_ok = plan.cached[ok]
    if cached_ok.any():
        probs[cached_ok] = stored["probs"]
        emb[cached_ok] = stored["embeddings"]
    if len(got):
        pos = {int(r): j for j, r in enumerate(row_id)}
        idx = np.array([pos[int(r)] for r in got], dtype=np.int64)
        probs[idx] = computed["probs"]
        emb[idx] = computed["embeddings"]
    return {"row_id": row_id, "probs": probs, "embeddings": emb, "skipped": skipped,
            "n_cached": int(plan.cached.sum()), "n_computed": len(got)}


def write_shard(path: Path, result: dict[str, Any], *, start: int | None = None, end: int | None = None,
                fingerprint: str | None = None) -> None:
    """One atomic file per shard; the skipped rows and the shard's range travel in its metadata."""
    emb = result["embeddings"]
    if emb.ndim != 2 or emb.shape[1] == 0:
        emb = np.zeros((len(result["row_id"]), 1), np.float32) if emb.size == 0 else emb
    probs = result["probs"]
    if probs.ndim != 2:
        probs = np.zeros((len(result["row_id"]), 0), np.float32)
    meta = {"skipped": json.dumps(result["skipped"])}
    if start is not None:
        meta.update(start=str(start), end=str(end), config_fingerprint=str(fingerprint))
    write_arrays(
        path,
        {"row_id": result["row_id"].astype(np.int64), "probs": probs.astype(np.float32),
         "embeddings": emb.astype(np.float32)},
        metadata=meta,
    )


def read_shard(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    arrays = read_arrays(path)
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
    arrays["skipped"] = json.loads(meta.get("skipped", "[]"))
    return arrays


def _shard_header(path: Path) -> tuple[dict[str, str], dict[str, list[int]]]:
    """(metadata, {name: shape}) of a shard without reading its data."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        meta = dict(fh.metadata() or {})
        shapes = {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}
    return meta, shapes


def check_shards(run: Run, ranges: Sequence[tuple[int, int]], fingerprint: str,
                 log: Callable[[str], None] = lambda s: None) -> list[int]:
    """Indices of shards still to compute; unreadable shard files are removed (and recomputed).

    Also clears temporary files left by a process killed mid-write.

    Raises:
        RunError: a readable shard belongs to another config or covers other rows.
    """
    d = run.path / "shards"
    for tmp in d.glob(".*.tmp") if d.is_dir() else []:
        with contextlib.suppress(OSError):
            tmp.unlink()
    todo = []
    for i, (s, e) in enumerate(ranges):
        p = shard_path(run, i)
        if not p.is_file():
            todo.append(i)
            continue
        try:
            meta, shapes = _shard_header(p)
        except Exception as exc:  # noqa: BLE001 - a damaged file is recomputed, never trusted
            log(f"shard {p.name} is unreadable ({exc}); computing it again")
            p.unlink()
            todo.append(i)
            continue
        if "start" in meta and (int(meta["start"]), int(meta["end"])) != (s, e) \
                or meta.get("config_fingerprint", fingerprint) != fingerprint:
            raise RunError(
                f"{p}: this shard was written for rows {meta.get('start')}..{meta.get('end')} of another config; "
                "the run directory is inconsistent: use --overwrite to start again"
            )
        n = shapes["row_id"][0] + len(json.loads(meta.get("skipped", "[]")))
        if n != e - s:
            raise RunError(f"{p}: holds {n} rows for a shard of {e - s}; use --overwrite to start again")
    return todo


def consolidate_shards(
    run: Run, ranges: Sequence[tuple[int, int]], df: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Concatenate the forward shards into ``(row_id (N,), probs (N, C), embeddings (N, D), skipped)``.

    Reads headers first and fills preallocated arrays one shard at a time, so peak memory is
    the final arrays plus one shard. Checks that every manifest row is present exactly once
    (as a result or as a skipped row).

    Raises:
        RunError: a shard is missing, or rows are lost or duplicated.
    """
    from safetensors import safe_open

    n_total, n_c, n_d = 0, 0, 0
    for i in range(len(ranges)):
        p = shard_path(run, i)
        if not p.is_file():
            raise RunError(f"{p} is missing; rerun with --resume to compute it")
        _, shapes = _shard_header(p)
        n_total += shapes["row_id"][0]
        if shapes["row_id"][0]:
            n_c, n_d = shapes["probs"][1], shapes["embeddings"][1]
    row_id = np.empty(n_total, np.int64)
    probs = np.empty((n_total, n_c), np.float32)
    emb = np.empty((n_total, n_d), np.float32)
    skipped: list[dict[str, Any]] = []
    pos = 0
    for i in range(len(ranges)):
        with safe_open(str(shard_path(run, i)), framework="numpy") as fh:
            r = fh.get_tensor("row_id")
            k = len(r)
            row_id[pos : pos + k] = r
            if k:
                probs[pos : pos + k] = fh.get_tensor("probs")
                emb[pos : pos + k] = fh.get_tensor("embeddings")
            skipped.extend(json.loads((fh.metadata() or {}).get("skipped", "[]")))
        pos += k
    expected = df["row_id"].to_numpy(dtype=np.int64)
    seen = np.concatenate([row_id, np.array([int(s["row_id"]) for s in skipped], dtype=np.int64)])
    if len(seen) != len(expected) or not np.array_equal(np.sort(seen), np.sort(expected)):
        raise RunError(
            f"{run.path}/shards: {len(seen)} rows recorded for {len(expected)} manifest rows (lost or duplicated "
            "images); the run directory is inconsistent: use --overwrite to start again"
        )
    return row_id, probs, emb, skipped


def forward_shards(
    config: AuditConfig,
    *,
    df: Any,
    run: Run,
    adapter: Any,
    classifier: Any,
    device: str,
    class_hint: Sequence[str] | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The forward stage: compute every shard not yet on disk and write it atomically.

    The local backend streams rows through a DataLoader in this process; ``run.backend: ray``
    hands them to Ray Data (:mod:`audit.scale`). Rows found in ``run.cache_dir`` are not
    computed. Returns counters ``{"shards", "shards_done_before", "computed", "cached"}``.

    Raises:
        RunError: a shard could not be written (the message says how to resume).
    """
    progress = progress or _noop_progress
    log = log or (lambda s: None)
    ranges = shard_ranges(len(df), config.run.shard_size)
    fp = str(run.meta.get("config_fingerprint"))
    todo = check_shards(run, ranges, fp, log)
    cache = None
    if config.run.cache_dir is not None:
        from audit.cache import forward_cache

        cache = forward_cache(config.run.cache_dir, adapter=adapter, classifier=classifier,
                              precision=config.run.precision, device=device)
    plans = plan_shards(df, ranges, todo, cache)
    frame = compute_frame(df, plans)
    done_rows = sum(e - s for i, (s, e) in enumerate(ranges) if i not in set(todo))
    progress("forward", done_rows, len(df))
    if done_rows:
        log(f"resuming: {len(ranges) - len(todo)} of {len(ranges)} forward shards already done")
    if config.run.backend == "ray":
        from audit.scale import ray_compute

        stream = ray_compute(config, frame, plans, class_hint=class_hint,
                             expected_fingerprint=str(classifier.fingerprint), device=device)
    else:
        stream = local_compute(classifier, adapter, frame, plans, batch_size=config.run.batch_size,
                               num_workers=config.run.num_workers, skip_bad=config.data.skip_bad, device=device,
                               precision=config.run.precision)
    counts = {"shards": len(ranges), "shards_done_before": len(ranges) - len(todo), "computed": 0, "cached": 0}
    by_index = {p.index: p for p in plans}
    written = len(ranges) - len(todo)
    try:
        for index, computed in stream:
            plan = by_index[index]
            result = assemble_shard(plan, computed, cache, log)
            path = shard_path(run, index)
            try:
                write_shard(path, result, start=plan.start, end=plan.end, fingerprint=fp)
            except OSError as exc:
                raise RunError(_write_failure(path, exc, index, len(ranges), written)) from exc
            written += 1
            counts["computed"] += result["n_computed"]
            counts["cached"] += result["n_cached"]
            done_rows += plan.end - plan.start
            progress("forward", done_rows, len(df))
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    if cache is not None:
        run.meta["cache"] = {**cache.stats(), "computed": counts["computed"], "cached": counts["cached"]}
    return counts


def _write_failure(path: Path, exc: OSError, index: int, n_shards: int, written: int) -> str:
    import errno as _errno
    import os

    what = os.strerror(exc.errno) if exc.errno else str(exc)
    code = _errno.errorcode.get(exc.errno or 0, "")
    hint = "free disk space" if exc.errno in (_errno.ENOSPC, _errno.EDQUOT) else "fix the cause"
    return (
        f"could not write forward shard {index + 1} of {n_shards} ({path}): {what}"
        + (f" [{code}]" if code else "")
        + f". The {written} complete shard(s) already written are kept and the run is marked failed; "
        f"{hint}, then continue with `vision-audit run CONFIG --resume`"
    )


# --------------------------------------------------------------------------- run


def config_fingerprint(config: AuditConfig) -> str:
    """Hash of the parts of the config that change the forward results (for --resume).

    ``model`` includes ``model.preprocess`` (and ``model.options``): changing the preprocessing
    changes the fingerprint.
    """
    relevant = {
        "model": config.model.model_dump(mode="json"),
        "data": config.data.model_dump(mode="json"),
        "templates": config.clip.templates,
        "shard_size": config.run.shard_size,
        "precision": config.run.precision,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def run_audit(config: AuditConfig, *, progress: Progress | None = None, log: Callable[[str], None] | None = None) -> Run:
    """Run the whole audit described by ``config`` and return the finished :class:`Run`.

    A run that fails is left with ``status: "failed"`` (or ``"partial"`` when interrupted) and
    its complete forward shards, so ``run.resume`` (``--resume``) continues it.

    Example:
        >>> from audit import load_config, run_audit              # doctest: +SKIP
        >>> run = run_audit(load_config("audit.yaml"))            # doctest: +SKIP
        >>> run.table("disparities").query("significant")         # doctest: +SKIP
    """
    import torch

    from audit.data import load_manifest

    progress = progress or _noop_progress
    log = log or (lambda s: None)
    timer = _Timer()
    device = resolve_device(config.run.device)
    done = _already_complete(config)
    if done is not None:
        log(f"{done.path} is already complete; nothing to resume (use --overwrite to compute it again)")
        return done
    torch.manual_seed(config.stats.seed)

    with timer.stage("load"):
        manifest = load_manifest(
            config.data.manifest,
            columns=config.data.columns.model_dump(),
            root=config.data.root,
            format=config.data.format,
            skip_bad=config.data.skip_bad,
            **({"missing_group": config.data.missing_group} if config.data.missing_group else {}),
        )
        df = manifest.df
        if config.data.limit is not None:
            df = df.iloc[: config.data.limit]
        labels_present = "label" in df.columns and df["label"].notna().any()
        class_hint = manifest.class_names if labels_present else None
        adapter, classifier = load_classifier(config, class_hint, device=device)
        from audit.analyses import check_clip_texts  # CLIP texts the tokenizer cannot tell apart: refused now

        check_clip_texts(config, adapter, group_columns=manifest.group_columns)
        class_names = list(classifier.class_names or [])
        run = _open_or_create_run(config, adapter, manifest, df, device, log=log)
        run.meta["skipped"] = list(manifest.skipped)
    log(f"model {adapter.spec} ({adapter.kind}), {len(df)} images, output {run.path}")

    try:
        return _run_stages(config, run, manifest, df, adapter, classifier, class_hint, class_names, device,
                           timer, progress, log)
    except Exception as exc:
        _mark_failed(run, exc)
        raise


def _run_stages(config: AuditConfig, run: Run, manifest: Any, df: Any, adapter: Any, classifier: Any,
                class_hint: Sequence[str] | None, class_names: list[str], device: str, timer: _Timer,
                progress: Progress, log: Callable[[str], None]) -> Run:
    # ---------------------------------------------------------------- forward
    with timer.stage("forward"):
        counts = forward_shards(config, df=df, run=run, adapter=adapter, classifier=classifier, device=device,
                                class_hint=class_hint, progress=progress, log=log)
        run.meta["forward"] = counts

    with timer.stage("tables"):
        ranges = shard_ranges(len(df), config.run.shard_size)
        row_id, probs, emb, skipped = consolidate_shards(run, ranges, df)
        run.meta["skipped"].extend(skipped)
        if len(row_id) == 0:
            raise UsageError("no image could be read: every row was skipped (see the skipped list in run.json)")
        samples, predictions = build_tables(df, row_id, probs, class_names, manifest.group_columns)
        run.write_table("samples", samples)
        run.write_table("predictions", predictions)
        run.write_array_file("probs", {"probs": probs, "row_id": row_id})
        del probs
        run.write_array_file("embeddings", {"image": emb, "row_id": row_id})
        run.meta["dataset"]["n_used"] = len(row_id)
        run.save_meta()

    from audit import analyses

    ctx = analyses.Context(
        config=config, run=run, adapter=adapter, classifier=classifier, samples=samples,
        predictions=predictions, embeddings=emb, row_id=row_id, group_columns=list(manifest.group_columns),
        class_names=class_names, device=device, progress=progress, log=log,
    )
    with timer.stage("stats"):
        analyses.performance(ctx)
        analyses.prediction_distribution(ctx)
        if config.stats.embeddings:
            analyses.embedding_stats(ctx)
    with timer.stage("explain"):
        analyses.explanations(ctx)
    if adapter.kind == "clip":
        with timer.stage("clip"):
            analyses.clip_analyses(ctx)
    with timer.stage("finish"):
        run.meta["limitations"] = analyses.limitations(ctx)
        analyses.findings(ctx)
    run.meta["timings"] = {**run.meta.get("timings", {}), **timer.timings}
    run.meta.pop("error", None)
    run.finish("complete")
    _remove_shards(run)
    return run


def _mark_failed(run: Run, exc: BaseException) -> None:
    """Record the failure in run.json if the disk allows; never hides the original error."""
    run.meta["status"] = "failed"
    run.meta["error"] = f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(Exception):
        run.save_meta()


def _already_complete(config: AuditConfig) -> Run | None:
    """With --resume, a finished run of the same forward config needs no work."""
    out = config.run.output
    if not config.run.resume or not (out / "run.json").is_file():
        return None
    try:
        run = Run.open(out, allow_partial=True)
    except RunError:
        return None
    if run.meta.get("status") == "complete" and run.meta.get("config_fingerprint") == config_fingerprint(config) \
            and _comparable(run.meta.get("config", {})) == _comparable(config.model_dump(mode="json")):
        return run
    return None


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the settings that do not change a run's results."""
    run = {k: v for k, v in cfg.get("run", {}).items()
           if k not in ("resume", "overwrite", "backend", "ray_address", "num_workers", "cache_dir")}
    return {**cfg, "run": run}


def _open_or_create_run(config: AuditConfig, adapter: Any, manifest: Any, df: Any, device: str,
                        log: Callable[[str], None] | None = None) -> Run:
    preprocessing = _preprocessing_meta(adapter, df)
    for text in preprocessing["warnings"]:
        (log or (lambda s: None))(f"warning: {text}")
    meta = {
        "config": config.model_dump(mode="json"),
        "config_fingerprint": config_fingerprint(config),
        "model": {**adapter.describe(), "name": config.model.name or config.model.spec},
        "dataset": {
            "manifest": str(config.data.manifest),
            "fingerprint": manifest.fingerprint() if callable(manifest.fingerprint) else manifest.fingerprint,
            "n_rows": int(len(manifest.df) + len(manifest.skipped)),
            "n_used": None,
            "label_column": config.data.columns.label,
            "group_columns": list(manifest.group_columns),
            "has_masks": bool("mask_path" in df.columns and df["mask_path"].notna().any()),
            "root": str(config.data.root or Path(config.data.manifest).parent),
        },
        "device": device,
        "device_name": _device_name(device),
        "dtype": {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[config.run.precision],
        "backend": config.run.backend,
        "preprocessing": preprocessing,
    }
    out = config.run.output
    if config.run.resume and (out / "run.json").is_file():
        run = Run.open(out, allow_partial=True)
        if run.meta.get("config_fingerprint") != meta["config_fingerprint"]:
            raise RunError(
                f"{out}: --resume needs the same model, data and shard settings as the interrupted run; "
                "the config differs (use --overwrite to start again)"
            )
        if run.meta.get("model", {}).get("fingerprint") != meta["model"]["fingerprint"]:
            raise RunError(f"{out}: the model weights changed since the interrupted run; use --overwrite")
        before = (run.meta.get("preprocessing") or {}).get("values")
        if before is not None and before != preprocessing["values"]:
            raise RunError(f"{out}: the resolved preprocessing changed since the interrupted run ({before} -> "
                           f"{preprocessing['values']}); use --overwrite")
        if run.meta.get("dataset", {}).get("fingerprint") != meta["dataset"]["fingerprint"]:
            raise RunError(
                f"{out}: the manifest or its image files changed since the interrupted run; use --overwrite"
            )
        run.meta.update({k: v for k, v in meta.items() if k not in ("dataset",)})
        run.meta["status"] = "partial"
        run.meta.pop("error", None)
        run.meta["resumed"] = int(run.meta.get("resumed", 0)) + 1
        run.save_meta()
        return run
    return Run.create(out, overwrite=config.run.overwrite, meta=meta)


#: how many of the first manifest rows are opened (header only) to see whether images are upscaled
_SIZE_PROBE = 16


def _preprocessing_meta(adapter: Any, df: Any) -> dict[str, Any]:
    """run.json ``preprocessing``: resolved values, their sources, and the warnings (a guess, upscaling)."""
    pp = adapter.preprocess
    warnings = list(pp.warnings)
    sizes, names = _first_image_sizes(df, _SIZE_PROBE)
    up = pp.upscale_warning(sizes, names=names) if sizes else None
    if up:
        warnings.append(up)
    return {"values": pp.values(), "sources": dict(pp.sources), "warnings": warnings}


def _first_image_sizes(df: Any, n: int) -> tuple[list[tuple[int, int]], list[str]]:
    """``(W, H)`` of the first ``n`` readable images (PIL reads the header only); unreadable ones are skipped."""
    import warnings

    from PIL import Image

    sizes, names = [], []
    paths = df["path"].head(n).tolist() if "path" in getattr(df, "columns", ()) else []
    for p in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. a decompression-bomb notice: the decoder decides later
                im = Image.open(p)
            with im:
                sizes.append((int(im.size[0]), int(im.size[1])))
                names.append(Path(str(p)).name)
        except Exception:  # noqa: BLE001, S112 - a bad image is the forward pass's to report, not this probe's
            continue
    return sizes, names


def _device_name(device: str) -> str:
    import platform

    if device.startswith("cuda"):
        import torch

        return str(torch.cuda.get_device_name(torch.device(device)))
    return platform.processor() or platform.machine()


def _remove_shards(run: Run) -> None:
    import shutil

    shutil.rmtree(run.path / "shards", ignore_errors=True)


def build_tables(df: Any, row_id: np.ndarray, probs: np.ndarray, class_names: list[str], group_columns: list[str]):
    """samples and predictions tables (columns in docs/RUN_FORMAT.md)."""
    import pandas as pd

    sub = df.set_index("row_id").loc[row_id].reset_index()
    samples_cols = ["row_id", "image_id", "path", "label", *group_columns]
    samples = sub[[c for c in samples_cols if c in sub.columns]].copy()
    samples["mask_path"] = sub["mask_path"] if "mask_path" in sub.columns else None
    pred_idx = probs.argmax(axis=1).astype(np.int64)
    label = sub["label"] if "label" in sub.columns else pd.Series([None] * len(sub))
    index = {c: i for i, c in enumerate(class_names)}
    label_idx = np.array([index.get(v, -1) if isinstance(v, str) else -1 for v in label], dtype=np.int64)
    unknown = sorted({str(v) for v, i in zip(label, label_idx) if isinstance(v, str) and i < 0})
    if unknown:
        raise UsageError(
            f"labels {unknown[:10]} are not among the model's classes {class_names[:20]}; "
            "map the label column to the model's class names (or give model.class_names / model.class_prompts)"
        )
    has_label = label_idx >= 0
    predictions = pd.DataFrame(
        {
            "row_id": sub["row_id"].astype(np.int64).to_numpy(),
            "label": label.where(pd.Series(has_label), None).to_numpy(dtype=object),
            "label_idx": label_idx,
            "pred": np.array(class_names, dtype=object)[pred_idx],
            "pred_idx": pred_idx,
            "score": probs[np.arange(len(probs)), pred_idx].astype(np.float64),
            "label_score": np.where(has_label, probs[np.arange(len(probs)), np.maximum(label_idx, 0)], np.nan),
            "correct": pd.array([bool(p == l) if h else None for p, l, h in zip(pred_idx, label_idx, has_label)], dtype="boolean"),
        }
    )
    for g in group_columns:
        predictions[g] = sub[g].astype(str).to_numpy()
    return samples, predictions
