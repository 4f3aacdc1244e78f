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
7. ``finish``   headline findings, limitations, status "complete"

The local backend runs shards in this process; ``run.backend: ray`` hands the
forward shards to Ray Data (``audit.scale``). Results are equal either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit.config import AuditConfig
from audit.errors import AuditError, NumericsError, RunError, UsageError
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

    adapter = load_model(
        config.model.spec,
        checkpoint=str(config.model.checkpoint) if config.model.checkpoint else None,
        device=device,
        class_names=config.model.class_names,
        **config.model.options,
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
    return adapter, ZeroShotHead(adapter, prompts)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("run.device: cuda was requested but no CUDA device is available; use --device cpu")
    return name


# --------------------------------------------------------------------------- forward shards


def shard_ranges(n_rows: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n_rows)) for s in range(0, n_rows, shard_size)]


def shard_path(run: Run, index: int) -> Path:
    return run.path / "shards" / f"forward-{index:05d}.safetensors"


def autocast_context(device: str, precision: str):
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


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
    """Forward pass over the manifest rows in ``df``.

    Returns ``{"row_id": (n,), "probs": (n, C), "embeddings": (n, D), "skipped": [...]}``
    (float32 numpy). Rows that fail to decode raise, or are recorded in ``skipped``
    when ``skip_bad``. Non-finite outputs are reported per image.
    """
    import torch

    from audit.data import ImageDataset, make_loader

    ds = ImageDataset(df, adapter.preprocess.transform(), skip_bad=skip_bad)
    loader = make_loader(ds, batch_size=batch_size, num_workers=num_workers)
    rows, probs, embs, skipped = [], [], [], []
    with torch.no_grad():
        for batch in loader:
            skipped.extend(batch.get("skipped", []))
            if len(batch["row_id"]) == 0:
                continue
            x = batch["image"].to(device)
            with autocast_context(device, precision):
                emb = adapter.encode_image(x)
                logits = classifier.logits(x)
            logits = logits.float()
            emb = emb.float()
            bad = ~(torch.isfinite(logits).all(dim=1) & torch.isfinite(emb).all(dim=1))
            if bad.any():
                ids = [int(r) for r, b in zip(batch["row_id"], bad.tolist()) if b]
                raise NumericsError(
                    f"non-finite model outputs (NaN/Inf) for row ids {ids[:20]}"
                    + (" with reduced precision; rerun with --precision fp32" if precision != "fp32" else "")
                )
            probs.append(torch.softmax(logits, dim=1).cpu().numpy())
            embs.append(emb.cpu().numpy())
            rows.append(np.asarray(batch["row_id"], dtype=np.int64))
    n_cls = len(getattr(classifier, "class_names", None) or []) or (probs[0].shape[1] if probs else 0)
    return {
        "row_id": np.concatenate(rows) if rows else np.zeros(0, np.int64),
        "probs": np.concatenate(probs) if probs else np.zeros((0, n_cls), np.float32),
        "embeddings": np.concatenate(embs) if embs else np.zeros((0, 0), np.float32),
        "skipped": skipped,
    }


def write_shard(path: Path, result: dict[str, Any]) -> None:
    """One atomic file per shard; the skipped rows travel in its metadata."""
    emb = result["embeddings"]
    if emb.size == 0:
        emb = np.zeros((0, 1), np.float32)
    write_arrays(
        path,
        {"row_id": result["row_id"], "probs": result["probs"].astype(np.float32), "embeddings": emb.astype(np.float32)},
        metadata={"skipped": json.dumps(result["skipped"])},
    )


def read_shard(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    arrays = read_arrays(path)
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
    arrays["skipped"] = json.loads(meta.get("skipped", "[]"))
    return arrays


# --------------------------------------------------------------------------- run


def config_fingerprint(config: AuditConfig) -> str:
    """Hash of the parts of the config that change the forward results (for --resume)."""
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
    torch.manual_seed(config.stats.seed)
    device = resolve_device(config.run.device)

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
        class_names = list(classifier.class_names or [])
        run = _open_or_create_run(config, adapter, manifest, df, device)
        run.meta["skipped"] = list(manifest.skipped)
    log(f"model {adapter.spec} ({adapter.kind}), {len(df)} images, output {run.path}")

    # ---------------------------------------------------------------- forward
    with timer.stage("forward"):
        ranges = shard_ranges(len(df), config.run.shard_size)
        todo = [i for i in range(len(ranges)) if not shard_path(run, i).is_file()]
        if config.run.backend == "ray":
            from audit.scale import ray_forward

            ray_forward(config, df, ranges, todo, run, progress=progress)
        else:
            done = len(ranges) - len(todo)
            progress("forward", done * config.run.shard_size, len(df))
            for i in todo:
                s, e = ranges[i]
                result = forward_rows(
                    classifier, adapter, df.iloc[s:e],
                    batch_size=config.run.batch_size, num_workers=config.run.num_workers,
                    skip_bad=config.data.skip_bad, device=device, precision=config.run.precision,
                )
                write_shard(shard_path(run, i), result)
                progress("forward", e, len(df))

    with timer.stage("tables"):
        shards = [read_shard(shard_path(run, i)) for i in range(len(ranges))]
        row_id = np.concatenate([s["row_id"] for s in shards]) if shards else np.zeros(0, np.int64)
        probs = np.concatenate([s["probs"] for s in shards]) if shards else np.zeros((0, len(class_names)), np.float32)
        emb = np.concatenate([s["embeddings"] for s in shards]) if shards else np.zeros((0, 1), np.float32)
        for s in shards:
            run.meta["skipped"].extend(s["skipped"])
        if len(row_id) == 0:
            raise UsageError("no image could be read: every row was skipped (see the skipped list in run.json)")
        samples, predictions = build_tables(df, row_id, probs, class_names, manifest.group_columns)
        run.write_table("samples", samples)
        run.write_table("predictions", predictions)
        run.write_array_file("probs", {"probs": probs, "row_id": row_id})
        run.write_array_file("embeddings", {"image": emb, "row_id": row_id})
        run.meta["dataset"]["n_used"] = int(len(row_id))
        run.save_meta()

    from audit import analyses

    ctx = analyses.Context(
        config=config, run=run, adapter=adapter, classifier=classifier, samples=samples,
        predictions=predictions, embeddings=emb, row_id=row_id, group_columns=list(manifest.group_columns),
        class_names=class_names, device=device, progress=progress, log=log,
    )
    with timer.stage("stats"):
        analyses.performance(ctx)
        if config.stats.embeddings:
            analyses.embedding_stats(ctx)
    with timer.stage("explain"):
        analyses.explanations(ctx)
    if adapter.kind == "clip":
        with timer.stage("clip"):
            analyses.clip_analyses(ctx)
    with timer.stage("finish"):
        run.meta["headline"] = analyses.headline(ctx)
        run.meta["limitations"] = analyses.limitations(ctx)
    run.meta["timings"] = {**run.meta.get("timings", {}), **timer.timings}
    run.finish("complete")
    _remove_shards(run)
    return run


def _open_or_create_run(config: AuditConfig, adapter: Any, manifest: Any, df: Any, device: str) -> Run:
    meta = {
        "config": config.model_dump(mode="json"),
        "config_fingerprint": config_fingerprint(config),
        "model": {**adapter.describe(), "name": config.model.name or config.model.spec},
        "dataset": {
            "manifest": str(config.data.manifest),
            "fingerprint": manifest.fingerprint,
            "n_rows": int(len(manifest.df) + len(manifest.skipped)),
            "n_used": None,
            "label_column": config.data.columns.label,
            "group_columns": list(manifest.group_columns),
            "has_masks": bool("mask_path" in df.columns and df["mask_path"].notna().any()),
            "root": str(config.data.root or Path(config.data.manifest).parent),
        },
        "device": device,
        "dtype": {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[config.run.precision],
        "backend": config.run.backend,
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
        run.meta.update({k: v for k, v in meta.items() if k not in ("dataset",)})
        run.meta["status"] = "partial"
        run.save_meta()
        return run
    return Run.create(out, overwrite=config.run.overwrite, meta=meta)


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
