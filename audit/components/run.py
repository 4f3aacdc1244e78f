"""The ``components`` stage of a run: where in the model each CLIP association finding is carried.

Called by :func:`audit.pipeline.run_audit` after the CLIP analyses (config ``components``, off by
default: it costs one more forward over the audit set). For every association test of the run
(``clip.association``, or those named in ``components.findings``) it decomposes the image
embeddings into the direct contributions of the heads and MLPs of the last ``components.layers``
blocks (:mod:`.decompose`), measures each component's mean-ablation effect on the test's effect
size d with a bootstrap interval (:func:`.ablate.component_effects`), tests the top-k heads
against random heads of the same layers (:func:`.ablate.random_head_test`, Holm over every
finding and k) with the zero-shot accuracy before and after, and names the top components' roles
with TextSpan over the vocabulary (:mod:`.roles`). Tables ``components`` and ``ablations``
(docs/RUN_FORMAT.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from audit.components.ablate import adjust, association_finding, component_effects, random_head_test
from audit.components.decompose import decompose_batches
from audit.components.roles import component_roles, roles_text

__all__ = ["COMPONENT_COLUMNS", "run_components"]

COMPONENT_COLUMNS = ["finding", "component", "layer", "head", "kind", "n", "before", "after", "effect", "ci_low",
                     "ci_high", "rank", "roles"]


def _batches(ctx: Any, rows: np.ndarray, size: int):
    from audit.analyses import _load_batch

    for s in range(0, len(rows), size):
        yield _load_batch(ctx, rows[s:s + size])[0]


def run_components(ctx: Any) -> None:
    """Write tables ``components`` and ``ablations`` for the run's association tests (CLIP runs)."""
    import torch

    from audit.analyses import _text_embeddings
    from audit.errors import ConfigError

    cfg = ctx.config.components
    if not cfg.enabled:
        return
    if getattr(ctx.adapter, "kind", None) != "clip" or not ctx.config.clip.association:
        ctx.notes.append("components: left out (it decomposes CLIP runs with clip.association tests)")
        return
    tests = [t for t in ctx.config.clip.association if not cfg.findings or t.name in cfg.findings]
    unknown = sorted(set(cfg.findings) - {t.name for t in ctx.config.clip.association})
    if unknown:
        raise ConfigError(f"components.findings names {unknown}, which are not clip.association tests; "
                          f"known: {[t.name for t in ctx.config.clip.association]}")
    meta = ctx.predictions
    rows = meta["row_id"].to_numpy()
    dec = decompose_batches(ctx.adapter, _batches(ctx, rows, ctx.config.run.batch_size), layers=cfg.layers)
    C, R = dec.contributions.numpy(), dec.rest.numpy()
    labels = meta["label_idx"].to_numpy()
    known = labels >= 0
    clf = ctx.classifier

    def accuracy(out: np.ndarray, idx: np.ndarray) -> float:
        if not hasattr(clf, "_logits_from") or not known[idx].any():
            return float("nan")
        with torch.no_grad():
            pred = clf._logits_from(torch.as_tensor(out, dtype=torch.float32)).argmax(1).numpy()
        return float((pred[known[idx]] == labels[idx][known[idx]]).mean())

    from audit.slices.vocabulary import load_vocabulary, usable_vocabulary

    # concepts the tokenizer cannot read would name roles with <unk> text: left out, and said so
    vocab, dropped = usable_vocabulary(ctx.adapter, load_vocabulary(*cfg.vocabulary), where="components.vocabulary")
    if dropped:
        ctx.notes.append(f"Component roles: {len(dropped)} vocabulary concept(s) left out because the tokenizer cannot "
                         f"read them, e.g. {', '.join(repr(d) for d in dropped[:5])}.")
    texts = vocab.texts()
    vocab_emb = _text_embeddings(ctx.adapter, texts)
    st = ctx.config.stats
    effects, ablations = [], []
    for i, t in enumerate(tests):
        a_texts, b_texts = t.texts()
        f = association_finding(t.name, meta[t.attribute].astype(str).to_numpy(), t.x_group, t.y_group,
                                _text_embeddings(ctx.adapter, a_texts), _text_embeddings(ctx.adapter, b_texts))
        eff = component_effects(C, R, f, names=dec.names, layers=dec.layers, heads=dec.heads, n_boot=cfg.n_boot,
                                seed=st.seed + i)
        top = [dec.names.index(c) for c in eff["component"].head(cfg.n_roles)]
        roles = component_roles(C, dec.names, top, vocab_emb, texts, n_texts=3)
        eff["roles"] = [roles_text(roles, c) for c in eff["component"]]
        eff["kind"] = np.where(eff["head"] >= 0, "head", "mlp")
        effects.append(eff[COMPONENT_COLUMNS])
        ablations.append(random_head_test(C, R, f, names=dec.names, heads=dec.heads, ks=tuple(cfg.k),
                                          n_random=cfg.n_random, seed=st.seed + i, accuracy=accuracy))
    ctx.run.write_table("components", pd.concat(effects, ignore_index=True))
    ctx.run.write_table("ablations", adjust(pd.concat(ablations, ignore_index=True)))
    ctx.run.meta["components"] = {"layers": sorted(set(dec.layers)), "n_images": int(C.shape[0]),
                                  "vocabulary": list(cfg.vocabulary), "concepts_left_out": dropped,
                                  "correction": "holm"}
    ctx.run.save_meta()
