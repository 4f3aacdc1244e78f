"""A content-addressed cache of per-image results (forward outputs, explanation maps).

A new analysis of the same images with the same model reuses what an earlier run
computed, whatever the run directory. Rows are keyed by

* a **namespace**: everything that changes the numbers apart from the image — the model
  fingerprint (weights hash; for a zero-shot CLIP also its prompts), the preprocessing,
  the precision and device type, and for maps the method, its parameters and the seed;
* a **row key**: the SHA-256 of the image file's bytes (plus the explained target for maps).

Layout under ``run.cache_dir``::

    CACHE/<kind>/<namespace hash>/namespace.json       what the hash stands for (for people)
    CACHE/<kind>/<namespace hash>/index.sqlite         row key -> (chunk file, row in chunk)
    CACHE/<kind>/<namespace hash>/chunks/<id>.safetensors   named arrays, one row per key

A chunk is written atomically (temporary file, fsync, rename) *before* its keys enter
the index in one SQLite transaction, so a reader never sees a key whose data is missing
or half written, and a writer killed in between leaves only an unreferenced file.
SQLite's locking makes concurrent readers and writers (several runs, DataLoader or Ray
workers) safe on a local file system; on a network file system whose locks are unreliable
give each machine its own cache directory.

Example:
    >>> cache = forward_cache("~/.cache/vision-audit", adapter=a, classifier=a,
    ...                       precision="fp32", device="cpu")                      # doctest: +SKIP
    >>> found, arrays = cache.get(content_hashes(paths))                          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from audit.errors import RunError

__all__ = [
    "CACHE_FORMAT",
    "ArrayCache",
    "cached_rows",
    "content_hashes",
    "forward_cache",
    "map_cache",
    "map_keys",
    "namespace_hash",
]

#: bump when the stored arrays change meaning; part of every namespace
CACHE_FORMAT = 1

CacheKind = Literal["forward", "maps"]
_QUERY_CHUNK = 500  # keys per SQL query (well under SQLite's variable limit)


def namespace_hash(namespace: Mapping[str, Any]) -> str:
    """Stable 24-hex-digit hash of a JSON-able namespace dict (sorted keys)."""
    text = json.dumps(namespace, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def content_hashes(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """SHA-256 hex digest of each file's bytes; ``""`` for a file that cannot be read.

    An unreadable file gets no cache entry (its row is computed, and fails or is skipped there).
    """
    from audit.data.images import image_sha256

    out = []
    for p in paths:
        try:
            out.append(image_sha256(p))
        except (OSError, ValueError):
            out.append("")
    return out


def map_keys(hashes: Sequence[str], targets: Sequence[Any]) -> list[str]:
    """Row keys for maps: image content hash plus the explained target (e.g. a class index)."""
    if len(hashes) != len(targets):
        raise ValueError(f"{len(hashes)} hashes but {len(targets)} targets")
    return ["" if not h else f"{h}/{json.dumps(t, sort_keys=True, default=str)}" for h, t in zip(hashes, targets)]


class ArrayCache:
    """Rows of named arrays stored under string keys, in one namespace.

    Every array put in one namespace must have the same trailing shape and dtype per name
    (e.g. ``probs (n, C) float32``); rows come back bit-for-bit as stored.

    Attributes:
        path: the namespace directory.
        hits: rows found by :meth:`get` since this object was made.
        misses: rows asked for and not found.
        writes: rows stored by :meth:`put`.
    """

    def __init__(self, root: str | os.PathLike[str], *, kind: CacheKind, namespace: Mapping[str, Any]) -> None:
        self.root = Path(os.path.expanduser(os.fspath(root)))
        self.kind = kind
        self.namespace = {"cache_format": CACHE_FORMAT, "kind": kind, **dict(namespace)}
        self.key = namespace_hash(self.namespace)
        self.path = self.root / kind / self.key
        self.hits = 0
        self.misses = 0
        self.writes = 0
        try:
            (self.path / "chunks").mkdir(parents=True, exist_ok=True)
            ns_file = self.path / "namespace.json"
            if not ns_file.is_file():
                from audit.runs import write_json

                write_json(ns_file, self.namespace)
            with self._connect() as con:
                con.execute(
                    "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, chunk TEXT NOT NULL, pos INTEGER NOT NULL)"
                )
        except (OSError, sqlite3.Error) as exc:
            raise RunError(
                f"run.cache_dir: cannot use {self.path} as a cache ({exc}); fix its permissions or free space, "
                "or leave run.cache_dir unset"
            ) from exc

    # -- plumbing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A fresh connection per operation: safe after fork (DataLoader, Ray workers).
        con = sqlite3.connect(str(self.path / "index.sqlite"), timeout=60.0)
        try:
            with con:  # one transaction, committed on success, rolled back on error
                yield con
        finally:
            con.close()

    def _lookup(self, keys: Sequence[str]) -> dict[str, tuple[str, int]]:
        wanted = sorted({k for k in keys if k})
        found: dict[str, tuple[str, int]] = {}
        if not wanted:
            return found
        with self._connect() as con:
            for s in range(0, len(wanted), _QUERY_CHUNK):
                part = wanted[s : s + _QUERY_CHUNK]
                q = f"SELECT key, chunk, pos FROM entries WHERE key IN ({','.join('?' * len(part))})"
                for k, chunk, pos in con.execute(q, part):
                    found[k] = (str(chunk), int(pos))
        return found

    # -- public ----------------------------------------------------------------------------
    def contains(self, keys: Sequence[str]) -> np.ndarray:
        """``(n,)`` bool: which keys have a stored row (empty keys never do)."""
        found = self._lookup(keys)
        return np.array([bool(k) and k in found for k in keys], dtype=bool)

    def get(self, keys: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Stored rows for ``keys``.

        Returns:
            ``(found (n,) bool, arrays)`` where each array holds the rows of the found keys,
            in the order of ``keys`` (``arrays[name].shape[0] == found.sum()``). A chunk file
            that has gone missing or is unreadable counts as a miss.
        """
        from safetensors import safe_open

        locs = self._lookup(keys)
        by_chunk: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            if k and k in locs:
                by_chunk.setdefault(locs[k][0], []).append(i)
        found = np.zeros(len(keys), dtype=bool)
        rows: dict[str, dict[int, np.ndarray]] = {}
        for chunk, idx in by_chunk.items():
            try:
                with safe_open(str(self.path / "chunks" / chunk), framework="numpy") as fh:
                    data = {name: fh.get_tensor(name) for name in fh.keys()}
            except Exception:  # noqa: BLE001 - a damaged or deleted chunk is a miss, never an error
                continue
            for i in idx:
                pos = locs[keys[i]][1]
                for name, arr in data.items():
                    rows.setdefault(name, {})[i] = arr[pos]
                found[i] = True
        order = np.nonzero(found)[0]
        arrays = {name: np.stack([r[i] for i in order]) for name, r in rows.items()} if len(order) else {}
        self.hits += int(found.sum())
        self.misses += int(len(keys) - found.sum())
        return found, arrays

    def put(self, keys: Sequence[str], arrays: Mapping[str, np.ndarray]) -> int:
        """Store one row per key (rows with an empty key are left out); returns rows written.

        Keys already present keep their first entry (results for the same key are equal by
        construction of the namespace).
        """
        from audit.runs import write_arrays

        keep = [i for i, k in enumerate(keys) if k]
        for name, arr in arrays.items():
            if len(arr) != len(keys):
                raise ValueError(f"array {name!r} has {len(arr)} rows for {len(keys)} keys")
        if not keep:
            return 0
        idx = np.asarray(keep, dtype=np.int64)
        kept_keys = [keys[i] for i in keep]
        chunk = f"{uuid.uuid4().hex}.safetensors"
        data = {name: np.ascontiguousarray(np.asarray(arr)[idx]) for name, arr in arrays.items()}
        write_arrays(self.path / "chunks" / chunk, data, metadata={"keys": json.dumps(kept_keys)})
        with self._connect() as con:
            con.executemany(
                "INSERT OR IGNORE INTO entries (key, chunk, pos) VALUES (?, ?, ?)",
                [(k, chunk, j) for j, k in enumerate(kept_keys)],
            )
        self.writes += len(kept_keys)
        return len(kept_keys)

    def __len__(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        """Counters for run.json: ``{"dir", "namespace", "hits", "misses", "writes"}``."""
        return {"dir": str(self.path), "namespace": self.key, "hits": self.hits, "misses": self.misses,
                "writes": self.writes}

    def __repr__(self) -> str:
        return f"<ArrayCache {self.kind} {self.path} hits={self.hits} misses={self.misses}>"


def _model_namespace(adapter: Any, classifier: Any, *, precision: str, device: str) -> dict[str, Any]:
    return {
        "model": str(adapter.fingerprint),
        "head": str(getattr(classifier, "fingerprint", adapter.fingerprint)),
        "class_names": list(getattr(classifier, "class_names", None) or []),
        "preprocess": adapter.preprocess.to_dict(),
        "precision": precision,
        "device": str(device).split(":")[0],
    }


def forward_cache(
    root: str | os.PathLike[str], *, adapter: Any, classifier: Any, precision: str, device: str
) -> ArrayCache:
    """Cache of forward outputs (``probs (n, C)``, ``embeddings (n, D)`` float32) keyed by image hash."""
    return ArrayCache(root, kind="forward", namespace=_model_namespace(adapter, classifier, precision=precision,
                                                                       device=device))


def map_cache(
    root: str | os.PathLike[str],
    *,
    adapter: Any,
    classifier: Any,
    method: str,
    params: Mapping[str, Any],
    seed: int,
    device: str,
    precision: str = "fp32",
    input_size: tuple[int, int] | None = None,
) -> ArrayCache:
    """Cache of explanation maps for one method and parameter set; row keys from :func:`map_keys`."""
    ns = _model_namespace(adapter, classifier, precision=precision, device=device)
    ns.update({"method": method, "params": json.loads(json.dumps(dict(params), sort_keys=True, default=str)),
               "seed": int(seed), "input_size": list(input_size) if input_size else None})
    return ArrayCache(root, kind="maps", namespace=ns)


def cached_rows(
    cache: ArrayCache | None,
    keys: Sequence[str],
    compute: Callable[[np.ndarray], Mapping[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Rows for ``keys``: stored ones from ``cache``, the others from ``compute(missing_idx)``.

    ``compute`` gets the ``(m,)`` positions (into ``keys``) of the rows not in the cache and
    returns arrays with ``m`` rows each; those are stored, and the result has one row per key
    in the order of ``keys``. With ``cache=None`` everything is computed.

    Example:
        >>> maps = cached_rows(cache, map_keys(hashes, targets),
        ...                    lambda idx: {"maps": explain_rows(idx)})["maps"]   # doctest: +SKIP
    """
    n = len(keys)
    if cache is None:
        return {k: np.asarray(v) for k, v in compute(np.arange(n)).items()}
    found, stored = cache.get(keys)
    missing = np.nonzero(~found)[0]
    fresh = {k: np.asarray(v) for k, v in compute(missing).items()} if len(missing) else {}
    if len(missing):
        cache.put([keys[i] for i in missing], fresh)
    names = list(fresh or stored)
    out: dict[str, np.ndarray] = {}
    for name in names:
        ref = fresh[name] if name in fresh else stored[name]
        arr = np.empty((n, *ref.shape[1:]), dtype=ref.dtype)
        if found.any():
            arr[found] = stored[name]
        if len(missing):
            arr[missing] = fresh[name]
        out[name] = arr
    return out
