"""The shard store: forward results on disk, one atomic file per shard of manifest rows.

A run's forward stage writes ``shards/forward-<index>.safetensors`` per ``run.shard_size``
rows (probabilities, embeddings, row ids; the skipped rows, the shard's range and the config
fingerprint in its metadata), so a killed run resumes from its complete shards
(:func:`check_shards`). :func:`plan_shards` looks the images up in the forward cache,
:func:`assemble_shard` merges cached and computed rows, and :func:`consolidate_shards` reads
them back into the run's arrays once every shard is there.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import RunError
from audit.runs import Run, read_arrays, write_arrays

__all__ = [
    "ShardPlan",
    "assemble_shard",
    "check_shards",
    "compute_frame",
    "consolidate_shards",
    "plan_shards",
    "read_shard",
    "remove_shards",
    "shard_path",
    "shard_ranges",
    "shard_write_error",
    "write_shard",
]


def shard_ranges(n_rows: int, shard_size: int) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` positions of each shard over ``n_rows`` manifest rows."""
    return [(s, min(s + shard_size, n_rows)) for s in range(0, n_rows, shard_size)]


def shard_path(run: Run, index: int) -> Path:
    return run.path / "shards" / f"forward-{index:05d}.safetensors"


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
        shapes = {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 - safe_open is not iterable
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


def shard_write_error(path: Path, exc: OSError, index: int, n_shards: int, written: int) -> str:
    """The message of a failed shard write: what the OS said, what is kept, how to continue."""
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


def remove_shards(run: Run) -> None:
    """Delete the shard files of a complete run (its tables and arrays hold the results)."""
    import shutil

    shutil.rmtree(run.path / "shards", ignore_errors=True)
