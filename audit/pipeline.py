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
model; batches never straddle a shard) in this process (:mod:`audit.forward`); ``run.backend:
ray`` hands the rows to Ray Data (:mod:`audit.scale`). Both feed the same shard store
(:mod:`audit.shards`), so resume, the cache (``run.cache_dir``, :mod:`audit.cache`) and
consolidation are shared and the results are equal either way. Peak memory is one shard plus
the final per-image arrays. This module runs the stages; it computes nothing itself.
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
from audit.errors import RunError, UsageError
from audit.forward import (  # forward_batch, forward_collated, forward_frame: re-exported for callers
    forward_batch,
    forward_collated,
    forward_frame,
    load_classifier,
    local_compute,
    resolve_device,
)
from audit.runs import Run
from audit.shards import (
    assemble_shard,
    check_shards,
    compute_frame,
    consolidate_shards,
    plan_shards,
    remove_shards,
    shard_path,
    shard_ranges,
    shard_write_error,
    write_shard,
)

__all__ = [
    "config_fingerprint",
    "forward_batch",
    "forward_collated",
    "forward_frame",
    "forward_shards",
    "load_classifier",
    "resolve_device",
    "run_audit",
]

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


# --------------------------------------------------------------------------- forward stage


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
                raise RunError(shard_write_error(path, exc, index, len(ranges), written)) from exc
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
            columns=config.data.columns,
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
        from audit.analyses import explain_methods  # an explicit method that does not apply: refused now

        explain_methods(config, classifier)
        class_names = list(classifier.class_names or [])
        from audit.components.targets import check_references  # a finding the components stage cannot name

        check_references(config, clip=adapter.kind == "clip", class_names=class_names,
                         group_columns=manifest.group_columns)
        run = _open_or_create_run(config, adapter, manifest, df, device, class_names=class_names, log=log)
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
    with timer.stage("slices"):
        from audit.slices.stage import run_slices

        run_slices(ctx)
    if config.components.enabled:
        with timer.stage("components"):
            from audit.components.run import run_components

            run_components(ctx)
    with timer.stage("finish"):
        run.meta["limitations"] = analyses.limitations(ctx)
        analyses.findings(ctx)
    run.meta["timings"] = {**run.meta.get("timings", {}), **timer.timings}
    run.meta.pop("error", None)
    run.finish("complete")
    remove_shards(run)
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


def _open_or_create_run(config: AuditConfig, adapter: Any, manifest: Any, df: Any, device: str, *,
                        class_names: list[str], log: Callable[[str], None] | None = None) -> Run:
    preprocessing = _preprocessing_meta(adapter, df)
    model = {**adapter.describe(), "name": config.model.name or config.model.spec}
    if adapter.kind == "clip":  # the zero-shot classes: Run.load_model builds the same classifier from them
        model["class_names"] = list(class_names)
    for text in preprocessing["warnings"]:
        (log or (lambda s: None))(f"warning: {text}")
    meta = {
        "config": config.model_dump(mode="json"),
        "config_fingerprint": config_fingerprint(config),
        "model": model,
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
            "map the label column to the model's class names (or give model.class_names / model.class_prompts; "
            "a probe head's classes are the labels of model.probe.manifest)"
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
