"""Cached access to runs, tables, maps, images and the (optional) live model.

Every cached function takes the run path and its ``stamp`` (``run.json``'s mtime in ns), so a
rewritten run is read again. Tables use ``st.cache_data`` (a copy per call, safe to mutate);
arrays that are only read (maps, embeddings) and the model use ``st.cache_resource`` (shared
between sessions, never mutated). A model shared between sessions is used under a lock and only
through library calls whose captures are ``with`` blocks, so no hook outlives a call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from audit.errors import AuditError, RunError
from audit.explain.quality import map_problem
from audit.runs import Run
from dashboards import render

THUMB = 96  # px, grid thumbnails
OVERLAY = 192  # px, overlays in the detail view


def stamp(path: str) -> int:
    """``run.json``'s modification time (ns): part of every cache key."""
    try:
        return os.stat(Path(path) / "run.json").st_mtime_ns
    except OSError:
        return 0


@st.cache_resource(show_spinner=False, max_entries=32)
def _open(path: str, stamp: int) -> Run:
    return Run.open(path)


def open_run(path: str) -> Run:
    """The opened run (shared; read-only). Raises :class:`RunError` for a missing/partial run."""
    return _open(path, stamp(path))


@st.cache_data(show_spinner=False, max_entries=512)
def _table(path: str, stamp: int, name: str, columns: tuple[str, ...] | None) -> pd.DataFrame | None:
    run = _open(path, stamp)
    if not run.has_table(name):
        return None
    return run.table(name, columns=list(columns) if columns else None)


def table(path: str, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame | None:
    """A run table (only ``columns`` if given), or None when the run does not have it."""
    return _table(path, stamp(path), name, tuple(columns) if columns else None)


@st.cache_data(show_spinner=False, max_entries=64)
def _findings(path: str, stamp: int) -> pd.DataFrame:
    return _open(path, stamp).findings()


def findings(path: str) -> pd.DataFrame:
    """The run's findings ledger (the stored table, or computed from its tables for older runs)."""
    return _findings(path, stamp(path))


@dataclass
class MapStore:
    """One method's stored maps with an index by row id and a run-wide display range."""

    maps: np.ndarray  # (M, gh, gw) float16, raw
    index: dict[int, int]
    lo: float  # 1st percentile of all stored values (display range for scale "run")
    hi: float  # 99th percentile

    def get(self, row_id: int) -> np.ndarray | None:
        """The raw map ``(gh, gw)`` float32 of ``row_id``, or None when it was not stored."""
        i = self.index.get(int(row_id))
        return None if i is None else self.maps[i].astype(np.float32)

    def __len__(self) -> int:
        return len(self.index)


@st.cache_resource(show_spinner=False, max_entries=64)
def _maps(path: str, stamp: int, method: str) -> MapStore:
    maps, rows = _open(path, stamp).maps(method)
    flat = maps.reshape(-1).astype(np.float32)
    flat = flat[np.isfinite(flat)]
    lo, hi = (np.percentile(flat, [1, 99]) if flat.size else (0.0, 1.0))
    return MapStore(maps=maps, index={int(r): i for i, r in enumerate(rows.tolist())}, lo=float(lo), hi=float(hi))


def maps(path: str, method: str) -> MapStore:
    """Stored maps of ``method`` (loaded once per server process, then shared)."""
    return _maps(path, stamp(path), method)


def methods(path: str) -> list[str]:
    """Methods whose maps are stored in the run (attention_L* per-layer files excluded)."""
    return [m for m in open_run(path).methods if not m.startswith("attention_L")]


def layer_attention_files(path: str) -> list[int]:
    """Layers ``l`` with a stored ``maps/attention_L<l>.safetensors`` (per-head attention)."""
    out = []
    for f in (Path(path) / "maps").glob("attention_L*.safetensors"):
        tail = f.stem[len("attention_L"):]
        if tail.isdigit():
            out.append(int(tail))
    return sorted(out)


@st.cache_resource(show_spinner=False, max_entries=8)
def _arrays(path: str, stamp: int, name: str) -> dict[str, np.ndarray] | None:
    run = _open(path, stamp)
    return run.arrays(name) if run.has_arrays(name) else None


def arrays(path: str, name: str) -> dict[str, np.ndarray] | None:
    """A stored array file (e.g. ``embeddings``), shared read-only; None when absent."""
    return _arrays(path, stamp(path), name)


# ----------------------------------------------------------------------------- images
@st.cache_resource(show_spinner=False, max_entries=4)
def _image_paths(path: str, stamp: int) -> dict[int, str]:
    df = _open(path, stamp).table("samples", columns=["row_id", "path"])
    return dict(zip(df["row_id"].astype(int).tolist(), df["path"].astype(str).tolist()))


def image_file(path: str, row_id: int) -> str:
    """The image file of ``row_id`` as recorded in the run's samples table."""
    paths = _image_paths(path, stamp(path))
    if int(row_id) not in paths:
        raise RunError(f"run {path} has no row_id {row_id} in its samples table")
    return paths[int(row_id)]


def load_image(path: str, row_id: int):
    """Decode the image of ``row_id`` to RGB (PIL). Raises ImageDecodeError / RunError."""
    from audit.data.images import open_image

    return open_image(image_file(path, row_id))


@st.cache_data(show_spinner=False, max_entries=4096)
def _thumb(path: str, stamp: int, row_id: int, size: int) -> tuple[bytes, str]:
    try:
        img = render.fit(load_image(path, row_id), size)
        return render.png_bytes(img), ""
    except AuditError as e:
        return render.png_bytes(render.placeholder(size)), str(e)


def thumbnail(path: str, row_id: int, size: int = THUMB) -> tuple[bytes, str]:
    """``(png, problem)``: the image at ``size`` px; a placeholder and the reason if undecodable."""
    return _thumb(path, stamp(path), int(row_id), int(size))


@st.cache_data(show_spinner=False, max_entries=4096)
def _overlay(path: str, stamp: int, row_id: int, method: str, size: int, scale: str) -> tuple[bytes, str] | None:
    store = _maps(path, stamp, method)
    m = store.get(row_id)
    if m is None:
        return None
    problem = map_problem(m)
    if problem:  # NaN/Inf or constant: say so, never draw it as a blank or uniform heat map
        return render.png_bytes(render.placeholder(size)), f"{method}: no usable map — {problem}"
    lo, hi = (store.lo, store.hi) if scale == "run" else (None, None)
    try:
        img = load_image(path, row_id)
    except AuditError as e:
        return render.png_bytes(render.heat_only(m, size=size, lo=lo, hi=hi)), str(e)
    return render.png_bytes(render.overlay(img, m, size=size, lo=lo, hi=hi)), ""


def overlay_png(path: str, row_id: int, method: str, *, size: int = OVERLAY,
                scale: render.DisplayScale = "image") -> tuple[bytes, str] | None:
    """``(png, problem)`` of the stored ``method`` map over the image; None if not stored."""
    return _overlay(path, stamp(path), int(row_id), method, int(size), scale)


# ----------------------------------------------------------------------------- live model
@dataclass
class LiveModel:
    """A model loaded for live probing, or the reason it could not be loaded."""

    adapter: Any = None
    classifier: Any = None  # the adapter, or for CLIP the run's ZeroShotHead over it
    error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ok(self) -> bool:
        return self.adapter is not None


@st.cache_resource(show_spinner="Loading the model for live probing…", max_entries=2)
def _model(path: str, stamp: int) -> LiveModel:
    try:
        adapter, classifier = _open(path, stamp).load_model(device="cpu")  # as the pipeline built it
    except AuditError as e:
        return LiveModel(error=str(e))
    except Exception as e:  # noqa: BLE001 - any load failure is shown, the stored results still work
        return LiveModel(error=f"{type(e).__name__}: {e}")
    return LiveModel(adapter=adapter, classifier=classifier)


def live_model(path: str) -> LiveModel:
    """The run's model, loaded once per server process (shared between sessions, use its lock)."""
    return _model(path, stamp(path))


def model_input(path: str, row_id: int, lm: LiveModel):
    """The image of ``row_id`` preprocessed for the live model: ``(1, 3, H, W)`` tensor."""
    img = load_image(path, row_id)
    return lm.adapter.preprocess.transform()(img).unsqueeze(0)  # (1, 3, H, W)


@st.cache_data(show_spinner="Computing attention…", max_entries=256)
def _live_attention(path: str, stamp: int, row_id: int, start_layer: int, head_fusion: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    from audit.explain import explain

    lm = _model(path, stamp)
    x = model_input(path, row_id, lm)
    with lm.lock:
        ex = explain(lm.adapter, x, method="rollout", keep_attention=True, start_layer=start_layer,
                     head_fusion=head_fusion)
    att = ex.attention[0].float().numpy()  # (L, H, gh, gw)
    return att, ex.grid_maps[0].numpy()  # (gh, gw)


def live_attention(path: str, row_id: int, *, start_layer: int, head_fusion: str = "mean"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(attention (L, H, gh, gw), rollout (gh, gw))`` for one image, computed with the model."""
    return _live_attention(path, stamp(path), int(row_id), int(start_layer), head_fusion)


@st.cache_data(show_spinner="Computing the prompt map…", max_entries=256)
def _live_prompt(path: str, stamp: int, row_id: int, prompt: str) -> tuple[np.ndarray, list[str], list[float]]:
    from audit.explain import clip_gae

    lm = _model(path, stamp)
    x = model_input(path, row_id, lm)
    with lm.lock:
        maps, rel = clip_gae(lm.adapter, x, prompt)
    words, scores = rel[0]
    return maps[0].detach().float().numpy(), list(words), list(scores)


def live_prompt(path: str, row_id: int, prompt: str) -> tuple[np.ndarray, list[str], list[float]]:
    """CLIP GAE for one image and prompt: ``(map (gh, gw), words, relevance)``."""
    return _live_prompt(path, stamp(path), int(row_id), prompt)


@st.cache_data(show_spinner="Encoding text…", max_entries=256)
def _text_embeddings(path: str, stamp: int, texts: tuple[str, ...]) -> np.ndarray:
    import torch

    lm = _model(path, stamp)
    with lm.lock, torch.no_grad():
        tok = lm.adapter.tokenize(list(texts)).to(lm.adapter.device)
        emb = lm.adapter.encode_text(tok).float()  # (T, D)
    emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return emb.cpu().numpy()


def text_embeddings(path: str, texts: Sequence[str]) -> np.ndarray:
    """Unit-norm text embeddings ``(T, D)`` from the run's CLIP text tower."""
    return _text_embeddings(path, stamp(path), tuple(texts))


@st.cache_resource(show_spinner=False, max_entries=8)
def _faith_index(path: str, stamp: int) -> pd.DataFrame | None:
    run = _open(path, stamp)
    if not run.has_table("faithfulness"):
        return None
    df = run.table("faithfulness")
    return df.set_index(["row_id", "method"]).sort_index()


def faithfulness_for(path: str, row_id: int) -> pd.DataFrame:
    """Faithfulness rows of one image (index: method), empty when none were stored."""
    idx = _faith_index(path, stamp(path))
    if idx is None:
        return pd.DataFrame()
    try:
        return idx.xs(int(row_id), level="row_id").copy()
    except KeyError:
        return pd.DataFrame()
