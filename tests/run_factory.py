"""Build complete, realistic run directories for tests (no model needed).

``make_run`` writes every file ``docs/RUN_FORMAT.md`` documents: ``run.json`` with all
keys, ``samples``/``predictions`` with real 64x64 PNG images (simple shapes on three
backgrounds, two shape colours), raw patch-grid maps per method, image embeddings,
class probabilities and every table.

What is synthetic here: the images, the predictions and their probabilities, the
embeddings, the explanation maps, the per-image faithfulness scores, the sanity-check
rows and (CLIP runs) the zero-shot label each image leans to and the attribute text
embeddings. Every statistics table is computed from those with the library's own
functions, called as the pipeline calls them (``audit/analyses.py``):
``audit.stats.group_performance`` / ``disparity_tests``, ``embedding_group_stats``,
``linear_probe``, ``mmd_test``, ``projection``, ``zeroshot_label_distribution``,
``harmful_label_rates``, ``association_table``, ``retrieval_skew``,
``region_mass_by_group``, and ``audit.analyses._faith_summary``.

The planted bias (``biased=True``): the classifier is wrong much more often on the
"water" background (accuracy ~0.70 vs ~0.93), its embeddings are shifted by background,
and for CLIP runs the harmful-label rate is higher on "water". ``biased=False`` is the
control: the same world with no group effect.

Example:
    >>> run = make_run(tmp_path / "run", kind="clip", biased=True)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from audit.runs import Run

CLASS_NAMES = ["circle", "square", "triangle", "cross"]
BACKGROUNDS = ["plain", "grass", "water"]
COLOURS = ["red", "blue"]
_BG_RGB = {0: (225, 225, 225), 1: (70, 150, 60), 2: (60, 110, 200)}
_FG_RGB = {0: (210, 40, 40), 1: (30, 30, 170)}
MIN_GROUP_SIZE = 50
N_BLOCKS = 4
GRID = (8, 8)
ALPHA = 0.05
EMB_DIM = 32  # = the tiny test CLIP's embedding width (tests/app/conftest.py)
HARMFUL = ["criminal", "thief"]
NEUTRAL = ["object", "photo"]
QUERIES = ["a photo of a shape", "a photo of a criminal"]
LABEL_SET = "factory-shapes"


# --------------------------------------------------------------------------- synthetic data
def _shape_mask(cls: int, cx: int, cy: int, r: int, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    if cls == 0:
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if cls == 1:
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    if cls == 2:
        return (yy >= cy - r) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - (cy - r)) / 2)
    return ((np.abs(xx - cx) <= r // 3) & (np.abs(yy - cy) <= r)) | (
        (np.abs(yy - cy) <= r // 3) & (np.abs(xx - cx) <= r)
    )


def _draw(cls: int, bg: int, col: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One 64x64 RGB image (uint8) and its object mask (bool)."""
    img = np.empty((64, 64, 3), dtype=np.float32)
    img[:] = _BG_RGB[bg]
    yy, xx = np.mgrid[0:64, 0:64]
    if bg == 1:  # grass: vertical stripes
        img[(xx // 4) % 2 == 0] *= 0.8
    elif bg == 2:  # water: waves
        img[(np.sin(xx / 4.0) * 3 + yy) % 8 < 3] *= 1.2
    img += rng.normal(0, 6, size=img.shape)
    r = int(rng.integers(10, 16))
    cx, cy = int(rng.integers(r + 2, 62 - r)), int(rng.integers(r + 2, 62 - r))
    mask = _shape_mask(cls, cx, cy, r)
    img[mask] = _FG_RGB[col]
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _probabilities(preds: np.ndarray, correct: np.ndarray, n_cls: int, rng: np.random.Generator) -> np.ndarray:
    """(n, C) class probabilities whose argmax is ``preds``: confident when right, hesitant when wrong."""
    n = len(preds)
    top = np.where(correct, rng.beta(9, 2, n), rng.beta(4, 4, n) * 0.6 + 0.3)
    rest = rng.dirichlet(np.ones(n_cls), n)
    rest[np.arange(n), preds] = 0.0
    rest = rest / rest.sum(1, keepdims=True) * (1 - top)[:, None]
    # keep pred = argmax: the top probability is at least every other one
    top = np.maximum(top, rest.max(1) + 1e-3)
    probs = rest
    probs[np.arange(n), preds] = top
    return (probs / probs.sum(1, keepdims=True)).astype(np.float32)


def _zeroshot_labels(class_names: list[str]) -> pd.DataFrame:
    """The CLIP runs' zero-shot label set: the classes, two harmful, two neutral and two group labels."""
    rows = [(c, "class") for c in class_names] + [(h, "harmful") for h in HARMFUL]
    rows += [(x, "neutral") for x in NEUTRAL] + [("grass", "group"), ("water", "group")]
    return pd.DataFrame(rows, columns=["label", "kind"])


def _clip_embeddings(base: np.ndarray, preds: np.ndarray, bgs: np.ndarray, biased: bool, n_labels: int,
                     n_cls: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Image embeddings (n, EMB_DIM) and label text embeddings (L, EMB_DIM) of a synthetic CLIP.

    The first ``EMB_DIM - L`` dimensions carry ``base`` (class + background structure); each
    label's text embedding is one of the last ``L`` axes, and every image gets a strong
    component on the axis of the label it leans to: its predicted class mostly, a harmful
    label more often on "water" when ``biased``, sometimes a neutral or group label.
    """
    n = len(preds)
    p_harm = np.where(biased & (bgs == 2), 0.12, 0.03)
    u = rng.random(n)
    lean = preds.copy()  # index into the label table
    harm = u < p_harm
    neut = (u >= p_harm) & (u < p_harm + 0.05)
    grp = (u >= p_harm + 0.05) & (u < p_harm + 0.08)
    lean[harm] = n_cls + rng.integers(0, 2, harm.sum())
    lean[neut] = n_cls + 2 + rng.integers(0, 2, neut.sum())
    lean[grp] = n_cls + 4 + rng.integers(0, 2, grp.sum())
    d_base = EMB_DIM - n_labels
    block = rng.normal(0, 0.3, size=(n, n_labels))
    block[np.arange(n), lean] += 3.0
    img = np.concatenate([base[:, :d_base], block], axis=1).astype(np.float32)  # (n, EMB_DIM)
    text = np.zeros((n_labels, EMB_DIM), dtype=np.float32)  # (L, EMB_DIM)
    text[np.arange(n_labels), d_base + np.arange(n_labels)] = 1.0
    return img, text


# --------------------------------------------------------------------------- tables (library functions)
def _performance_tables(pred: pd.DataFrame, group_columns: list[str], *, n_boot: int, n_perm: int,
                        seed: int) -> dict[str, pd.DataFrame]:
    """group_performance and disparities, as audit.analyses.performance computes them."""
    from audit.stats import disparity_tests, group_performance

    common = dict(group_cols=group_columns, intersections=True, min_group_size=MIN_GROUP_SIZE, n_boot=n_boot,
                  alpha=ALPHA, seed=seed)
    return {"group_performance": group_performance(pred, **common),
            "disparities": disparity_tests(pred, n_perm=n_perm, **common)}


def _embedding_tables(emb: np.ndarray, pred: pd.DataFrame, group_columns: list[str], *, n_boot: int,
                      n_perm: int, seed: int) -> dict[str, pd.DataFrame]:
    """Embedding geometry tables, as audit.analyses.embedding_stats computes them."""
    from audit.stats import embedding_group_stats, linear_probe, mmd_test, projection

    groups_df, dist_df = embedding_group_stats(emb, pred, group_cols=group_columns, n_perm=n_perm, n_boot=n_boot,
                                               seed=seed)
    # the probe's and MMD's own default permutation counts (fewer when the caller asks for fewer)
    probes = [linear_probe(emb, pred, attribute=a, n_perm=min(n_perm, 200), seed=seed) for a in group_columns]
    mmds = [mmd_test(emb, pred, attribute=a, n_perm=min(n_perm, 500), seed=seed) for a in group_columns]
    proj = projection(emb, pred[["row_id", *group_columns, "label", "pred", "correct"]], method="pca")
    return {"embedding_groups": groups_df, "embedding_distances": dist_df,
            "linear_probe": pd.concat(probes, ignore_index=True), "mmd": pd.concat(mmds, ignore_index=True),
            "projection": proj}


def _clip_tables(img: np.ndarray, text: np.ndarray, labels: pd.DataFrame, pred: pd.DataFrame,
                 group_columns: list[str], bg_names: list[str], col_names: list[str], attr_dir: np.ndarray | None,
                 *, n_boot: int, n_perm: int, seed: int, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """Zero-shot, harmful-label, association and retrieval tables, as audit.analyses.clip_analyses computes them."""
    from audit.stats import (
        AssociationTest,
        association_table,
        harmful_label_rates,
        retrieval_skew,
        zeroshot_label_distribution,
    )

    unit = img / np.linalg.norm(img, axis=1, keepdims=True)
    out = {"zeroshot_labels": zeroshot_label_distribution(unit, text, labels, pred, group_cols=group_columns,
                                                          n_boot=n_boot, seed=seed)}
    out["harmful_rates"], out["harmful_disparities"] = harmful_label_rates(
        unit, text, labels, pred, group_cols=group_columns, label_set=LABEL_SET, min_group_size=MIN_GROUP_SIZE,
        n_boot=n_boot, n_perm=n_perm, seed=seed)
    # attribute texts: "pleasant" leans along the water-vs-plain embedding shift when biased, else random
    d = img.shape[1]
    a_txt = rng.normal(size=(8, d)) + (2.0 * attr_dir if attr_dir is not None else 0.0)
    b_txt = rng.normal(size=(8, d)) - (2.0 * attr_dir if attr_dir is not None else 0.0)
    tests = [AssociationTest(test="image-EAT background", A="pleasant", B="unpleasant", X=bg_names[2],
                             Y=bg_names[0], attribute="background"),
             AssociationTest(test="image-EAT colour", A="pleasant", B="unpleasant", X=col_names[1],
                             Y=col_names[0], attribute="colour")]
    out["association"] = association_table(unit, pred, {"pleasant": a_txt, "unpleasant": b_txt}, tests=tests,
                                           n_perm=max(n_perm, 1000), seed=seed)
    # retrieval: a neutral query (random direction) and "criminal" (that label's text embedding)
    shape_q = rng.normal(size=d)
    q = np.stack([shape_q / np.linalg.norm(shape_q), text[labels.index[labels.label == "criminal"][0]]])
    scores = q @ unit.T  # (Q, N) cosine similarities
    ks = tuple(k for k in (10, 50) if k <= len(unit))
    out["retrieval_skew"] = pd.concat(
        [retrieval_skew(scores, pred[a].astype(str).to_numpy(), queries=QUERIES, attribute=a, ks=ks,
                        target="uniform") for a in group_columns], ignore_index=True)
    return out


def _component_tables(img: np.ndarray, text: np.ndarray, labels: pd.DataFrame, pred: pd.DataFrame,
                      bg_names: list[str], biased: bool, *, n_boot: int, seed: int,
                      rng: np.random.Generator) -> tuple[dict[str, pd.DataFrame], dict]:
    """``components`` / ``ablations`` / ``component_maps`` of an association (water vs plain images,
    harmful vs neutral label texts), as audit.components.run computes them, from a synthetic
    decomposition of the image embeddings: 2 blocks x 8 heads + MLPs; the harmful-label axes (where the
    planted lean lives) are written by heads L3.H1, L3.H4, L2.H2 and L2.H6 (a quarter each), everything
    else is spread over all components; rest + contributions = the embeddings."""
    from audit.components.ablate import adjust, association_finding, component_effects, random_head_test
    from audit.components.decompose import component_names
    from audit.components.maps import MAP_COLUMNS
    from audit.components.roles import component_roles, roles_text
    from audit.components.run import COMPONENT_COLUMNS

    n, d = img.shape
    layers = [ly for ly in (2, 3) for _ in range(9)]
    heads = [h for _ in (2, 3) for h in [*range(8), -1]]
    names = component_names(layers, heads)
    carriers = [names.index(c) for c in ("L3.H1", "L3.H4", "L2.H2", "L2.H6")]
    harm_axes = d - len(labels) + np.flatnonzero(labels["kind"].eq("harmful").to_numpy())
    C = np.repeat(img[:, None, :] / (2 * len(names)), len(names), axis=1) + rng.normal(0, 0.02, (n, len(names), d))
    C[:, :, harm_axes] = rng.normal(0, 0.02, (n, len(names), len(harm_axes)))
    for c in carriers:  # the harmful lean: a quarter from each carrier, so only all four together remove it
        C[:, c, harm_axes] += 0.25 * img[:, harm_axes]
    rest = img - C.sum(axis=1)
    groups = pred["background"].astype(str).to_numpy()
    a, b = bg_names[2], bg_names[0]
    ref = "association:harmful vs neutral labels"
    f = association_finding(ref, groups, a, b, text[labels["kind"].eq("harmful").to_numpy()],
                            text[labels["kind"].eq("neutral").to_numpy()])
    eff = component_effects(C, rest, f, names=names, layers=layers, heads=heads, n_boot=max(n_boot // 4, 20), seed=seed)
    roles = component_roles(C, names, [names.index(c) for c in eff["component"].head(5)], text,
                            labels["label"].tolist(), n_texts=3)  # TextSpan over the label texts
    eff["roles"] = [roles_text(roles, c) for c in eff["component"]]
    eff["kind"] = np.where(eff["head"] >= 0, "head", "mlp")
    eff["finding_kind"], eff["metric"] = "association", "effect_size"
    abl = random_head_test(C, rest, f, names=names, heads=heads, ks=(1, 2, 4, 8), n_random=1000, seed=seed)
    label = f"association harmful vs neutral labels by background ({a} vs {b})"
    for col, v in (("finding_kind", "association"), ("metric", "effect_size"), ("attribute", "background"),
                   ("groups", f"{a} vs {b}"), ("label", label)):
        abl[col] = v
    maps = []  # attention of the pooled token: the carriers look at the centre (the object) on the planted ground
    gh, gw = GRID
    yy, xx = np.mgrid[0:gh, 0:gw]
    centre = np.exp(-((yy - gh / 2 + 0.5) ** 2 + (xx - gw / 2 + 0.5) ** 2) / 6.0)
    for c, ly, h in eff.loc[eff["head"] >= 0, ["component", "layer", "head"]].head(5).itertuples(index=False):
        for g in (a, b):
            logits = rng.normal(0, 0.3, size=(gh, gw)) + (2.0 * centre if biased and g == a and names.index(c) in carriers else 0)
            w = np.exp(logits) / np.exp(logits).sum() * 0.8  # 20% on the CLS token
            maps.append(pd.DataFrame({"finding": ref, "component": c, "layer": int(ly),
                                      "head": int(h), "group": g, "n_images": 64, "row": yy.ravel(), "col": xx.ravel(),
                                      "value": w.ravel(), "prefix_share": 0.2}))
    tables = {"components": eff[COMPONENT_COLUMNS], "ablations": adjust(abl),
              "component_maps": pd.concat(maps, ignore_index=True)[MAP_COLUMNS]}
    meta = {"layers": [2, 3], "n_images": int(n), "output": "embedding",
            "findings": [{"ref": ref, "kind": "association", "metric": "effect_size", "label": label}],
            "roles_from": "vocabulary", "vocabulary": ["default"], "concepts_left_out": [], "n_random": 1000,
            "correction": "holm over every finding and k", "notes": []}
    return tables, meta


# --------------------------------------------------------------------------- main entry
def make_run(
    path: str | Path,
    *,
    kind: Literal["classifier", "clip"] = "classifier",
    biased: bool = True,
    n: int = 600,
    seed: int = 0,
    methods: Sequence[str] = ("rollout", "gae", "gradcam", "ig"),
    class_names: Sequence[str] | None = None,
    group_values: dict[str, Sequence[str]] | None = None,
    file_stem: str = "img",
    n_boot: int = 200,
    n_perm: int = 1000,
) -> Run:
    """Write a complete run directory at ``path`` and return it opened.

    Args:
        path: the run directory (created).
        kind: "classifier" or "clip" (adds the CLIP tables).
        biased: plant the background bias (True) or build the unbiased control (False).
        n: number of used images.
        seed: seed of everything random (also the statistics' seed).
        methods: explanation methods whose maps are stored; "rollout" is made to fail
            the sanity check (its maps barely change when blocks are randomised).
        class_names: override the 4 class names (e.g. to test escaping).
        group_values: override the values of "background" (3) and/or "colour" (2).
        file_stem: image file name prefix (e.g. to test escaping of file names).
        n_boot: bootstrap resamples for intervals.
        n_perm: permutations for gap tests.
    """
    from PIL import Image

    from audit.analyses import _faith_summary
    from audit.stats import mass_in_region, region_mass_by_group

    path = Path(path)
    rng = np.random.default_rng(seed)
    names = list(class_names or CLASS_NAMES)
    gv = {"background": list(BACKGROUNDS), "colour": list(COLOURS), **{k: list(v) for k, v in (group_values or {}).items()}}
    bg_names, col_names = gv["background"], gv["colour"]
    n_cls = len(names)
    group_columns = ["background", "colour"]
    stats = dict(n_boot=n_boot, n_perm=n_perm, seed=seed)

    run = Run.create(path, overwrite=True)
    img_dir = path / "images"
    img_dir.mkdir(parents=True, exist_ok=True)

    # the world: labels, groups, a classifier that errs more on water when biased
    labels = rng.integers(0, n_cls, n)
    bgs = rng.integers(0, 3, n)
    cols = (rng.random(n) < np.where(bgs == 2, 0.12, 0.35)).astype(int)  # water×blue is a sparse intersection
    correct = rng.random(n) < np.where(biased & (bgs == 2), 0.70, 0.93)
    preds = np.where(correct, labels, (labels + rng.integers(1, n_cls, n)) % n_cls)
    probs = _probabilities(preds, correct, n_cls, rng)  # (n, C)
    masks = np.empty((n, 64, 64), dtype=bool)
    for i in range(n):
        img, masks[i] = _draw(int(labels[i]), int(bgs[i]), int(cols[i]), rng)
        Image.fromarray(img).save(img_dir / f"{file_stem}_{i:05d}.png")
        Image.fromarray(masks[i].astype(np.uint8) * 255).save(img_dir / f"mask_{i:05d}.png")
    ids = np.arange(n, dtype=np.int64)
    lab_s = np.array(names, dtype=object)[labels]
    pred_s = np.array(names, dtype=object)[preds]
    bg_s = np.array(bg_names, dtype=object)[bgs]
    col_s = np.array(col_names, dtype=object)[cols]
    samples = pd.DataFrame(dict(
        row_id=ids, image_id=[f"{file_stem}_{i:05d}" for i in ids], path=[str(img_dir / f"{file_stem}_{i:05d}.png")
                                                                          for i in ids],
        label=lab_s, background=bg_s, colour=col_s, mask_path=[str(img_dir / f"mask_{i:05d}.png") for i in ids]))
    pred = pd.DataFrame(dict(row_id=ids, label=lab_s, label_idx=labels.astype(np.int64), pred=pred_s,
                             pred_idx=preds.astype(np.int64), score=probs[ids, preds].astype(float),
                             label_score=probs[ids, labels].astype(float), correct=correct.astype(bool),
                             background=bg_s, colour=col_s))
    run.write_table("samples", samples)
    run.write_table("predictions", pred)
    run.write_array_file("probs", {"probs": probs, "row_id": ids})
    for name, df in _performance_tables(pred, group_columns, **stats).items():
        run.write_table(name, df)

    # embeddings: class centroid + (biased) background shift + noise
    cent = rng.normal(size=(n_cls, EMB_DIM)) * 2
    bg_shift = rng.normal(size=(3, EMB_DIM)) * (0.3 if biased else 0.0)
    emb = (cent[labels] + bg_shift[bgs] + rng.normal(size=(n, EMB_DIM))).astype(np.float32)
    if kind == "clip":
        zs_labels = _zeroshot_labels(names)
        emb, text = _clip_embeddings(emb, preds, bgs, biased, len(zs_labels), n_cls, rng)
    run.write_array_file("embeddings", {"image": emb, "row_id": ids})
    for name, df in _embedding_tables(emb, pred, group_columns, **stats).items():
        run.write_table(name, df)

    # explanation maps for a subset: errors and correct cases of every background
    chosen = np.array(sorted({int(r) for b in range(3) for ok in (False, True)
                              for r in np.flatnonzero((bgs == b) & (correct == ok))[:5]}), dtype=np.int64)
    gh, gw = GRID
    obj = masks[chosen].reshape(len(chosen), gh, 64 // gh, gw, 64 // gw).mean(axis=(2, 4))  # (M, gh, gw) object share
    # a biased model looks at the background on its water errors
    off = (~correct[chosen] & (bgs[chosen] == 2) & biased)[:, None, None]
    focus = np.where(off, 1 - obj, obj)
    quality = {"rollout": 0.5, "gae": 0.9, "gradcam": 0.75, "ig": 0.8, "raw_attention": 0.4}
    scale = {"rollout": 1 / 64, "gae": 0.05, "gradcam": 3.0, "ig": 0.02}
    faith_frames, region_frames = [], []
    meta_chosen = pred.set_index("row_id").loc[chosen].reset_index()
    for m in methods:
        q = quality.get(m, 0.6)
        maps = ((q * focus + (1 - q) * rng.random(focus.shape)) * scale.get(m, 1.0)).astype(np.float32)  # (M, gh, gw)
        run.write_maps(m, maps, chosen)
        stored = np.clip(maps.astype(np.float16).astype(np.float32), 0, None)  # what readers get back
        mass = mass_in_region(stored, masks[chosen])  # (M,)
        peak = stored.reshape(len(chosen), -1).argmax(1)
        k = len(chosen)
        faith_frames.append(pd.DataFrame(dict(
            row_id=chosen, method=m,
            deletion_auc=np.clip(0.45 - 0.3 * mass * q + rng.normal(0, 0.03, k), 0, 1),
            insertion_auc=np.clip(0.40 + 0.4 * mass * q + rng.normal(0, 0.03, k), 0, 1),
            random_deletion_auc=np.clip(0.45 + rng.normal(0, 0.03, k), 0, 1),
            random_insertion_auc=np.clip(0.42 + rng.normal(0, 0.03, k), 0, 1),
            pointing_hit=obj.reshape(k, -1)[np.arange(k), peak] > 0, mass_in_mask=mass,
            target_class=pred_s[chosen])))
        region_frames.append(region_mass_by_group(
            stored, masks[chosen], meta_chosen, group_cols=group_columns, method=m, n_boot=n_boot, n_perm=n_perm,
            seed=seed, min_group_size=MIN_GROUP_SIZE))  # the run's one small-group rule, as the pipeline
    faith = pd.concat(faith_frames, ignore_index=True)
    faith["pointing_hit"] = faith["pointing_hit"].astype("boolean")
    run.write_table("faithfulness", faith)
    run.write_table("faithfulness_summary", _faith_summary(faith, seed))
    run.write_table("region_mass", pd.concat(region_frames, ignore_index=True))
    # sanity rows (synthetic): rank correlation with the original map as blocks are randomised top-down
    sanity = []
    for m in methods:
        for step in range(N_BLOCKS + 1):
            blocks = ",".join(str(b) for b in range(N_BLOCKS - step, N_BLOCKS))
            rho = 1.0 if step == 0 else (0.92 - 0.02 * step if m == "rollout" else max(0.05, 0.8 - 0.25 * step))
            lo, hi = (1.0, 1.0) if step == 0 else (max(-1.0, rho - 0.08), min(1.0, rho + 0.05))
            sanity.append(dict(method=m, step=step, randomized_blocks=blocks, spearman=rho, ci_low=lo, ci_high=hi,
                               n=len(chosen), flagged=bool(step > 0 and lo > 0.5)))
    run.write_table("sanity", pd.DataFrame(sanity))
    from audit.explain.verdicts import faithfulness_verdicts

    run.write_table("faithfulness_verdicts", faithfulness_verdicts(faith, pd.DataFrame(sanity), n_boot=n_boot,
                                                                   n_perm=n_perm, seed=seed, perturbation="blur"))

    if kind == "clip":
        shift = bg_shift[2] - bg_shift[0]
        attr_dir = None
        if biased:
            attr_dir = np.zeros(EMB_DIM)
            d_base = EMB_DIM - len(zs_labels)
            attr_dir[:d_base] = shift[:d_base] / np.linalg.norm(shift[:d_base])
        for name, df in _clip_tables(emb, text, zs_labels, pred, group_columns, bg_names, col_names, attr_dir,
                                     rng=rng, **stats).items():
            run.write_table(name, df)
        run.meta["label_set"] = {"name": LABEL_SET, "source": "tests/run_factory.py", "n_labels": len(zs_labels)}
        comp_tables, comp_meta = _component_tables(emb, text, zs_labels, pred, bg_names, biased, rng=rng, **{
            k: v for k, v in stats.items() if k in ("n_boot", "seed")})
        for name, df in comp_tables.items():
            run.write_table(name, df)
        run.meta["components"] = comp_meta

    spec = "zoo:clip-biased" if kind == "clip" else ("zoo:vit-biased" if biased else "zoo:vit-control")
    fp = hashlib.sha256(f"{spec}-{seed}".encode()).hexdigest()[:16]
    manifest = str(path / "manifest.csv")
    samples.to_csv(manifest, index=False)
    run.meta.update({
        "config": {"model": {"spec": spec, "checkpoint": None},
                   "data": {"manifest": manifest, "columns": {"label": "label", "groups": group_columns}},
                   "explain": {"methods": list(methods), "baseline": "blur"},
                   "stats": {"min_group_size": MIN_GROUP_SIZE, "alpha": ALPHA, "seed": seed,
                             # resample counts below the config's floor (fast tests) are not config values
                             **{k: v for k, v in (("n_boot", n_boot), ("n_perm", n_perm)) if v >= 50}},
                   "run": {"output": str(path)}},
        "model": {"spec": spec, "checkpoint": str(path / "weights.safetensors"), "family": "zoo", "kind": kind,
                  "fingerprint": fp, "class_names": names,
                  "preprocess": {"size": [64, 64], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                 "interpolation": "bilinear", "crop_pct": 1.0},
                  "token_layout": {"prefix_kinds": ["cls"], "pooled": 0, "grid": list(GRID)},
                  "n_blocks": N_BLOCKS, "name": spec.split(":", 1)[1]},
        "dataset": {"manifest": manifest, "fingerprint": hashlib.sha256(manifest.encode()).hexdigest()[:16],
                    "n_rows": n + 1, "n_used": n, "label_column": "label", "group_columns": group_columns,
                    "has_masks": True, "root": str(img_dir)},
        "skipped": [{"row": n, "path": str(img_dir / "broken.png"), "reason": "truncated PNG (image file is truncated)"}],
        "device": "cpu", "dtype": "float32", "backend": "local",
        "preprocessing": {"values": {"input_size": [64, 64], "resize": 64, "crop_pct": 1.0, "resize_mode": "shortest",
                                     "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
                          "sources": dict.fromkeys(["input_size", "resize", "crop_pct", "resize_mode", "interpolation",
                                                    "mean", "std"], "zoo"),
                          "warnings": []},
        "faithfulness": {"baseline": "blur", "insertion_start": "blur", "steps": 16, "random_map": "uniform"},
        "timings": {"forward": 1.2, "explain": 3.4, "stats": 0.8},
        "limitations": ["explanation maps were computed for a subset of "
                        f"{len(chosen)} images (errors and correct cases per background)"],
    })
    from audit.slices import slices_for_run
    from audit.slices.stage import write_slice_tables

    opts = {"min_group_size": MIN_GROUP_SIZE, "fdr": 0.05, "n_boot": max(n_boot, 50), "seed": seed}
    sl, members = slices_for_run(run, **opts)  # as the pipeline's slice stage does (no text tower here)
    write_slice_tables(run, sl, members, group_columns=group_columns,
                       meta={"enabled": True, "discover_on": "model", "embedder": None, "named_by": None,
                             "vocabulary": ["default"], "n_concepts": 0, "concepts_left_out": [], "options": opts})
    from audit.findings import findings_for_run

    run.write_table("findings", findings_for_run(run))  # as the pipeline's finish stage does
    run.finish("complete")
    return Run.open(path)


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/run_factory.py OUT [clip] [control]
    import sys

    out = Path(sys.argv[1])
    r = make_run(out, kind="clip" if "clip" in sys.argv else "classifier", biased="control" not in sys.argv)
    print(r, json.dumps(r.headline()))


_SHARED: dict[tuple, Run] = {}


def shared_run(**kwargs: object) -> Run:
    """A run built once per test process for these ``make_run`` arguments (read-only use).

    Tests that only read a run share it instead of rebuilding it (building one takes
    seconds on 2 cores). Write reports elsewhere (``out_dir=tmp_path``), never into it.
    """
    import atexit
    import shutil
    import tempfile

    key = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else
                        tuple(sorted((kk, tuple(vv)) for kk, vv in v.items())) if isinstance(v, dict) else v)
                       for k, v in kwargs.items()))
    if key not in _SHARED:
        d = Path(tempfile.mkdtemp(prefix="va-run-"))
        atexit.register(shutil.rmtree, d, True)
        _SHARED[key] = make_run(d / "run", **kwargs)  # type: ignore[arg-type]
    return _SHARED[key]
