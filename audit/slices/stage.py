"""The run's slice stage: error slices of a labelled run, named with a CLIP text tower when there is one.

Called by the pipeline (``audit/pipeline.py``) after the CLIP analyses, before the findings ledger.
It reads the run's stored predictions and embeddings (:func:`audit.slices.slices_for_run`), so the
tables are the same as a later ``slices_for_run(run)`` with the same options, and writes:

* ``slices`` and ``slice_members`` (docs/RUN_FORMAT.md, "Error slices");
* ``slice_groups``: each slice's overlap with every labelled group (one row per slice x column x group);
* ``run.json`` ``slices``: the settings used, the embedder, the vocabulary and what was left out.

Which embeddings: ``slices.discover_on: model`` (default) finds slices in the audited model's own
embeddings; ``embedder`` in the image tower of ``slices.embedder``. Which words: a CLIP run names its
slices with its own text tower; any run with ``slices.embedder`` with the embedder's; otherwise slices
get no words (their overlap with the labelled groups and their typical images still describe them).
Concepts of the vocabulary that the text tower's tokenizer cannot read (a word it does not know,
or the same ids as an earlier concept) are left out, and the run's notes say how many.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from audit.slices.vocabulary import usable_vocabulary

__all__ = ["run_slices", "search_note", "usable_vocabulary"]


def run_slices(ctx: Any) -> None:
    """Discover, confirm and describe slices for the run in ``ctx`` (an :class:`audit.analyses.Context`)."""
    sc = ctx.config.slices
    run = ctx.run
    if not sc.enabled:
        run.meta["slices"] = {"enabled": False}
        return
    if not ctx.labelled:
        ctx.notes.append("Error slices were not searched: the run has no labels, so no row is known to be an error.")
        run.meta["slices"] = {"enabled": True, "skipped": "no labels"}
        return
    from audit.slices import load_vocabulary, slices_for_run

    text_adapter, describe, embedder_meta = None, None, None
    if sc.embedder is not None:
        embedder = load_embedder(sc.embedder, device=ctx.device)
        ctx.log(f"slices: embedding {len(ctx.row_id)} images with {embedder.fingerprint}")
        describe = image_embeddings(embedder, ctx.samples, ctx.row_id, batch_size=ctx.config.run.batch_size,
                                    device=ctx.device)
        text_adapter = embedder
        embedder_meta = {"spec": _spec(embedder), "checkpoint": embedder.spec.checkpoint, "fingerprint": embedder.fingerprint,
                         "preprocess": embedder.preprocess.to_dict()}
    elif ctx.adapter.kind == "clip":
        text_adapter = ctx.adapter
    vocab, dropped = None, []
    if text_adapter is not None:
        vocab, dropped = usable_vocabulary(text_adapter, load_vocabulary(*sc.vocabulary))
        if dropped:
            ctx.notes.append(
                f"Slice naming: {len(dropped)} of {len(vocab) + len(dropped)} vocabulary concepts were left out because "
                f"{_spec(text_adapter)}'s tokenizer cannot read them (words it does not know, or the same tokens as "
                f"another concept), e.g. {', '.join(repr(d) for d in dropped[:5])}."
            )
    options: dict[str, Any] = {
        "min_group_size": ctx.config.stats.min_group_size, "fdr": sc.fdr, "per_class": sc.per_class,
        "n_components": sc.n_components, "n_boot": ctx.config.stats.n_boot, "alpha": ctx.config.stats.alpha,
        "seed": ctx.config.stats.seed if sc.seed is None else sc.seed,
    }
    from audit.models.zeroshot import text_embeddings

    text_embed = (lambda texts: text_embeddings(text_adapter, texts)) if text_adapter is not None else None
    kw: dict[str, Any] = {}
    if describe is not None:
        if sc.discover_on == "embedder":
            kw = {"embeddings": describe, "row_ids": ctx.row_id}
        else:
            kw = {"describe_embeddings": describe, "describe_row_ids": ctx.row_id}
    if kw.get("embeddings") is not None:
        from audit.slices import discover_slices

        pred = run.table("predictions")
        groups = [g for g in ctx.group_columns if g in pred.columns] or None
        slices, members = discover_slices(kw["embeddings"], pred, row_ids=kw["row_ids"], groups=groups,
                                          text_embed=text_embed, vocabulary=vocab, **options)
    else:
        slices, members = slices_for_run(run, text_embed=text_embed, vocabulary=vocab, **kw, **options)
    notes = write_slice_tables(run, slices, members, group_columns=ctx.group_columns, meta={
        "enabled": True, "discover_on": sc.discover_on, "embedder": embedder_meta,
        "named_by": _spec(text_adapter) if text_adapter is not None else None,
        "vocabulary": list(sc.vocabulary), "n_concepts": len(vocab) if vocab is not None else 0,
        "concepts_left_out": dropped, "options": options})
    ctx.notes.extend(f"Error slices: {n}" for n in notes)
    ctx.log(f"slices: {len(slices)} candidate(s), {run.meta['slices']['n_confirmed']} confirmed on the held-out half")


def write_slice_tables(run: Any, slices: Any, members: Any, *, group_columns: list[str],
                       meta: dict[str, Any]) -> list[str]:
    """Write ``slices``, ``slice_members`` and (with group columns) ``slice_groups``, and run.json
    ``slices`` (``meta`` plus the counts and notes); returns the notes of the search."""
    from audit.slices import slice_group_overlap

    notes = list(slices.attrs.get("notes", []))
    slices.attrs = {}
    run.write_table("slices", slices)
    run.write_table("slice_members", members)
    if group_columns and len(slices):
        overlap = slice_group_overlap(slices, members, run.table("predictions"), group_cols=group_columns)
        overlap.attrs = {}
        run.write_table("slice_groups", overlap)
    confirmed = int(slices["confirmed"].sum()) if len(slices) else 0
    run.meta["slices"] = {**meta, "n_candidates": len(slices), "n_confirmed": confirmed, "notes": notes}
    run.save_meta()
    return notes


def _spec(adapter: Any) -> str:
    return f"{adapter.spec.family}:{adapter.spec.name}"


def load_embedder(cfg: Any, *, device: str = "cpu") -> Any:
    """The CLIP model of ``slices.embedder``; anything else is a :class:`~audit.errors.ConfigError`."""
    from audit.errors import ConfigError
    from audit.models import load_model

    adapter = load_model(cfg.spec, checkpoint=str(cfg.checkpoint) if cfg.checkpoint else None, device=device,
                         **dict(cfg.options))
    if adapter.kind != "clip":
        raise ConfigError(f"slices.embedder: {cfg.spec} is a {adapter.kind}, not a CLIP model; the embedder must "
                          "have a text tower to name slices (e.g. open_clip:ViT-B-32/laion2b_s34b_b79k)")
    return adapter


def image_embeddings(adapter: Any, samples: Any, row_id: np.ndarray, *, batch_size: int, device: str) -> np.ndarray:
    """``(N, D)`` image embeddings of the run's rows ``row_id`` (in that order) with ``adapter``'s own
    preprocessing. A row that does not decode now (it did in the forward pass) is an error naming it."""
    import torch

    from audit.data import ImageDataset, make_loader
    from audit.errors import RunError
    from audit.forward import forward_frame

    df = samples.set_index("row_id").loc[np.asarray(row_id)].reset_index()
    ds = ImageDataset(forward_frame(df), adapter.preprocess.transform(), skip_bad=True)
    parts, ids = [], []
    with torch.no_grad():
        for b in make_loader(ds, batch_size=batch_size):
            if b.get("skipped"):
                s = b["skipped"][0]
                raise RunError(f"slices.embedder: row id {s.get('row_id')} ({s.get('path')}) no longer decodes: "
                               f"{s.get('reason')}")
            parts.append(adapter.encode_image(b["image"].to(device)).float().cpu().numpy())
            ids.append(np.asarray([int(r) for r in b["row_id"]]))
    got = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    if not np.array_equal(got, np.asarray(row_id)):
        raise RunError("slices.embedder: the embedder's rows do not match the run's rows")
    return np.concatenate(parts).astype(np.float32)


def search_note(meta: dict[str, Any] | None) -> str:
    """How a run searched for error slices, or why it did not, from run.json ``slices`` (one sentence
    for the reports and the dashboard)."""
    if not meta:
        return "This run did not search for error slices (it was written before the slice stage existed)."
    if not meta.get("enabled", True):
        return "Error slices were not searched (slices.enabled: false)."
    if meta.get("skipped"):
        return f"Error slices were not searched: {meta['skipped']}."
    o = meta.get("options") or {}
    named = (f" Slices are named with {meta['named_by']}'s text tower." if meta.get("named_by")
             else " No text tower names them (a classifier run without slices.embedder).")
    return (f"Searched in the {'embedder' if meta.get('discover_on') == 'embedder' else 'model'}'s image embeddings "
            f"on a seeded half of the labelled rows (seed {o.get('seed')}) and tested once on the other half: "
            f"{meta.get('n_candidates', 0)} candidate(s), {meta.get('n_confirmed', 0)} confirmed at "
            f"Benjamini-Hochberg FDR {o.get('fdr')} (slices smaller than {o.get('min_group_size')} held-out rows are "
            f"not tested). Group labels were not used to find them.{named}")
