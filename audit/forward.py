"""The forward engine: the audited model as a classifier, and one pass of images through it.

:func:`load_classifier` builds the model exactly as a run uses it (a CLIP wrapped in a
:class:`~audit.models.ZeroShotHead`); :func:`forward_collated` runs one decoded batch and
accounts for every image (NaN/Inf outputs raise or are recorded as skipped);
:func:`local_compute` streams the rows of the shards still to do through one DataLoader.
The Ray backend (:mod:`audit.scale`) runs the same :func:`forward_collated` in its actors, and
both hand their per-shard results to the shard store (:mod:`audit.shards`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from audit.config import AuditConfig
from audit.errors import NumericsError, UsageError

__all__ = [
    "autocast_context",
    "forward_batch",
    "forward_collated",
    "forward_frame",
    "forward_rows",
    "load_classifier",
    "local_compute",
    "resolve_device",
    "stack_parts",
]

# --------------------------------------------------------------------------- model


def load_classifier(config: AuditConfig, class_names: Sequence[str] | None = None, *, device: str = "cpu",
                    probe_head: Any = None):
    """Load the configured model; wrap a CLIP in a ZeroShotHead so it classifies.

    With ``model.probe`` the model is a frozen backbone read by a linear head
    (:func:`audit.probing.probe_classifier`: from ``probe_head``, a run's saved head file, else
    ``model.probe.weights``, else fitted on ``model.probe.manifest``); the
    :class:`~audit.models.probe.ProbeAdapter` is then both the adapter and the classifier.

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
    if config.model.probe is not None:
        from audit.probing import probe_classifier

        probe = probe_classifier(config, adapter, device=device, head_file=probe_head, forward_rows=forward_rows)
        return probe, probe
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


# --------------------------------------------------------------------------- one pass


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
    return stack_parts(rows, probs, embs, skipped)


def _append_forward(classifier: Any, batch: dict[str, Any], rows: list, probs: list, embs: list, skipped: list,
                    **kw: Any) -> None:
    ids, p, e, sk = forward_collated(classifier, batch, **kw)
    skipped.extend(sk)
    if ids.size:
        rows.append(ids)
        probs.append(p)
        embs.append(e)


def stack_parts(rows: list, probs: list, embs: list, skipped: list) -> dict[str, Any]:
    return {
        "row_id": np.concatenate(rows) if rows else np.zeros(0, np.int64),
        "probs": np.concatenate(probs) if probs else np.zeros((0, 0), np.float32),
        "embeddings": np.concatenate(embs) if embs else np.zeros((0, 0), np.float32),
        "skipped": list(skipped),
    }


class _ShardBatches:
    """Batch sampler over :func:`audit.shards.compute_frame` rows: ``batch_size`` rows, never across a shard."""

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
    plans: Sequence[Any],
    *,
    batch_size: int,
    num_workers: int,
    skip_bad: bool,
    device: str,
    precision: str,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream the rows of ``frame`` through one DataLoader (workers decode ahead) and the model.

    ``frame`` and ``plans`` come from :func:`audit.shards.compute_frame` and
    :func:`audit.shards.plan_shards` (a plan needs only ``index`` and ``n_compute`` here).

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
        yield plan.index, stack_parts(rows, probs, embs, skipped)


