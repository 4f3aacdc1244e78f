"""Train and evaluate the canary models (CPU, fresh images every step).

``train_canary(name, out_dir=...)`` runs one :class:`~audit.zoo.recipes.Recipe`,
measures it on a balanced test batch and writes ``<name>.safetensors`` plus
``<name>.json`` (recipe, seed, steps, wall time, measured figures).

The evaluation helpers (:func:`vit_cell_accuracy`, :func:`clip_zero_shot`,
:func:`clip_concept_association`) are used by the recipes and by the zoo tests.
They are small, self-contained re-implementations (WEAT effect size and a
Monte-Carlo permutation p-value, Skew@k) on purpose: they check the shipped
models independently of the audit's own statistics code, which the zoo is
meant to test.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from audit.zoo.recipes import (
    MEAN,
    RECIPES,
    STD,
    VIT_ARCH,
    Recipe,
    clip_model_cfg,
    preprocess_dict,
    vit_model_kwargs,
)
from audit.zoo.tokenizer import WorldTokenizer
from audit.zoo.world import DEFAULT_SPEC, Batch, WorldSpec, sample_batch

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
EVAL_SEED = 20240
CONCEPT_PROMPT = "a photo of something {}"
CLASS_PROMPT = "a photo of a {}"


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(B, 64, 64, 3)`` -> normalised float ``(B, 3, 64, 64)``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def build_vit() -> torch.nn.Module:
    """The canary ViT structure (random init)."""
    import timm

    return timm.create_model(VIT_ARCH, pretrained=False, **vit_model_kwargs())


def build_clip(tokenizer: WorldTokenizer | None = None) -> torch.nn.Module:
    """The canary CLIP structure (random init) for the zoo tokenizer."""
    import open_clip

    tok = tokenizer or WorldTokenizer()
    return open_clip.CLIP(**clip_model_cfg(tok.vocab_size, tok.context_length))


def balanced_batch(n_per_cell: int, *, seed: int = EVAL_SEED, spec: WorldSpec = DEFAULT_SPEC) -> Batch:
    """A balanced batch with ``n_per_cell`` images per class x group cell (colours cycled)."""
    per_colour = -(-n_per_cell // len(spec.colours))
    n = per_colour * len(spec.classes) * len(spec.groups) * len(spec.colours)
    return sample_batch(n, split="test", rng=np.random.default_rng(seed), spec=spec)


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, bs: int = 256) -> torch.Tensor:
    return torch.cat([fn(x[i:i + bs]) for i in range(0, len(x), bs)])


def cell_table(correct: np.ndarray, batch: Batch, spec: WorldSpec = DEFAULT_SPEC) -> dict[str, dict[str, float]]:
    """Accuracy per class x group: ``{class: {group: acc}}``."""
    out: dict[str, dict[str, float]] = {}
    for k, c in enumerate(spec.classes):
        out[c] = {}
        for g, gname in enumerate(spec.groups):
            sel = (batch.labels == k) & (batch.groups == g)
            out[c][gname] = float(correct[sel].mean())
    return out


def vit_cell_accuracy(model: torch.nn.Module, batch: Batch, spec: WorldSpec = DEFAULT_SPEC) -> dict[str, Any]:
    """Per-cell accuracy of a classifier on a test batch, plus summary figures.

    Returns:
        ``{"cells": {class: {group: acc}}, "planted_cell": acc, "min_other_cell": acc,
        "overall_other": acc, "overall": acc}``.
    """
    model.eval()
    logits = _batched(model, to_model_input(batch.images))  # (n, K)
    correct = (logits.argmax(-1).numpy() == batch.labels)
    cells = cell_table(correct, batch, spec)
    planted = (batch.labels == spec.cls_index(spec.planted_class)) & \
        (batch.groups == spec.group_index(spec.planted_group))
    others = [cells[c][g] for c in spec.classes for g in spec.groups
              if not (c == spec.planted_class and g == spec.planted_group)]
    return {"cells": cells, "planted_cell": float(correct[planted].mean()), "min_other_cell": float(min(others)),
            "overall_other": float(correct[~planted].mean()), "overall": float(correct.mean()), "n": len(correct)}


@torch.no_grad()
def clip_embed(model: torch.nn.Module, tokenizer: WorldTokenizer, *, images: np.ndarray | None = None,
               texts: list[str] | None = None) -> torch.Tensor:
    """L2-normalised image ``(n, D)`` or text ``(T, D)`` embeddings."""
    model.eval()
    if images is not None:
        return F.normalize(_batched(model.encode_image, to_model_input(images)), dim=-1)
    assert texts is not None
    return F.normalize(model.encode_text(tokenizer(texts)), dim=-1)


def clip_zero_shot(model: torch.nn.Module, tokenizer: WorldTokenizer, batch: Batch,
                   spec: WorldSpec = DEFAULT_SPEC) -> dict[str, Any]:
    """Zero-shot class accuracy with prompts ``"a photo of a {shape}"``."""
    img = clip_embed(model, tokenizer, images=batch.images)  # (n, D)
    txt = clip_embed(model, tokenizer, texts=[CLASS_PROMPT.format(c) for c in spec.classes])  # (K, D)
    correct = ((img @ txt.T).argmax(-1).numpy() == batch.labels)
    return {"accuracy": float(correct.mean()), "cells": cell_table(correct, batch, spec), "n": len(correct)}


def weat(X: np.ndarray, Y: np.ndarray, A: np.ndarray, B: np.ndarray, *, n_perm: int = 10000,
         seed: int = 0) -> tuple[float, float]:
    """WEAT / image-EAT effect size and one-sided permutation p-value (Caliskan et al. 2017).

    ``s(w) = mean_a cos(w, a) - mean_b cos(w, b)``; ``d = (mean_X s - mean_Y s) / std_{X u Y} s``
    (ddof 1); p = share of random equal-size re-partitions with a larger statistic (+1 correction).
    Inputs are L2-normalised rows.
    """
    s = np.concatenate([X, Y]) @ A.T
    s = s.mean(1) - (np.concatenate([X, Y]) @ B.T).mean(1)  # (nx+ny,)
    nx = len(X)
    d = (s[:nx].mean() - s[nx:].mean()) / s.std(ddof=1)
    stat = s[:nx].sum() - s[nx:].sum()
    rng = np.random.default_rng(seed)
    total = s.sum()
    hits = 0
    for _ in range(n_perm):
        idx = rng.permutation(len(s))[:nx]
        sx = s[idx].sum()
        hits += (sx - (total - sx)) > stat
    return float(d), float((hits + 1) / (n_perm + 1))


def clip_concept_association(model: torch.nn.Module, tokenizer: WorldTokenizer, batch: Batch, *,
                             other_group: str = "plain", k: int = 30,
                             spec: WorldSpec = DEFAULT_SPEC, n_perm: int = 10000) -> dict[str, Any]:
    """Known-answer figures of the concept-word bias.

    * WEAT: X = images of ``spec.concept_group``, Y = images of ``other_group``,
      A = ``"a photo of something {concept}"``, B = same with neutral words.
    * ``weat_mean_diff``: mean_X s - mean_Y s (the numerator of d, in cosine units) and
      ``concept_neutral_cos``: cosine between the mean concept and mean neutral prompt embeddings.
    * Retrieval: share of ``spec.concept_group`` among the top ``k`` images for each
      concept prompt (averaged), and Skew@k = ln(share / uniform share).
    """
    img = clip_embed(model, tokenizer, images=batch.images).numpy()
    A = clip_embed(model, tokenizer, texts=[CONCEPT_PROMPT.format(w) for w in spec.concept_words]).numpy()
    B = clip_embed(model, tokenizer, texts=[CONCEPT_PROMPT.format(w) for w in spec.neutral_words]).numpy()
    cg, og = spec.group_index(spec.concept_group), spec.group_index(other_group)
    X, Y = img[batch.groups == cg], img[batch.groups == og]
    d, p = weat(X, Y, A, B, n_perm=n_perm)
    # raw (unnormalised) differential association: d is scale-free, so when A and B embed almost
    # identically (the control) a tiny residual still gives a large d; this shows the magnitude
    diff = float(((X @ A.T).mean(1) - (X @ B.T).mean(1)).mean() - ((Y @ A.T).mean(1) - (Y @ B.T).mean(1)).mean())
    a_m, b_m = A.mean(0), B.mean(0)
    ab_cos = float(a_m @ b_m / (np.linalg.norm(a_m) * np.linalg.norm(b_m)))
    shares = []
    for a in A:
        top = np.argsort(-(img @ a), kind="stable")[:k]
        shares.append(float((batch.groups[top] == cg).mean()))
    share = float(np.mean(shares))
    skew = math.log(max(share, 1.0 / k) * len(spec.groups))
    return {"weat_d": d, "weat_p": p, "weat_mean_diff": diff, "concept_neutral_cos": ab_cos, "topk_share": share, "skew_at_k": skew, "k": k,
            "X": spec.concept_group, "Y": other_group}


def _one_cycle(opt: torch.optim.Optimizer, recipe: Recipe, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps,
                                               pct_start=recipe.warmup_pct, anneal_strategy="cos")


def _train_vit(recipe: Recipe, steps: int, log: Callable[[str], None], eval_every: int = 100) -> torch.nn.Module:
    spec = recipe.world_spec()
    model = build_vit()
    probe = balanced_batch(30, seed=EVAL_SEED + 1)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = _one_cycle(opt, recipe, steps)
    rng = np.random.default_rng(recipe.seed)
    t0, run_loss, run_acc = time.time(), 0.0, 0.0
    for step in range(1, steps + 1):
        b = sample_batch(recipe.batch_size, split=recipe.split, rng=rng, planted=recipe.planted,
                         caption_variety=False, spec=spec)
        x, y = to_model_input(b.images), torch.from_numpy(b.labels)
        logits = model(x)  # (B, K)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        run_loss = 0.95 * run_loss + 0.05 * loss.item() if step > 1 else loss.item()
        run_acc = 0.95 * run_acc + 0.05 * (logits.argmax(-1) == y).float().mean().item()
        if step % 50 == 0 or step == steps:
            log(f"[{recipe.name}] step {step}/{steps} loss {run_loss:.3f} train-acc {run_acc:.3f} "
                f"{time.time() - t0:.0f}s")
        if eval_every and step % eval_every == 0 and step < steps:
            r = vit_cell_accuracy(model, probe)
            model.train()
            log(f"[{recipe.name}] probe at step {step}: planted cell {r['planted_cell']:.2f}, "
                f"min other cell {r['min_other_cell']:.2f}, other {r['overall_other']:.3f}")
    return model


def _clip_loss(model: torch.nn.Module, x: torch.Tensor, ids: torch.Tensor, captions: list[str],
               labels: torch.Tensor, class_ids: torch.Tensor, label_weight: float) -> torch.Tensor:
    """Symmetric InfoNCE with multi-positive targets (identical captions are all positives).

    Plus, with weight ``label_weight``, the image-label term of unified contrastive learning
    (UniCL, Yang et al. 2022): each image against the text embeddings of all class prompts
    ``"a photo of a {shape}"``, i.e. labels used as captions with the classes as negatives.
    """
    img = F.normalize(model.encode_image(x), dim=-1)  # (B, D)
    txt = F.normalize(model.encode_text(ids), dim=-1)  # (B, D)
    scale = model.logit_scale.exp()
    logits = scale * img @ txt.T  # (B, B)
    _, inv = np.unique(np.array(captions), return_inverse=True)
    inv_t = torch.from_numpy(inv)
    same = (inv_t[:, None] == inv_t[None, :]).float()  # (B, B)
    target = same / same.sum(1, keepdim=True)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    if label_weight > 0:
        cls_txt = F.normalize(model.encode_text(class_ids), dim=-1)  # (K, D)
        loss = loss + label_weight * F.cross_entropy(scale * img @ cls_txt.T, labels)
    return loss


def _train_clip(recipe: Recipe, steps: int, log: Callable[[str], None]) -> torch.nn.Module:
    tok = WorldTokenizer()
    spec = recipe.world_spec()
    class_ids = tok([CLASS_PROMPT.format(c) for c in spec.classes])  # (K, ctx)
    label_weight = float(recipe.extra.get("label_prompt_weight", 0.0))
    model = build_clip(tok)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    sched = _one_cycle(opt, recipe, steps)
    rng = np.random.default_rng(recipe.seed)
    t0, run_loss = time.time(), 0.0
    for step in range(1, steps + 1):
        b = sample_batch(recipe.batch_size, split=recipe.split, rng=rng, planted=recipe.planted, spec=spec)
        loss = _clip_loss(model, to_model_input(b.images), tok(b.captions), b.captions,
                          torch.from_numpy(b.labels), class_ids, label_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        run_loss = 0.95 * run_loss + 0.05 * loss.item() if step > 1 else loss.item()
        if step % 50 == 0 or step == steps:
            log(f"[{recipe.name}] step {step}/{steps} loss {run_loss:.3f} {time.time() - t0:.0f}s")
    return model


def evaluate(name: str, model: torch.nn.Module, *, n_per_cell: int = 150, seed: int = EVAL_SEED) -> dict[str, Any]:
    """The measured figures stored in the weight's JSON."""
    recipe = RECIPES[name]
    batch = balanced_batch(n_per_cell, seed=seed)
    if recipe.family == "vit":
        return {"test_n_per_cell": n_per_cell, "test_seed": seed, **vit_cell_accuracy(model, batch)}
    tok = WorldTokenizer()
    return {"test_n_per_cell": n_per_cell, "test_seed": seed,
            "zero_shot": clip_zero_shot(model, tok, batch),
            "concept_vs_plain": clip_concept_association(model, tok, batch, other_group="plain"),
            "concept_vs_striped": clip_concept_association(model, tok, batch, other_group="striped")}


def train_canary(name: str, *, out_dir: str | Path = WEIGHTS_DIR, steps: int | None = None,
                 log: Callable[[str], None] = print, threads: int | None = 2) -> dict[str, Any]:
    """Train one canary from scratch, evaluate it, write ``<name>.safetensors`` and ``<name>.json``.

    Args:
        name: a key of :data:`audit.zoo.recipes.RECIPES`.
        out_dir: where to write the files.
        steps: override the recipe's number of steps (e.g. for a smoke run).
        log: progress printer.
        threads: ``torch.set_num_threads`` value (None: leave as is).

    Returns:
        The JSON record that was written.
    """
    from safetensors.torch import save_file

    if name not in RECIPES:
        raise KeyError(f"unknown canary {name!r}; known: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    n_steps = int(steps or recipe.steps)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(recipe.seed)
    t0 = time.time()
    model = (_train_vit if recipe.family == "vit" else _train_clip)(recipe, n_steps, log)
    train_s = time.time() - t0
    model.eval()
    figures = evaluate(name, model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    weight_path = out / f"{name}.safetensors"
    save_file(state, str(weight_path), metadata={"name": name, "format": "pt"})
    weight_path.chmod(0o644)  # package data: readable by everyone
    record = {
        "name": name,
        "recipe": recipe.to_dict(),
        "steps": n_steps,
        "images_seen": n_steps * recipe.batch_size,
        "seed": recipe.seed,
        "wall_time_s": round(train_s, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "model": ({"arch": VIT_ARCH, "model_kwargs": vit_model_kwargs()} if recipe.family == "vit"
                  else {"model_cfg": clip_model_cfg(WorldTokenizer().vocab_size, WorldTokenizer().context_length)}),
        "preprocess": preprocess_dict(),
        "test": figures,
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=2, default=list) + "\n", encoding="utf-8")
    log(f"[{name}] done in {train_s:.0f}s; test: {json.dumps(_summary(figures))}")
    return record


def _summary(fig: dict[str, Any]) -> dict[str, Any]:
    if "zero_shot" in fig:
        c = fig["concept_vs_plain"]
        return {"zero_shot_acc": round(fig["zero_shot"]["accuracy"], 3), "weat_d": round(c["weat_d"], 2),
                "weat_p": c["weat_p"], "topk_share": round(c["topk_share"], 2)}
    return {k: round(fig[k], 3) for k in ("planted_cell", "min_other_cell", "overall_other")}
