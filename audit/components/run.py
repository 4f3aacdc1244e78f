"""The ``components`` stage of a run: where in the model a finding is carried.

Called by :func:`audit.pipeline.run_audit` after the CLIP analyses and the slices (config
``components``, off by default: it costs one more forward over the audit set). The findings it
decomposes are the run's own (:mod:`.targets`): association tests, harmful-label gaps and retrieval
skew of a CLIP run, and group-metric gaps (accuracy, per-class recall ...) of any labelled run, ViT
classifiers included. For each it decomposes the model's output (CLIP: the image embedding;
classifiers: the logits) into the direct contributions of the heads and MLPs of the last
``components.layers`` blocks (:mod:`.decompose`), measures each component's mean-ablation effect
on the finding with a bootstrap interval (:func:`.ablate.component_effects`), tests the top-k heads
against random heads of the same layers (:func:`.ablate.random_head_test`, Holm over every finding
and k) with the accuracy before and after, names the top components' roles (TextSpan over the
vocabulary for a CLIP; the classes whose logits they move for a classifier, :mod:`.roles`) and maps
where the top heads look in each compared group (:mod:`.maps`). Tables ``components``,
``ablations`` and ``component_maps`` (docs/RUN_FORMAT.md "Components").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from audit.components.ablate import adjust, component_effects, random_head_test
from audit.components.decompose import decompose_batches
from audit.components.maps import MAP_COLUMNS, head_maps
from audit.components.roles import component_roles, roles_text
from audit.components.targets import Target, resolve_targets

__all__ = ["COMPONENT_COLUMNS", "run_components"]

COMPONENT_COLUMNS = ["finding", "finding_kind", "metric", "component", "layer", "head", "kind", "n", "before",
                     "after", "effect", "ci_low", "ci_high", "rank", "roles"]
#: columns ``ablations`` has beyond :data:`audit.components.ablate.ABLATION_COLUMNS`
TARGET_COLUMNS = ["finding_kind", "metric", "attribute", "groups", "label"]


def _batches(ctx: Any, rows: np.ndarray, size: int):
    from audit.analyses import _load_batch

    for s in range(0, len(rows), size):
        yield _load_batch(ctx, rows[s:s + size])[0]


def _to_logits(ctx: Any, output: str):
    """outputs -> class logits: the decomposed logits themselves, or the run's head over an embedding."""
    import torch

    if output == "logits":
        return lambda out: np.asarray(out)
    head = getattr(ctx.classifier, "logits_from", None)
    if head is None or not ctx.class_names:
        return None

    def to_logits(out: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.as_tensor(out, dtype=torch.float32, device=ctx.adapter.device)).float().cpu().numpy()

    return to_logits


def _map_rows(ctx: Any, t: Target, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Up to ``n`` row ids of each compared group (the second group of a one-vs-rest or retrieval finding
    is every other image)."""
    meta = ctx.predictions
    v = meta[t.attribute].astype(str).to_numpy()
    a, b = t.groups
    masks = {a: v == a, b: (v != a) if b in ("rest", "target") else v == b}
    ids = meta["row_id"].to_numpy()
    return {g: np.sort(rng.choice(ids[m], size=min(n, int(m.sum())), replace=False)) for g, m in masks.items() if m.any()}


def run_components(ctx: Any) -> None:
    """Write tables ``components``, ``ablations`` and ``component_maps`` for the run's findings."""
    from audit.errors import UsageError
    from audit.models.zeroshot import text_embeddings

    cfg = ctx.config.components
    if not cfg.enabled:
        return
    try:
        view = ctx.adapter.residual_view()
    except UsageError as e:
        ctx.notes.append(f"components: left out ({e})")
        ctx.run.meta["components"] = {"skipped": str(e)}
        ctx.run.save_meta()
        return
    clip = getattr(ctx.adapter, "kind", None) == "clip"
    to_logits = _to_logits(ctx, view.output)
    targets, notes = resolve_targets(ctx, to_logits=to_logits,
                                     text_embeddings=lambda texts: text_embeddings(ctx.adapter, list(texts)))
    ctx.notes.extend(notes)
    if not targets:
        ctx.run.meta["components"] = {"skipped": "no finding to decompose", "notes": notes}
        ctx.run.save_meta()
        return
    meta = ctx.predictions
    rows = meta["row_id"].to_numpy()
    bs = ctx.config.run.batch_size
    dec = decompose_batches(ctx.adapter, _batches(ctx, rows, bs), layers=cfg.layers)
    C, R = dec.contributions.numpy(), dec.rest.numpy()
    labels = meta["label_idx"].to_numpy()
    known = labels >= 0

    def accuracy(out: np.ndarray, idx: np.ndarray) -> float:
        if to_logits is None or not known[idx].any():
            return float("nan")
        pred = to_logits(out).argmax(1)
        return float((pred[known[idx]] == labels[idx][known[idx]]).mean())

    dropped: list[str] = []
    if clip:
        from audit.slices.vocabulary import load_vocabulary, usable_vocabulary

        # concepts the tokenizer cannot read would name roles with <unk> text: left out, and said so
        vocab, dropped = usable_vocabulary(ctx.adapter, load_vocabulary(*cfg.vocabulary), where="components.vocabulary")
        if dropped:
            ctx.notes.append(f"Component roles: {len(dropped)} vocabulary concept(s) left out because the tokenizer "
                             f"cannot read them, e.g. {', '.join(repr(d) for d in dropped[:5])}.")
        role_texts = vocab.texts()
        role_emb = text_embeddings(ctx.adapter, role_texts)
        roles_from = "vocabulary"
    elif view.output == "logits" and ctx.class_names:  # a classifier's roles: the classes whose logits it moves
        role_texts = [str(c) for c in ctx.class_names]
        role_emb = np.eye(len(role_texts))
        roles_from = "classes"
    else:
        role_texts, role_emb, roles_from = [], None, "none"
    st = ctx.config.stats
    effects, ablations, maps = [], [], []
    for i, t in enumerate(targets):
        eff = component_effects(C, R, t.spec, names=dec.names, layers=dec.layers, heads=dec.heads, n_boot=cfg.n_boot,
                                seed=st.seed + i)
        top = [dec.names.index(c) for c in eff["component"].head(cfg.n_roles)]
        if role_emb is not None:
            roles = component_roles(C, dec.names, top, role_emb, role_texts, n_texts=3)
            eff["roles"] = [roles_text(roles, c) for c in eff["component"]]
        else:
            eff["roles"] = ""
        eff["kind"] = np.where(eff["head"] >= 0, "head", "mlp")
        eff["finding_kind"], eff["metric"] = t.kind, t.metric
        effects.append(eff[COMPONENT_COLUMNS])
        abl = random_head_test(C, R, t.spec, names=dec.names, heads=dec.heads, ks=tuple(cfg.k),
                               n_random=cfg.n_random, seed=st.seed + i, accuracy=accuracy)
        for c, v in zip(TARGET_COLUMNS, (t.kind, t.metric, t.attribute, " vs ".join(t.groups), t.label)):
            abl[c] = v
        ablations.append(abl)
        top_heads = [(n, int(ly), int(h)) for n, ly, h in eff[["component", "layer", "head"]].head(cfg.n_roles)
                     .itertuples(index=False) if int(h) >= 0]
        if top_heads:
            picked = _map_rows(ctx, t, np.random.default_rng(st.seed + i), cfg.map_images)
            images = {g: _batches(ctx, ids, bs) for g, ids in picked.items()}
            maps.append(head_maps(ctx.adapter, view, images, top_heads, finding=t.ref))
    ctx.run.write_table("components", pd.concat(effects, ignore_index=True))
    ctx.run.write_table("ablations", adjust(pd.concat(ablations, ignore_index=True)))
    ctx.run.write_table("component_maps", pd.concat(maps, ignore_index=True) if maps else pd.DataFrame(columns=MAP_COLUMNS))
    ctx.run.meta["components"] = {
        "layers": sorted(set(dec.layers)), "n_images": int(C.shape[0]), "output": view.output,
        "findings": [{"ref": t.ref, "kind": t.kind, "metric": t.metric, "label": t.label} for t in targets],
        "roles_from": roles_from, "vocabulary": list(cfg.vocabulary) if clip else [], "concepts_left_out": dropped,
        "n_random": cfg.n_random, "correction": "holm over every finding and k", "notes": notes}
    ctx.run.save_meta()
