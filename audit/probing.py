"""Fitting and loading the ``model.probe`` head of a frozen backbone (:class:`~audit.models.probe.ProbeAdapter`).

:func:`probe_classifier` reads the head from a run's saved file, from ``model.probe.weights``, or
fits it with scikit-learn on the embeddings of ``model.probe.manifest`` (one forward pass through
:func:`audit.forward.forward_rows`, handed in by :func:`audit.forward.load_classifier`), with the
probe's own accuracy and seed recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.errors import ConfigError, UsageError
from audit.models.base import Adapter
from audit.models.probe import HEAD_FILE, ProbeAdapter, embed_dim, fit_head, load_head, save_head

__all__ = ["probe_classifier"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _accuracy(pred: np.ndarray, y: np.ndarray) -> dict[str, Any] | None:
    from audit.stats.resampling import wilson_interval

    n = len(y)
    if n == 0:
        return None
    k = int((pred == y).sum())
    lo, hi = wilson_interval(k, n)
    p = k / n  # the interval is clamped to hold p (Wilson's bound at p = 1 can round to 1 - 1e-16)
    return {"value": p, "k": k, "n": n, "ci_low": min(float(lo), p), "ci_high": max(float(hi), p),
            "interval": "wilson 95%"}


def _embed_manifest(backbone: Adapter, manifest: Any, *, forward_rows: Any, batch_size: int, num_workers: int,
                    device: str, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings (n, D), labels (n,))`` of a labelled manifest, through ``forward_rows``
    (:func:`audit.forward.forward_rows`)."""
    out = forward_rows(_EmbeddingOnly(backbone), backbone, manifest.df, batch_size=batch_size,
                       num_workers=num_workers, skip_bad=False, device=device, precision=precision)
    labels = manifest.df.set_index("row_id").loc[out["row_id"], "label"].astype(str).to_numpy()
    return out["embeddings"].astype(np.float64), labels


class _EmbeddingOnly:
    """The forward pass's classifier interface over a head-less backbone (embeddings only)."""

    def __init__(self, backbone: Adapter) -> None:
        self.backbone = backbone

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.backbone.encode_image(x)
        return emb, emb.new_zeros(emb.shape[0], 1)


def _load_labelled(path: Path, pc: Any, where: str, class_names: Sequence[str] | None = None) -> Any:
    from audit.data import load_manifest

    m = load_manifest(path, columns=pc.columns, root=pc.root, format=pc.format, class_names=class_names)
    if "label" not in m.df.columns or m.df["label"].isna().any():
        raise ConfigError(f"{where}: {path}: every training row needs a label (column {pc.columns.label!r})")
    return m


def probe_classifier(config: Any, backbone: Adapter, *, device: str = "cpu", head_file: Path | None = None,
                     forward_rows: Any = None) -> ProbeAdapter:
    """The ``model.probe`` head of ``config`` on ``backbone``: read from ``head_file`` (a run's saved
    head), from ``model.probe.weights``, or fitted on ``model.probe.manifest`` (its embeddings by
    ``forward_rows``, the run's batch forward pass :func:`audit.forward.forward_rows`).

    A fitted head is written to ``run.output/probe_head.safetensors`` (with the key of what it was
    fitted on: a later call with the same probe config, manifest and backbone reads it back).
    """
    pc = config.model.probe
    dim = embed_dim(backbone)
    if head_file is not None:
        w, b, meta = load_head(head_file, dim=dim, where="the run's probe head")
        return ProbeAdapter(backbone, w, b, json.loads(meta["class_names"]), info=json.loads(meta.get("info", "{}")))
    if pc.weights is not None:
        w, b, meta = load_head(pc.weights, dim=dim)
        names = list(pc.class_names or json.loads(meta.get("class_names", "null")) or [])
        if len(names) != w.shape[0]:
            raise ConfigError(f"model.probe.class_names: {pc.weights} has {w.shape[0]} classes; give "
                              f"{w.shape[0]} class names (got {len(names)})")
        info = {"source": "file", "path": str(pc.weights), "sha256": _sha256(Path(pc.weights))}
        return ProbeAdapter(backbone, w, b, names, info=info)
    if forward_rows is None:
        raise UsageError("probe_classifier: fitting needs forward_rows (audit.forward.forward_rows); "
                         "audit.forward.load_classifier passes it")
    return _fitted(config, backbone, dim, device=device, forward_rows=forward_rows)


def _fitted(config: Any, backbone: Adapter, dim: int, *, device: str, forward_rows: Any) -> ProbeAdapter:
    pc = config.model.probe
    where = "model.probe.manifest"
    same = Path(pc.manifest).resolve() == Path(config.data.manifest).resolve()
    if same and not pc.allow_same_manifest:
        raise ConfigError(f"{where}: {pc.manifest} is also data.manifest: the audit would measure the probe on "
                          "its own training images (optimistic accuracy); give a separate training manifest, "
                          "or set model.probe.allow_same_manifest: true to do it anyway")
    sha = _sha256(Path(pc.manifest)) if Path(pc.manifest).is_file() else None
    hold_path = pc.holdout if isinstance(pc.holdout, Path) else None
    key = hashlib.sha256(json.dumps({"probe": pc.model_dump(mode="json"), "sha": sha, "backbone": backbone.fingerprint,
                                     "hold": _sha256(hold_path) if hold_path and hold_path.is_file() else None},
                                    sort_keys=True).encode()).hexdigest()
    out = Path(config.run.output) / HEAD_FILE
    if out.is_file():
        w, b, meta = load_head(out, dim=dim, where=str(out))
        if meta.get("key") == key:
            return ProbeAdapter(backbone, w, b, json.loads(meta["class_names"]), info=json.loads(meta["info"]))
    train = _load_labelled(Path(pc.manifest), pc, where)
    names = list(train.class_names)
    kw = {"forward_rows": forward_rows, "batch_size": config.run.batch_size, "num_workers": config.run.num_workers, "device": device,
          "precision": config.run.precision}
    x, y = _embed_manifest(backbone, train, **kw)
    seed = int(pc.seed if pc.seed is not None else config.stats.seed)
    xh, yh, holdout = np.zeros((0, x.shape[1])), np.zeros(0, dtype=object), "none"
    if hold_path is not None:
        xh, yh = _embed_manifest(backbone, _load_labelled(hold_path, pc, "model.probe.holdout", names), **kw)
        holdout = str(hold_path)
    elif pc.holdout > 0:
        x, xh, y, yh = _split(x, y, pc.holdout, seed)
        holdout = f"stratified split {pc.holdout:g} (seed {seed})"
    w, b, fit = fit_head(x, y, names, C=pc.C, max_iter=pc.max_iter, seed=seed, standardize=pc.standardize)
    idx = {c: i for i, c in enumerate(names)}

    def acc(xs: np.ndarray, ys: np.ndarray) -> dict[str, Any] | None:
        return _accuracy(np.argmax(xs @ w.T + b, axis=1), np.array([idx[str(v)] for v in ys], dtype=np.int64))

    notes = []
    if same:
        notes.append("the probe was fitted on the audited manifest itself (model.probe.allow_same_manifest): "
                     "its accuracy in this audit is optimistic")
    if not fit["converged"]:
        notes.append(f"lbfgs did not converge in max_iter={pc.max_iter}; raise model.probe.max_iter")
    info = {"source": "fitted", "path": str(pc.manifest), "sha256": sha, "n_train": len(y),
            "n_holdout": len(yh), "holdout": holdout, "classes": names, "seed": seed, "C": float(pc.C),
            "max_iter": int(pc.max_iter), "standardize": bool(pc.standardize), **fit,
            "estimator": "sklearn LogisticRegression(solver='lbfgs', multinomial)",
            "train_accuracy": acc(x, y), "holdout_accuracy": acc(xh, yh) if len(yh) else None,
            "same_manifest": bool(same), "head_file": HEAD_FILE, "notes": notes}
    probe = ProbeAdapter(backbone, w, b, names, info=info)
    run_json = Path(config.run.output) / "run.json"
    if not run_json.exists() or config.run.overwrite or not out.exists():  # never over another run's head
        save_head(out, probe, key=key)
    return probe


def _split(x: np.ndarray, y: np.ndarray, frac: float, seed: int):
    from sklearn.model_selection import train_test_split

    counts = {c: int((y == c).sum()) for c in set(y.tolist())}
    stratify = y if min(counts.values()) >= 2 else None
    try:
        return train_test_split(x, y, test_size=frac, random_state=seed, stratify=stratify)
    except ValueError as exc:
        raise ConfigError(f"model.probe.holdout: cannot hold out {frac:g} of {len(y)} training rows ({exc}); "
                          "lower it, give more rows, or set holdout: 0") from None
