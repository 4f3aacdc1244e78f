"""Ray Data backend for the forward stage (``run.backend: ray``, extra ``scale``).

The rows still to compute go to ``ray.data`` as one block per shard; ``map_batches`` runs
them through a pool of :class:`ForwardActor` (a callable class: each actor loads the model
once, checks its weights fingerprint against the driver's, decodes its batch with the same
:class:`~audit.data.ImageDataset` rules and runs :func:`audit.forward.forward_collated`).
The driver gathers the outputs per shard and hands them back to the pipeline's shard
store (:mod:`audit.shards`), so resume, the cache and consolidation are those of the local
backend and the results are equal.

Ray is started by the command (``ray.init`` with this machine's CPUs, no dashboard) unless
it is already initialised in this process, or joins an existing cluster given by
``run.ray_address`` (``--ray-address``, e.g. ``ray://head:10001`` or ``auto``). See
docs/SCALE.md.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from audit.config import AuditConfig
from audit.errors import AuditError, RunError, UsageError
from audit.forward import forward_collated, forward_frame, load_classifier, stack_parts

__all__ = ["ForwardActor", "ray_compute", "ray_session"]


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise UsageError(
            "run.backend: ray needs Ray Data; install the extra: pip install 'vision-audit[scale]'"
        ) from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """Use the Ray already initialised in this process, or start/join one for the duration.

    Args:
        address: an existing cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``);
            ``None`` starts a local Ray with ``num_cpus`` (default: all of this machine's).
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray"
        raise UsageError(
            f"run.ray_address: could not start or join {where} ({exc}); check the address "
            "(`ray status` on the head node) or drop --ray-address to start a local Ray"
        ) from exc
    try:
        yield ray
    finally:
        ray.shutdown()


class ForwardActor:
    """A Ray Data callable class: loads the audited model once per actor.

    Args:
        config: the run's config as a JSON dict (``AuditConfig.model_dump(mode="json")``).
        class_hint: class names from the manifest (CLIP prompts), as in the driver.
        expected_fingerprint: the driver's classifier fingerprint; a worker that loads other
            weights (a random init, a different file on this node) refuses to run.
        device: ``"cpu"`` or ``"cuda"``.
        num_threads: torch intra-op threads in this actor.
    """

    def __init__(self, config: dict[str, Any], class_hint: list[str] | None, expected_fingerprint: str,
                 device: str = "cpu", num_threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, int(num_threads)))
        self.config = AuditConfig.model_validate(config)
        torch.manual_seed(self.config.stats.seed)  # same init as the driver for seeded, checkpoint-less models
        self.device = device
        self.adapter, self.classifier = load_classifier(self.config, class_hint, device=device)
        got = str(self.classifier.fingerprint)
        if got != expected_fingerprint:
            raise RunError(
                f"a Ray worker loaded model weights {got} but the driver has {expected_fingerprint}; "
                "every node must load the same weights: give model.checkpoint as a path every node can read"
            )
        self.transform = self.adapter.preprocess.transform()

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        """``batch``: pandas rows ``row_id, path, _shard`` -> outputs, one row per input row.

        Output columns: ``row_id``, ``_shard``, ``probs (b, C)``, ``embeddings (b, D)`` float32,
        ``ok`` (False for a skipped image) and ``reason`` (why it was skipped, else "").
        """
        from audit.data import ImageDataset, collate_skip_bad

        ds = ImageDataset(forward_frame(batch), self.transform, skip_bad=self.config.data.skip_bad)
        b = collate_skip_bad([ds[i] for i in range(len(ds))])
        row_ids = batch["row_id"].to_numpy(dtype=np.int64)
        n = len(row_ids)
        ids, probs, emb, skipped = forward_collated(self.classifier, b, device=self.device,
                                                    precision=self.config.run.precision,
                                                    skip_bad=self.config.data.skip_bad)
        if ids.size == 0:
            n_c = len(self.classifier.class_names or [])
            probs, emb = np.zeros((0, n_c), np.float32), np.zeros((0, 1), np.float32)
        pos = {int(r): j for j, r in enumerate(ids.tolist())}
        out_p = np.zeros((n, probs.shape[1]), np.float32)
        out_e = np.zeros((n, emb.shape[1]), np.float32)
        ok = np.zeros(n, dtype=bool)
        reason = np.array([""] * n, dtype=object)
        why = {int(s["row_id"]): str(s["reason"]) for s in skipped}
        for i, r in enumerate(row_ids.tolist()):
            if r in pos:
                out_p[i] = probs[pos[r]]
                out_e[i] = emb[pos[r]]
                ok[i] = True
            else:
                reason[i] = why.get(r, "not returned by the decoder")
        return {"row_id": row_ids, "_shard": batch["_shard"].to_numpy(dtype=np.int64), "probs": out_p,
                "embeddings": out_e, "ok": ok, "reason": reason.astype(str),
                "path": batch["path"].astype(str).to_numpy()}


def _audit_cause(exc: BaseException) -> AuditError | None:
    """The AuditError a Ray worker raised, if any, from Ray's wrapped exception chain."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, AuditError):
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
        as_cause = getattr(e, "as_instanceof_cause", None)  # ray.exceptions.RayTaskError
        if callable(as_cause):
            try:
                inner = as_cause()
            except Exception:  # noqa: BLE001 - best effort unwrapping of a foreign exception
                inner = None
            if inner is not e:
                stack.append(inner)
        stack += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
    return None


def _audit_error_from_text(text: str) -> AuditError | None:
    """Rebuild the worker's AuditError from Ray's error text.

    Ray Data wraps an exception raised in a ``map_batches`` actor in a ``UserCodeException``
    that reaches the driver without the original object (only its formatted traceback), so the
    last ``audit.errors.<Class>: <message>`` line of that text is the error the user must see.
    """
    import re

    from audit import errors

    found = re.findall(r"audit\.errors\.(\w+): (.+)", text)
    for name, message in reversed(found):
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, AuditError):
            return cls(message.strip())
    return None


def ray_compute(
    config: AuditConfig,
    frame: Any,
    plans: Sequence[Any],
    *,
    class_hint: Sequence[str] | None,
    expected_fingerprint: str,
    device: str = "cpu",
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Compute the rows of ``frame`` (``row_id, path, _shard``) on Ray; yield per shard, in plan order.

    Yields the same ``(shard index, {"row_id", "probs", "embeddings", "skipped"})`` items as
    :func:`audit.forward.local_compute`, so the pipeline writes identical shards.

    Raises:
        AuditError: the error a worker raised (e.g. an undecodable image without skip_bad).
    """
    sizes = {p.index: p.n_compute for p in plans}
    if sum(sizes.values()) == 0:
        for p in plans:
            yield p.index, stack_parts([], [], [], [])
        return
    with ray_session(config.run.ray_address) as ray:
        ctx = ray.data.DataContext.get_current()
        old_order, old_progress = ctx.execution_options.preserve_order, ctx.enable_progress_bars
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        try:
            # blocks of two batches (never across a shard): a shard alone would feed a single actor
            step = 2 * config.run.batch_size
            parts = [g.iloc[s : s + step].reset_index(drop=True)
                     for _, g in frame.groupby("_shard", sort=False) for s in range(0, len(g), step)]
            ds = ray.data.from_pandas(parts)
            cuda = device.startswith("cuda")
            cpus = float(ray.cluster_resources().get("CPU", 1))
            gpus = float(ray.cluster_resources().get("GPU", 0))
            n_batches = max(1, -(-len(frame) // config.run.batch_size))
            # no more actors than input blocks: Ray warns about idle minimum actors
            pool = int(max(1, min(n_batches, len(parts), gpus if cuda and gpus else cpus)))
            out = ds.map_batches(
                ForwardActor,
                fn_constructor_kwargs={
                    "config": config.model_dump(mode="json"),
                    "class_hint": list(class_hint) if class_hint else None,
                    "expected_fingerprint": expected_fingerprint,
                    "device": "cuda" if cuda else "cpu",
                    "num_threads": 1,
                },
                batch_size=config.run.batch_size,
                batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(size=pool),  # one model per actor
                num_cpus=0 if cuda else 1,
                num_gpus=1 if cuda else 0,
            )
            yield from _gather(out, plans, sizes)
        except AuditError:
            raise
        except Exception as exc:
            cause = _audit_cause(exc) or _audit_error_from_text(str(exc))
            if cause is not None:
                raise type(cause)(str(cause)) from exc
            raise RunError(f"the Ray backend failed ({type(exc).__name__}: {exc}); rerun with --resume") from exc
        finally:
            ctx.execution_options.preserve_order = old_order
            ctx.enable_progress_bars = old_progress


def _gather(ds: Any, plans: Sequence[Any], sizes: dict[int, int]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Group Ray output rows by shard; yield each shard once all its rows arrived, in plan order."""
    pending: dict[int, list[dict[str, np.ndarray]]] = {}
    count: dict[int, int] = {}
    order = [p.index for p in plans]
    nxt = 0

    def ready() -> Iterator[tuple[int, dict[str, Any]]]:
        nonlocal nxt
        while nxt < len(order) and count.get(order[nxt], 0) >= sizes[order[nxt]]:
            i = order[nxt]
            chunks = pending.pop(i, [])
            rows, probs, embs, skipped = [], [], [], []
            for c in chunks:
                ok = c["ok"]
                rows.append(c["row_id"][ok])
                probs.append(c["probs"][ok])
                embs.append(c["embeddings"][ok])
                skipped += [{"row": int(r) + 1, "row_id": int(r), "path": str(p), "reason": str(why)}
                            for r, p, why in zip(c["row_id"][~ok], c["path"][~ok], c["reason"][~ok])]
            res = stack_parts([r for r in rows if len(r)], [p for p in probs if len(p)],
                               [e for e in embs if len(e)], skipped)
            if count.get(i, 0) != sizes[i]:
                raise RunError(f"forward shard {i}: Ray returned {count.get(i, 0)} rows for {sizes[i]}")
            nxt += 1
            yield i, res

    yield from ready()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        shard = np.asarray(batch["_shard"])
        for i in np.unique(shard):
            sel = shard == i
            part = {k: np.asarray(batch[k])[sel] for k in ("row_id", "probs", "embeddings", "ok", "reason", "path")}
            pending.setdefault(int(i), []).append(part)
            count[int(i)] = count.get(int(i), 0) + int(sel.sum())
        yield from ready()
    if nxt < len(order):
        raise RunError(f"the Ray backend stopped before forward shard {order[nxt]} was complete; rerun with --resume")
