"""The analysis stages of a run (called by :func:`audit.pipeline.run_audit`).

Each stage reads what the forward pass produced (predictions, embeddings), calls
the pure functions in :mod:`audit.stats` and :mod:`audit.explain`, and writes its
tables into the run. Nothing here knows a model family: the adapter does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audit.config import AuditConfig
from audit.runs import Run


@dataclass
class Context:
    config: AuditConfig
    run: Run
    adapter: Any
    classifier: Any
    samples: Any
    predictions: Any
    embeddings: np.ndarray
    row_id: np.ndarray
    group_columns: list[str]
    class_names: list[str]
    device: str
    progress: Callable[[str, int, int], None]
    log: Callable[[str], None]
    notes: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return bool((self.predictions["label_idx"] >= 0).any())


# --------------------------------------------------------------------------- performance


def performance(ctx: Context) -> None:
    """group_performance and disparities tables (needs labels and group columns)."""
    from audit.stats import disparity_tests, group_performance

    st = ctx.config.stats
    if not ctx.group_columns:
        ctx.notes.append("No group columns were given: no group statistics were computed.")
        return
    if not ctx.labelled:
        ctx.notes.append("The manifest has no labels: performance by group could not be measured.")
        return
    preds = ctx.predictions[ctx.predictions["label_idx"] >= 0]
    common = dict(
        group_cols=ctx.group_columns, metrics=tuple(st.metrics), intersections=st.intersections,
        min_group_size=st.min_group_size, n_boot=st.n_boot, alpha=st.alpha, seed=st.seed,
    )
    ctx.progress("stats", 0, 2)
    ctx.run.write_table("group_performance", group_performance(preds, **common))
    ctx.progress("stats", 1, 2)
    ctx.run.write_table("disparities", disparity_tests(preds, n_perm=st.n_perm, comparisons=tuple(st.comparisons),
                                                       **common))
    ctx.progress("stats", 2, 2)
    ctx.run.save_meta()


def prediction_distribution(ctx: Context) -> None:
    """prediction_distribution and prediction_disparities tables: the share of each predicted class by
    group and tests of its dependence on the group (every run with group columns; labels not needed)."""
    from audit.stats import prediction_distribution as distribution_by_group

    if not ctx.group_columns:
        return
    st = ctx.config.stats
    dist, disp = distribution_by_group(
        ctx.predictions, group_cols=ctx.group_columns, classes=ctx.class_names, min_group_size=st.min_group_size,
        n_boot=st.n_boot, n_perm=st.n_perm, alpha=st.alpha, seed=st.seed,
    )
    ctx.run.write_table("prediction_distribution", dist)
    ctx.run.write_table("prediction_disparities", disp)
    if not ctx.labelled:
        ctx.notes.append("Without labels, what the model predicts by group is reported instead: the share of each "
                         "predicted class per group (prediction_distribution) and its gap tests (prediction_disparities).")
    ctx.run.save_meta()


def embedding_stats(ctx: Context) -> None:
    """Embedding geometry by group: dispersion, centroid distances, probe, MMD, projection."""
    import pandas as pd

    from audit.stats import embedding_group_stats, linear_probe, mmd_test, projection

    st = ctx.config.stats
    emb = ctx.embeddings
    meta = ctx.predictions
    if ctx.group_columns:
        groups_df, dist_df = embedding_group_stats(
            emb, meta, group_cols=ctx.group_columns, n_perm=st.n_perm, n_boot=st.n_boot, seed=st.seed,
            min_group_size=st.min_group_size,
        )
        ctx.run.write_table("embedding_groups", groups_df)
        ctx.run.write_table("embedding_distances", dist_df)
        probes, mmds = [], []
        for attr in ctx.group_columns:
            if int((meta[attr].value_counts() >= st.min_group_size).sum()) < 2:
                ctx.notes.append(f"Attribute {attr!r} has fewer than two groups of at least {st.min_group_size} "
                                 "images: no probe or MMD test for it.")
                continue
            probes.append(linear_probe(emb, meta, attribute=attr, n_perm=min(st.n_perm, 1000), seed=st.seed,
                                       min_group_size=st.min_group_size))
            mmds.append(mmd_test(emb, meta, attribute=attr, n_perm=min(st.n_perm, 500), seed=st.seed,
                                 min_group_size=st.min_group_size))
        if probes:
            ctx.run.write_table("linear_probe", pd.concat(probes, ignore_index=True))
            ctx.run.write_table("mmd", pd.concat(mmds, ignore_index=True))
    proj = projection(emb, meta[["row_id", *ctx.group_columns, "label", "pred", "correct"]], method="pca")
    ctx.run.write_table("projection", proj)
    ctx.run.save_meta()


# --------------------------------------------------------------------------- explanations


def select_for_explanation(predictions: Any, group_columns: list[str], k: int, seed: int) -> np.ndarray:
    """Row ids to explain: round-robin over (first group attribute, label) strata.

    The choice depends only on the data and the seed, never on the model's predictions, so
    two runs on the same data explain the same images and can be compared image by image
    (e.g. a biased model against its control). Deterministic under ``seed``.
    """
    if k <= 0 or len(predictions) == 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    keys = []
    if group_columns:
        keys.append(predictions[group_columns[0]].astype(str))
    keys.append(predictions["label"].astype("string").fillna("(unlabelled)"))
    strata = predictions.groupby(keys, sort=True, dropna=False).indices
    queues = []
    for _, idx in sorted(strata.items(), key=lambda kv: str(kv[0])):
        idx = np.sort(np.asarray(idx))
        rng.shuffle(idx)
        queues.append(list(idx))
    chosen: list[int] = []
    while len(chosen) < min(k, len(predictions)):
        for q in queues:
            if q and len(chosen) < k:
                chosen.append(q.pop())
    return np.sort(predictions["row_id"].to_numpy()[np.array(chosen, dtype=np.int64)])


def _load_batch(ctx: Context, rows: np.ndarray):
    """Images (B, 3, H, W) normalised and object masks (B, H, W) bool (or None) for ``rows``.

    Masks go through the same geometric steps as the images (resize, crop).
    """
    import torch

    from audit.data import ImageDataset

    df = ctx.samples.set_index("row_id").loc[rows].reset_index()
    ds = ImageDataset(df, ctx.adapter.preprocess.transform(), skip_bad=False)
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([it["image"] for it in items])  # (B, 3, H, W)
    masks = None
    if all(it["mask"].numel() > 0 for it in items):
        masks = torch.stack([it["mask"].bool() for it in items])  # (B, H, W)
    return x.to(ctx.device), masks


def explain_methods(config: AuditConfig, adapter: Any) -> tuple[list[str], list[str]]:
    """``(methods to run, refusals of the default methods left out)`` for ``adapter``.

    A method listed explicitly in ``explain.methods`` that does not apply (an attention method on
    Swin / ConvNeXt) is a UsageError naming the key; the default list keeps only what applies.
    """
    from audit.errors import UsageError
    from audit.explain.api import refusal

    ex = config.explain
    refused = {m: refusal(m, adapter) for m in ex.methods}
    bad = [r for r in refused.values() if r]
    if bad and "methods" in ex.model_fields_set:
        raise UsageError(f"explain.methods: {bad[0]}; remove it from explain.methods")
    return [m for m in ex.methods if not refused[m]], bad


def explanations(ctx: Context) -> None:
    """Maps for a stratified subset, their faithfulness, the sanity check and region mass by group."""
    import pandas as pd
    import torch

    from audit.explain import ClassTarget, explain
    from audit.explain.faithfulness import faithfulness_table
    from audit.explain.quality import map_problems
    from audit.explain.sanity import model_randomization
    from audit.explain.verdicts import chance_levels, faithfulness_verdicts

    ex = ctx.config.explain
    methods, left_out = explain_methods(ctx.config, ctx.classifier)
    if left_out:
        kept = set(methods)
        gone = [m for m in ex.methods if m not in kept]
        why = getattr(ctx.classifier, "attention_refusal", "") or left_out[0]
        ctx.notes.append(f"Explanation methods {', '.join(gone)} of the default set were left out: they do not "
                         f"apply to this model. {why}")
    if not methods or ex.max_images == 0:
        return
    rows = select_for_explanation(ctx.predictions, ctx.group_columns, ex.max_images, ctx.config.stats.seed)
    if len(rows) == 0:
        return
    x_all, masks_all = _load_batch(ctx, rows)
    pred_by_row = ctx.predictions.set_index("row_id")["pred_idx"]
    pred_idx = [int(pred_by_row.loc[r]) for r in rows]  # explain the predicted class
    # pointing-game tolerance: 15 px at 224 px (Zhang et al. 2018) scaled to the input size, and at
    # least half a patch: a patch-grid map locates its maximum only to within one patch
    lay = ctx.adapter.token_layout(tuple(x_all.shape[-2:]))
    half_patch = 0.5 * min(x_all.shape[-2] / lay.grid[0], x_all.shape[-1] / lay.grid[1])
    tolerance = max(1, round(15 / 224 * min(x_all.shape[-2:])), round(half_patch))
    bs = max(1, min(ctx.config.run.batch_size, 16))
    faith_frames = []
    maps_by_method: dict[str, torch.Tensor] = {}
    valid_by_method: dict[str, np.ndarray] = {}
    quality_rows: list[dict[str, Any]] = []
    total = len(methods) * len(rows)
    done = 0
    cache_root = ctx.config.run.cache_dir
    hashes: list[str] | None = None
    if cache_root is not None:  # maps are reused across runs: keyed by image content and explained class
        from audit.cache import content_hashes

        hashes = content_hashes(ctx.samples.set_index("row_id").loc[rows, "path"].astype(str).tolist())
    for m in methods:
        params = ex.params.get(m, {})

        def compute(idx: np.ndarray, m: str = m, params: dict = params) -> dict[str, np.ndarray]:
            nonlocal done
            parts = []
            for s in range(0, len(idx), bs):
                sel = idx[s : s + bs]
                e = explain(ctx.classifier, x_all[sel], method=m, target=ClassTarget(index=[pred_idx[i] for i in sel]),
                            seed=ctx.config.stats.seed, **params)
                parts.append(e.grid_maps.detach().float().cpu().numpy())
                done += len(sel)
                ctx.progress("explain", done, total)
            return {"maps": np.concatenate(parts)}

        before = done
        maps = torch.from_numpy(_maps_through_cache(ctx, m, params, rows, pred_idx, hashes, tuple(x_all.shape[-2:]),
                                                    compute))  # (M, gh, gw)
        done = before + len(rows)  # cached rows count as done
        ctx.progress("explain", done, total)
        if ex.faithfulness:
            for s in range(0, len(rows), bs):
                tb = ClassTarget(index=pred_idx[s : s + bs])
                faith_frames.append(
                    faithfulness_table(
                        ctx.classifier, x_all[s : s + bs], maps[s : s + bs], method=m, target=tb,
                        row_ids=rows[s : s + bs], masks=None if masks_all is None else masks_all[s : s + bs],
                        steps=ex.faithfulness_steps, baseline=ex.baseline, seed=ctx.config.stats.seed + s,
                        tolerance_px=tolerance,
                    )
                )
        problems = map_problems(maps)
        bad = [i for i, p in enumerate(problems) if p]
        if bad:
            quality_rows += [{"method": m, "row_id": int(rows[i]), "problem": problems[i]} for i in bad]
            kinds = sorted({problems[i].split(":")[0] for i in bad})
            ctx.notes.append(
                f"Method {m}: {len(bad)} of {len(rows)} maps are not usable ({'; '.join(kinds)}), row ids "
                f"{[int(rows[i]) for i in bad]}; they are listed in the "
                "map_quality table, left out of faithfulness and region statistics, and never drawn."
            )
        valid_by_method[m] = np.asarray([not p for p in problems])
        maps_by_method[m] = maps
        ctx.run.write_maps(m, maps, rows)
    ctx.run.write_table("map_quality", pd.DataFrame(quality_rows, columns=["method", "row_id", "problem"]))
    from audit.registry import METHODS

    art_summary: dict[str, Any] = {}
    if any(METHODS.meta(m).get("needs_attention") for m in methods):  # high-norm artefact tokens (Darcet et al.)
        from audit.explain.artifacts import artifact_tables

        tok, per, summ = artifact_tables(ctx.classifier, x_all, rows, batch_size=bs)
        art_summary = summ
        if summ.get("applicable"):
            ctx.run.write_table("artifact_tokens", tok)
            ctx.run.write_table("artifact_images", per)
            ctx.run.meta["artifacts"] = summ
    ctx.run.save_meta()
    if faith_frames:
        faith = pd.concat(faith_frames, ignore_index=True)
        faith["pointing_hit"] = faith["pointing_hit"].astype("boolean")
        faith["mass_in_mask"] = pd.to_numeric(faith["mass_in_mask"], errors="coerce")
        if masks_all is not None:  # per-image chance of the mask scores, for faithfulness_verdicts
            chance = chance_levels(masks_all, lay.grid, tolerance_px=tolerance)
            chance.insert(0, "row_id", np.asarray(rows, dtype=np.int64))
            faith = faith.merge(chance, on="row_id", how="left")
        ctx.run.write_table("faithfulness", faith)
        ctx.run.write_table("faithfulness_summary", _faith_summary(faith, ctx.config.stats.seed))
    sanity = None
    if ex.sanity:
        n = min(ex.sanity_images, len(rows))
        frames = [
            model_randomization(
                ctx.classifier, x_all[:n], method=m, target=ClassTarget(index=pred_idx[:n]),
                params=ex.params.get(m, {}), seed=ctx.config.stats.seed,
            )
            for m in methods
        ]
        sanity = pd.concat(frames, ignore_index=True)
        ctx.run.write_table("sanity", sanity)
    if faith_frames:  # every map is shown with its method's verdict against the random map
        st = ctx.config.stats
        verdicts = faithfulness_verdicts(
            faith, sanity, alpha=st.alpha, n_boot=st.n_boot, n_perm=st.n_perm, seed=st.seed, perturbation=ex.baseline)
        from audit.explain.artifacts import verdict_caveat

        if verdict_caveat(art_summary):  # attention methods' verdicts carry the artefact caveat
            att = verdicts["method"].map(lambda m: bool(METHODS.meta(m).get("needs_attention")))
            verdicts.loc[att, "reason"] = verdicts.loc[att, "reason"].astype(str) + "; " + verdict_caveat(art_summary)
        ctx.run.write_table("faithfulness_verdicts", verdicts)
        ctx.run.meta["faithfulness"] = {"baseline": ex.baseline, "insertion_start": "blur",
                                        "steps": ex.faithfulness_steps, "random_map": "uniform, seeded per batch"}
    if masks_all is not None and ctx.group_columns:
        from audit.stats import region_mass_by_group

        groups = ctx.predictions.set_index("row_id").loc[rows].reset_index()
        frames = []
        for m, maps in maps_by_method.items():
            ok = valid_by_method[m]  # unusable maps (NaN/Inf, constant) are not averaged in
            if not ok.any():
                continue
            up = torch.nn.functional.interpolate(maps[ok][:, None], size=masks_all.shape[-2:], mode="bilinear",
                                                 align_corners=False)[:, 0]
            frames.append(
                region_mass_by_group(
                    up.clamp_min(0).numpy(), masks_all[ok].numpy().astype(bool), groups[ok].reset_index(drop=True),
                    group_cols=ctx.group_columns,
                    method=m, n_boot=ctx.config.stats.n_boot, n_perm=ctx.config.stats.n_perm,
                    seed=ctx.config.stats.seed, min_group_size=ctx.config.stats.min_group_size,
                )
            )
        if frames:
            ctx.run.write_table("region_mass", pd.concat(frames, ignore_index=True))
    ctx.run.save_meta()


def _maps_through_cache(ctx: Context, method: str, params: dict[str, Any], rows: np.ndarray, pred_idx: list[int],
                        hashes: list[str] | None, input_size: tuple[int, int],
                        compute: Callable[[np.ndarray], dict[str, np.ndarray]]) -> np.ndarray:
    """Maps ``(M, gh, gw)`` float32 for ``rows``: from ``run.cache_dir`` where an earlier run stored
    them (same model, preprocessing, method, parameters, seed, image bytes and explained class),
    the rest computed by ``compute(positions)`` and stored. Without a cache everything is computed.

    Random methods (GradientShap, SmoothGrad) are seeded per call, so a cached map can differ from
    a recomputed one by the batch it was computed in; deterministic methods give identical maps.
    """
    import sqlite3

    from audit.cache import cached_rows, map_cache, map_keys

    if hashes is None:
        return compute(np.arange(len(rows)))["maps"]
    try:
        cache = map_cache(ctx.config.run.cache_dir, adapter=ctx.adapter, classifier=ctx.classifier, method=method,
                          params=params, seed=ctx.config.stats.seed, device=ctx.device,
                          precision=ctx.config.run.precision, input_size=input_size)
        computed: list[int] = []

        def counted(idx: np.ndarray) -> dict[str, np.ndarray]:
            computed.append(len(idx))
            return compute(idx)

        out = cached_rows(cache, map_keys(hashes, pred_idx), counted)["maps"]
    except (OSError, sqlite3.Error) as exc:  # an unusable cache never stops the run
        ctx.log(f"map cache for {method} unusable ({exc}); computing without it")
        return compute(np.arange(len(rows)))["maps"]
    found = len(rows) - sum(computed)
    if found:
        ctx.log(f"{method}: {found} of {len(rows)} maps reused from the cache at {cache.path}")
    return out


def _faith_summary(faith: Any, seed: int):
    """Mean of each faithfulness score per method with a bootstrap 95% interval."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    out = []
    for m, g in faith.groupby("method", sort=False):
        for metric in ["deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc", "pointing_hit", "mass_in_mask"]:
            v = pd.to_numeric(g[metric], errors="coerce").to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            if len(v) == 0:
                continue
            boots = rng.choice(v, size=(1000, len(v)), replace=True).mean(axis=1)
            out.append({
                "method": m, "metric": metric, "value": float(v.mean()),
                "ci_low": float(np.quantile(boots, 0.025)), "ci_high": float(np.quantile(boots, 0.975)), "n": len(v),
            })
    return pd.DataFrame(out, columns=["method", "metric", "value", "ci_low", "ci_high", "n"])


# --------------------------------------------------------------------------- CLIP


def _text_embeddings(adapter: Any, texts: list[str]) -> np.ndarray:
    from audit.models.zeroshot import text_embeddings

    return text_embeddings(adapter, texts)


def _normed(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)


def check_clip_texts(config: AuditConfig, adapter: Any, *, group_columns: Any = None) -> None:
    """Refuse the run's CLIP texts before anything is computed when the tokenizer cannot tell them apart.

    Checks what :func:`clip_analyses` will embed: the label set (when there are group columns), the A
    and B texts of each association test, and the retrieval queries (when there are group columns).
    The zero-shot class prompts are checked where they are made (:class:`~audit.models.ZeroShotHead`).
    Called by :func:`audit.pipeline.run_audit` right after the model is loaded, before the forward pass.

    Args:
        config: the run's config.
        adapter: the loaded model (nothing is checked unless it is a CLIP).
        group_columns: the manifest's group columns (default: ``config.data.columns.groups``).

    Raises:
        ConfigError: naming the field and the texts, e.g. "clip.label_set fairface_harmful: 'a photo of a
            thief' and 'a photo of a criminal' tokenize identically (...) for zoo:clip-biased: the
            tokenizer does not know 'thief', 'criminal'; remove or reword them".
    """
    from audit.errors import ConfigError
    from audit.stats.prompts import check_prompts
    from audit.stats.sets import LabelSet, load_set

    if getattr(adapter, "kind", None) != "clip":
        return
    cc = config.clip
    groups = list(config.data.columns.groups if group_columns is None else group_columns)
    if cc.label_set and groups:
        label_set = load_set(cc.label_set)
        if not isinstance(label_set, LabelSet):
            raise ConfigError(f"clip.label_set {cc.label_set!r} is a {label_set.type} set, not a label set (type: labels)")
        check_prompts(adapter, [e.text for e in label_set.labels], where=f"clip.label_set {label_set.name}")
    for t in cc.association:
        a_texts, b_texts = t.texts()
        check_prompts(adapter, [*a_texts, *b_texts], where=f"clip.association {t.name!r} (A and B texts)")
    if cc.queries and groups:
        check_prompts(adapter, list(cc.queries), where="clip.queries")


def clip_analyses(ctx: Context) -> None:
    """Zero-shot harms, association tests (image-EAT) and retrieval skew.

    The texts are checked first (:func:`check_clip_texts`): texts the tokenizer cannot tell apart
    are refused before any of them is embedded.
    """
    import pandas as pd

    from audit.stats import (
        AssociationTest,
        association_table,
        harmful_label_rates,
        retrieval_skew,
        zeroshot_label_distribution,
    )
    from audit.stats.sets import load_set

    check_clip_texts(ctx.config, ctx.adapter, group_columns=ctx.group_columns)
    cc = ctx.config.clip
    st = ctx.config.stats
    img = _normed(ctx.embeddings)
    meta = ctx.predictions
    if cc.label_set and ctx.group_columns:
        label_set = load_set(cc.label_set)
        labels = label_set.to_frame()
        text = _text_embeddings(ctx.adapter, labels["label"].tolist())
        ctx.run.write_table(
            "zeroshot_labels",
            zeroshot_label_distribution(img, text, labels, meta, group_cols=ctx.group_columns, n_boot=st.n_boot, seed=st.seed),
        )
        rates, disp = harmful_label_rates(
            img, text, labels, meta, group_cols=ctx.group_columns, label_set=label_set.name,
            min_group_size=st.min_group_size, n_boot=st.n_boot, n_perm=st.n_perm, seed=st.seed,
        )
        ctx.run.write_table("harmful_rates", rates)
        ctx.run.write_table("harmful_disparities", disp)
        ctx.run.meta["label_set"] = {"name": label_set.name, "source": label_set.source, "n_labels": len(labels)}
    if cc.association:
        text_sets: dict[str, np.ndarray] = {}
        tests = []
        for t in cc.association:
            a_texts, b_texts = t.texts()
            text_sets[f"{t.name} A"] = _text_embeddings(ctx.adapter, a_texts)
            text_sets[f"{t.name} B"] = _text_embeddings(ctx.adapter, b_texts)
            tests.append(AssociationTest(test=t.name, A=f"{t.name} A", B=f"{t.name} B", X=t.x_group, Y=t.y_group,
                                         attribute=t.attribute))
        ctx.run.write_table(
            "association", association_table(img, meta, text_sets, tests=tests, n_perm=max(st.n_perm, 1000), seed=st.seed)
        )
    if cc.queries and ctx.group_columns:
        q = _text_embeddings(ctx.adapter, list(cc.queries))
        scores = q @ img.T  # (Q, N) cosine similarities
        ks = tuple(k for k in cc.ks if k <= len(img)) or (len(img),)
        frames = [
            retrieval_skew(scores, meta[attr].astype(str).to_numpy(), queries=list(cc.queries), attribute=attr,
                           ks=ks, target=cc.skew_target)
            for attr in ctx.group_columns
        ]
        ctx.run.write_table("retrieval_skew", pd.concat(frames, ignore_index=True))
    ctx.run.save_meta()


# --------------------------------------------------------------------------- findings


def findings(ctx: Context) -> Any:
    """Compute the findings ledger once from every analysis table and write it (table ``findings``)."""
    from audit.findings import findings_for_run

    ledger = findings_for_run(ctx.run)
    ctx.run.write_table("findings", ledger)
    return ledger


def limitations(ctx: Context) -> list[str]:
    run = ctx.run
    out = list(ctx.notes)
    skipped = run.meta.get("skipped", [])
    if skipped:
        out.append(f"{len(skipped)} image(s) were skipped: unreadable, or NaN/Inf model outputs (each listed with its reason in run.json).")
    if run.has_table("group_performance"):
        gp = run.table("group_performance")
        small = gp[gp["small"]]
        if len(small):
            groups = sorted({f"{a}={g}" for a, g in zip(small["attribute"], small["group"])})
            out.append(
                f"{len(groups)} group(s) fall below the minimum size ({ctx.config.stats.min_group_size}) for at least "
                f"one metric and are left out of those comparisons: {', '.join(groups)}"
            )
    from audit.explain.artifacts import summary_caveat

    if summary_caveat(run.meta.get("artifacts", {})):
        out.append(summary_caveat(run.meta["artifacts"]))
    if run.has_table("sanity"):
        s = run.table("sanity")
        flagged = sorted(set(s.loc[s["flagged"], "method"]))
        if flagged:
            out.append(
                "Methods whose maps barely change when the model's weights are randomised (sanity check failed): "
                + ", ".join(flagged) + ". Their maps say little about what the model learned."
            )
    return out
