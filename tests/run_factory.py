"""Build complete, realistic run directories for tests (no model needed).

``make_run`` writes every file ``docs/RUN_FORMAT.md`` documents: ``run.json`` with all
keys, ``samples``/``predictions`` with real 64x64 PNG images (simple shapes on three
backgrounds, two shape colours), raw patch-grid maps per method, image embeddings,
class probabilities and every table, computed from the synthetic predictions (group
rates with bootstrap intervals, permutation tests with Holm/BH corrections, WEAT,
MMD², linear probes, retrieval skew, ...). The statistics here are written with numpy
so that the factory does not depend on ``audit.stats``; they follow the definitions in
REFERENCES.md, with small resample counts to stay fast.

The planted bias (``biased=True``): the classifier is wrong much more often on the
"water" background (accuracy ~0.70 vs ~0.93), its embeddings are shifted by background,
and for CLIP runs the harmful-label rate is higher on "water". ``biased=False`` is the
control: the same world with no group effect.

Example:
    >>> run = make_run(tmp_path / "run", kind="clip", biased=True)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import itertools
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
SEP = "×"


# --------------------------------------------------------------------------- helpers
def _holm(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adj[i] = min(1.0, running)
    return adj


def _bh(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p)[::-1]
    adj = np.empty(m)
    running = 1.0
    for rank, i in enumerate(order):
        running = min(running, p[i] * m / (m - rank))
        adj[i] = running
    return adj


def _pct(samples: np.ndarray) -> tuple[float, float]:
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(s, [2.5, 97.5])
    return float(lo), float(hi)


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


def _suff(y: np.ndarray, yhat: np.ndarray, conf: np.ndarray, gidx: np.ndarray, n_groups: int,
          n_cls: int) -> tuple[np.ndarray, np.ndarray]:
    """Sufficient statistics per group: confusion counts and calibration-bin sums.

    ``gidx`` is ``(n,)`` or a batch ``(P, n)`` of group indices (permutations / resamples;
    -1 drops a row). Returns ``cm (..., G, C, C)`` [true, pred] and ``eb (..., G, 10, 3)``
    (count, n correct, sum of confidence per bin).
    """
    g = np.atleast_2d(gidx)
    p = g.shape[0]
    off = np.arange(p)[:, None] * n_groups
    valid = g >= 0
    gg = (g + off)[valid]
    yy = np.broadcast_to(y, g.shape)[valid]
    hh = np.broadcast_to(yhat, g.shape)[valid]
    cc = np.broadcast_to(conf, g.shape)[valid]
    cm = np.bincount(gg * n_cls * n_cls + yy * n_cls + hh, minlength=p * n_groups * n_cls * n_cls)
    bins = np.minimum((cc * 10).astype(int), 9)
    k2 = gg * 10 + bins
    size = p * n_groups * 10
    eb = np.stack([np.bincount(k2, minlength=size), np.bincount(k2, weights=(yy == hh).astype(float), minlength=size),
                   np.bincount(k2, weights=cc, minlength=size)], -1)
    cm = cm.reshape(p, n_groups, n_cls, n_cls).astype(float)
    eb = eb.reshape(p, n_groups, 10, 3)
    if np.ndim(gidx) == 1:
        return cm[0], eb[0]
    return cm, eb


def _metrics(cm: np.ndarray, eb: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    """group_performance metrics from sufficient statistics, keyed by (metric, cls); arrays of shape (...,)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        n = cm.sum((-1, -2))
        tp = np.diagonal(cm, axis1=-2, axis2=-1)
        pos = cm.sum(-1)
        ppos = cm.sum(-2)
        neg = n[..., None] - pos
        fp = ppos - tp
        tpr = tp / pos
        out: dict[tuple[str, str], np.ndarray] = {("accuracy", "__all__"): tp.sum(-1) / n}
        out[("balanced_accuracy", "__macro__")] = np.nanmean(np.where(pos > 0, tpr, np.nan), -1) if tpr.size else n
        out[("ece", "__all__")] = np.abs(eb[..., 1] - eb[..., 2]).sum(-1) / n
        for c, name in enumerate(CLASS_NAMES_CURRENT):
            out[("tpr", name)] = tpr[..., c]
            out[("fnr", name)] = 1 - tpr[..., c]
            out[("fpr", name)] = fp[..., c] / neg[..., c]
            out[("precision", name)] = tp[..., c] / ppos[..., c]
            out[("selection_rate", name)] = ppos[..., c] / n
    return out


def _denominators(cm: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    n = cm.sum((-1, -2))
    pos, ppos = cm.sum(-1), cm.sum(-2)
    out = {}
    for key in _metrics(cm, np.zeros(cm.shape[:-2] + (10, 3))):
        metric, cls = key
        if cls in ("__all__", "__macro__"):
            out[key] = n
        else:
            c = CLASS_NAMES_CURRENT.index(cls)
            out[key] = {"tpr": pos[..., c], "fnr": pos[..., c], "fpr": n - pos[..., c],
                        "precision": ppos[..., c]}.get(metric, n)
    return out


CLASS_NAMES_CURRENT: list[str] = list(CLASS_NAMES)


def _group_keys(df: pd.DataFrame, group_columns: list[str]) -> dict[str, np.ndarray]:
    """attribute -> group label per row (single attributes and their pairwise intersection)."""
    keys = {g: df[g].astype(str).to_numpy() for g in group_columns}
    for a, b in itertools.combinations(group_columns, 2):
        keys[f"{a}{SEP}{b}"] = np.array([f"{x}{SEP}{y}" for x, y in zip(keys[a], keys[b])], dtype=object)
    return keys


def _bootstrap_index(gcode: np.ndarray, n_groups: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices ``(n_boot, n)`` of a within-group bootstrap: each group's rows resampled with replacement."""
    out = np.empty((n_boot, gcode.size), dtype=np.int64)
    for g in range(n_groups):
        ix = np.nonzero(gcode == g)[0]
        out[:, ix] = ix[rng.integers(0, ix.size, size=(n_boot, ix.size))]
    return out


# --------------------------------------------------------------------------- tables
def _group_performance(pred: pd.DataFrame, keys: dict[str, np.ndarray], n_cls: int,
                       rng: np.random.Generator, n_boot: int) -> pd.DataFrame:
    y, yhat, conf = pred["label_idx"].to_numpy(), pred["pred_idx"].to_numpy(), pred["score"].to_numpy()
    rows = []
    for attr, lab in keys.items():
        levels = sorted(set(lab))
        code = np.array([levels.index(v) for v in lab])
        cm, eb = _suff(y, yhat, conf, code, len(levels), n_cls)
        point, den = _metrics(cm, eb), _denominators(cm)
        bix = _bootstrap_index(code, len(levels), n_boot, rng)  # (B, n) row indices
        bcm, beb = _suff(y[bix], yhat[bix], conf[bix], code[bix], len(levels), n_cls)
        boot = _metrics(bcm, beb)
        for gi, g in enumerate(levels):
            n_rows = int(np.sum(code == gi))
            for key, value in point.items():
                metric, cls = key
                lo, hi = _pct(boot[key][:, gi])
                n = int(den[key][gi])
                small = n < MIN_GROUP_SIZE
                rows.append(dict(
                    attribute=attr, group=str(g), metric=metric, cls=cls, value=float(value[gi]), ci_low=lo,
                    ci_high=hi, n=n, n_rows=n_rows, small=bool(small),
                    note=f"n={n} < min_group_size={MIN_GROUP_SIZE}; excluded from comparisons" if small else "",
                ))
    return pd.DataFrame(rows)


def _disparities(pred: pd.DataFrame, keys: dict[str, np.ndarray], perf: pd.DataFrame, n_cls: int,
                 rng: np.random.Generator, n_perm: int, n_boot: int) -> pd.DataFrame:
    y, yhat, conf = pred["label_idx"].to_numpy(), pred["pred_idx"].to_numpy(), pred["score"].to_numpy()
    tests = [("accuracy", "__all__"), ("balanced_accuracy", "__macro__"), ("ece", "__all__")]
    tests += [("tpr", c) for c in CLASS_NAMES_CURRENT] + [("fpr", c) for c in CLASS_NAMES_CURRENT]
    rows = []
    for attr, lab in keys.items():
        levels = sorted(set(lab))
        code = np.array([levels.index(v) for v in lab])
        for metric, cls in tests:
            sub = perf[(perf.attribute == attr) & (perf.metric == metric) & (perf.cls == cls)]
            groups = list(sub[~sub.small].group)
            excluded = int(sub.small.sum())
            base = dict(attribute=attr, metric=metric, cls=cls, k=len(groups), n_excluded=excluded,
                        test=f"permutation max-min gap, {n_perm} perms")
            if len(groups) < 2:
                rows.append({**base, "max_group": "", "min_group": "", "max_value": np.nan, "min_value": np.nan,
                             "difference": np.nan, "diff_ci_low": np.nan, "diff_ci_high": np.nan, "ratio": np.nan,
                             "ratio_ci_low": np.nan, "ratio_ci_high": np.nan, "p_value": np.nan,
                             "note": f"fewer than 2 groups with n >= {MIN_GROUP_SIZE}; not tested"})
                continue
            # only the kept groups take part; their rows' group labels are permuted among them
            kcode = np.array([groups.index(levels[c]) if levels[c] in groups else -1 for c in code])
            keep = kcode >= 0
            k = len(groups)
            cm, eb = _suff(y, yhat, conf, kcode, k, n_cls)
            vals = _metrics(cm, eb)[(metric, cls)]
            obs = float(np.nanmax(vals) - np.nanmin(vals))
            perm = np.tile(kcode, (n_perm, 1))
            sub_codes = kcode[keep]
            perm[:, keep] = np.stack([rng.permutation(sub_codes) for _ in range(n_perm)])
            pcm, peb = _suff(y, yhat, conf, perm, k, n_cls)
            pv = _metrics(pcm, peb)[(metric, cls)]
            null = np.nanmax(pv, -1) - np.nanmin(pv, -1)
            p = (1 + np.sum(null >= obs - 1e-12)) / (n_perm + 1)
            bix = _bootstrap_index(np.where(keep, kcode, k), k + 1, n_boot, rng)
            bcm, beb = _suff(y[bix], yhat[bix], conf[bix], kcode[bix], k, n_cls)
            bv = _metrics(bcm, beb)[(metric, cls)]  # (n_boot, k)
            bd = np.nanmax(bv, 1) - np.nanmin(bv, 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                br = np.nanmin(bv, 1) / np.nanmax(bv, 1)
            imax, imin = int(np.nanargmax(vals)), int(np.nanargmin(vals))
            dlo, dhi = _pct(bd)
            rlo, rhi = _pct(br)
            rows.append({**base, "max_group": groups[imax], "min_group": groups[imin],
                         "max_value": float(vals[imax]), "min_value": float(vals[imin]), "difference": obs,
                         "diff_ci_low": dlo, "diff_ci_high": dhi,
                         "ratio": float(vals[imin] / vals[imax]) if vals[imax] > 0 else np.nan,
                         "ratio_ci_low": rlo, "ratio_ci_high": rhi, "p_value": float(p),
                         "note": f"{excluded} group(s) below min_group_size excluded" if excluded else ""})
    df = pd.DataFrame(rows)
    ok = df.p_value.notna()
    df["p_holm"] = np.nan
    df["p_bh"] = np.nan
    df.loc[ok, "p_holm"] = _holm(df.loc[ok, "p_value"].to_numpy())
    df.loc[ok, "p_bh"] = _bh(df.loc[ok, "p_value"].to_numpy())
    df["significant"] = (df.p_holm < ALPHA).fillna(False).astype(bool)
    cols = ["attribute", "metric", "cls", "k", "n_excluded", "max_group", "min_group", "max_value", "min_value",
            "difference", "diff_ci_low", "diff_ci_high", "ratio", "ratio_ci_low", "ratio_ci_high", "p_value",
            "p_holm", "p_bh", "significant", "test", "note"]
    return df[cols]


def _rbf_mmd2(K: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    kxx = K[np.ix_(a, a)]
    kyy = K[np.ix_(b, b)]
    kxy = K[np.ix_(a, b)]
    m, n = a.size, b.size
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def _bacc(y: np.ndarray, yhat: np.ndarray, k: int) -> float:
    rec = [np.mean(yhat[y == c] == c) for c in range(k) if np.any(y == c)]
    return float(np.mean(rec))


def _cv_lda_proba(x: np.ndarray, y: np.ndarray, k: int, rng: np.random.Generator, folds: int = 3) -> np.ndarray:
    """Out-of-fold class probabilities of a shared-covariance Gaussian (LDA) probe."""
    out = np.zeros((y.size, k))
    fold = rng.permutation(y.size) % folds
    for f in range(folds):
        tr, te = fold != f, fold == f
        mu = np.stack([x[tr][y[tr] == c].mean(0) for c in range(k)])  # (k, D)
        xc = x[tr] - mu[y[tr]]
        cov = xc.T @ xc / max(1, tr.sum() - k) + 1e-3 * np.eye(x.shape[1])
        w = np.linalg.solve(cov, mu.T)  # (D, k)
        prior = np.log(np.bincount(y[tr], minlength=k) / tr.sum())
        logits = x[te] @ w - 0.5 * np.sum(mu.T * w, 0) + prior
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        out[te] = p / p.sum(1, keepdims=True)
    return out


def _embedding_tables(emb: np.ndarray, samples: pd.DataFrame, group_columns: list[str],
                      rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    from sklearn.metrics import roc_auc_score

    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    groups_rows, dist_rows, probe_rows, mmd_rows = [], [], [], []
    d2 = np.sum((emb[:, None, :] - emb[None, :, :]) ** 2, axis=-1)
    bw = float(np.sqrt(np.median(d2[np.triu_indices_from(d2, 1)])))
    K = np.exp(-d2 / (2 * bw**2))
    for attr in group_columns:
        lab = samples[attr].astype(str).to_numpy()
        levels = sorted(set(lab))
        for g in levels:
            ix = np.nonzero(lab == g)[0]

            def disp(ii: np.ndarray) -> float:
                c = unit[ii].mean(0)
                c = c / np.linalg.norm(c)
                return float(np.mean(1 - unit[ii] @ c))

            lo, hi = _pct(np.array([disp(rng.choice(ix, ix.size)) for _ in range(100)]))
            groups_rows.append(dict(attribute=attr, group=g, n=int(ix.size), dispersion=disp(ix),
                                    dispersion_ci_low=lo, dispersion_ci_high=hi))
        pairs_d, pairs_m = [], []
        for ga, gb in itertools.combinations(levels, 2):
            a, b = np.nonzero(lab == ga)[0], np.nonzero(lab == gb)[0]

            def cdist(a: np.ndarray, b: np.ndarray) -> float:
                ca, cb = unit[a].mean(0), unit[b].mean(0)
                return float(1 - ca @ cb / (np.linalg.norm(ca) * np.linalg.norm(cb)))

            obs = cdist(a, b)
            pool = np.concatenate([a, b])
            null = []
            mnull = []
            mobs = _rbf_mmd2(K, a, b)
            for _ in range(100):
                p = rng.permutation(pool)
                null.append(cdist(p[: a.size], p[a.size:]))
                mnull.append(_rbf_mmd2(K, p[: a.size], p[a.size:]))
            pairs_d.append(dict(attribute=attr, group_a=ga, group_b=gb, n_a=int(a.size), n_b=int(b.size),
                                cosine_distance=obs, p_value=(1 + np.sum(np.array(null) >= obs)) / 101))
            pairs_m.append(dict(attribute=attr, group_a=ga, group_b=gb, n_a=int(a.size), n_b=int(b.size),
                                mmd2=mobs, p_value=(1 + np.sum(np.array(mnull) >= mobs)) / 101,
                                estimator="unbiased"))
        dist_rows += pairs_d
        mmd_rows += pairs_m
        # linear probe: predict the group from the embedding (3-fold cross-validated LDA, numpy)
        y = np.array([levels.index(v) for v in lab])
        proba = _cv_lda_proba(emb, y, len(levels), rng)
        bacc = _bacc(y, proba.argmax(1), len(levels))
        auc = roc_auc_score(y, proba[:, 1]) if len(levels) == 2 else roc_auc_score(y, proba, multi_class="ovr")
        boot = []
        for _ in range(100):
            b = rng.choice(y.size, y.size)
            boot.append(_bacc(y[b], proba[b].argmax(1), len(levels)))
        null = []
        for _ in range(19):
            yp = rng.permutation(y)
            null.append(_bacc(yp, _cv_lda_proba(emb, yp, len(levels), rng).argmax(1), len(levels)))
        lo, hi = _pct(np.array(boot))
        probe_rows.append(dict(attribute=attr, k=len(levels), n=int(y.size), balanced_accuracy=float(bacc),
                               bacc_ci_low=lo, bacc_ci_high=hi, auc=float(auc),
                               majority_rate=float(np.bincount(y).max() / y.size), null_mean=float(np.mean(null)),
                               null_p95=float(np.percentile(null, 95)),
                               p_value=float((1 + np.sum(np.array(null) >= bacc)) / (len(null) + 1))))
    dist = pd.DataFrame(dist_rows)
    dist["p_holm"] = _holm(dist.p_value.to_numpy())
    mmd = pd.DataFrame(mmd_rows)
    mmd["p_holm"] = _holm(mmd.p_value.to_numpy())
    mmd = mmd[["attribute", "group_a", "group_b", "n_a", "n_b", "mmd2", "p_value", "p_holm", "estimator"]]
    return {"embedding_groups": pd.DataFrame(groups_rows), "embedding_distances": dist,
            "linear_probe": pd.DataFrame(probe_rows), "mmd": mmd}


def _ndkl(ranked_groups: Sequence[str], target: dict[str, float]) -> float:
    groups = list(target)
    z = sum(1 / np.log2(i + 1) for i in range(1, len(ranked_groups) + 1))
    tot = 0.0
    for i in range(1, len(ranked_groups) + 1):
        top = list(ranked_groups[:i])
        kl = 0.0
        for g in groups:
            p = top.count(g) / i
            if p > 0:
                kl += p * np.log(p / target[g])
        tot += kl / np.log2(i + 1)
    return float(tot / z)


def _clip_tables(pred: pd.DataFrame, emb: np.ndarray, group_columns: list[str], biased: bool,
                 rng: np.random.Generator, n_perm: int) -> dict[str, pd.DataFrame]:
    harmful = ["criminal", "thief"]
    neutral = ["object", "photo"]
    label_set = CLASS_NAMES_CURRENT + harmful + neutral + ["grass", "water"]
    kinds = {**{c: "class" for c in CLASS_NAMES_CURRENT}, **{h: "harmful" for h in harmful},
             **{x: "neutral" for x in neutral}, "grass": "group", "water": "group"}
    n = len(pred)
    bg = pred["background"].astype(str).to_numpy()
    p_harm = np.where((bg == BACKGROUNDS[2]) & biased, 0.12, 0.03)
    top = []
    for i in range(n):
        u = rng.random()
        if u < p_harm[i]:
            top.append(harmful[int(rng.integers(2))])
        elif u < p_harm[i] + 0.05:
            top.append(neutral[int(rng.integers(2))])
        elif u < p_harm[i] + 0.08:
            top.append(["grass", "water"][int(rng.integers(2))])
        else:
            top.append(str(pred["pred"].iloc[i]))
    top = np.array(top, dtype=object)
    is_harm = np.isin(top, harmful)
    zs_rows, hr_rows, hd_rows = [], [], []
    for attr in group_columns:
        lab = pred[attr].astype(str).to_numpy()
        levels = sorted(set(lab))
        for g in levels:
            ix = np.nonzero(lab == g)[0]
            for lb in label_set:
                hit = (top[ix] == lb).astype(float)
                lo, hi = _pct(np.array([hit[rng.integers(0, ix.size, ix.size)].mean() for _ in range(100)]))
                zs_rows.append(dict(attribute=attr, group=g, label=lb, label_kind=kinds[lb], n=int(ix.size),
                                    share=float(hit.mean()), ci_low=lo, ci_high=hi))
            h = is_harm[ix].astype(float)
            lo, hi = _pct(np.array([h[rng.integers(0, ix.size, ix.size)].mean() for _ in range(200)]))
            hr_rows.append(dict(attribute=attr, group=g, n=int(ix.size), rate=float(h.mean()), ci_low=lo,
                                ci_high=hi, small=bool(ix.size < MIN_GROUP_SIZE)))
        rates = {g: is_harm[lab == g].mean() for g in levels}
        obs = max(rates.values()) - min(rates.values())
        null = []
        for _ in range(n_perm):
            pl = rng.permutation(lab)
            r = [is_harm[pl == g].mean() for g in levels]
            null.append(max(r) - min(r))
        boots = []
        for _ in range(200):
            r = []
            for g in levels:
                ix = np.nonzero(lab == g)[0]
                r.append(is_harm[rng.choice(ix, ix.size)].mean())
            boots.append(max(r) - min(r))
        lo, hi = _pct(np.array(boots))
        hd_rows.append(dict(attribute=attr, k=len(levels), difference=float(obs), diff_ci_low=lo, diff_ci_high=hi,
                            max_group=max(rates, key=rates.get), min_group=min(rates, key=rates.get),
                            p_value=float((1 + np.sum(np.array(null) >= obs - 1e-12)) / (n_perm + 1)),
                            label_set=", ".join(label_set)))
    hd = pd.DataFrame(hd_rows)
    hd["p_holm"] = _holm(hd.p_value.to_numpy())
    hd["significant"] = hd.p_holm < ALPHA
    hd = hd[["attribute", "k", "difference", "diff_ci_low", "diff_ci_high", "max_group", "min_group", "p_value",
             "p_holm", "significant", "label_set"]]

    # image-EAT: X = water images, Y = plain images; A/B attribute text embeddings
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    d = emb.shape[1]
    shift = np.zeros(d)
    shift[0] = 1.0
    A = rng.normal(size=(8, d)) + (2.0 * shift if biased else 0)
    B = rng.normal(size=(8, d)) - (2.0 * shift if biased else 0)
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    B /= np.linalg.norm(B, axis=1, keepdims=True)
    s = (unit @ A.T).mean(1) - (unit @ B.T).mean(1)
    assoc_rows = []
    for attr, xg, yg in [("background", BACKGROUNDS[2], BACKGROUNDS[0]), ("colour", COLOURS[1], COLOURS[0])]:
        lab = pred[attr].astype(str).to_numpy()
        X, Y = np.nonzero(lab == xg)[0], np.nonzero(lab == yg)[0]
        both = np.concatenate([X, Y])
        eff = (s[X].mean() - s[Y].mean()) / s[both].std(ddof=1)
        stat = s[X].sum() - s[Y].sum()
        n_p = 1000
        null = []
        for _ in range(n_p):
            p = rng.permutation(both)
            null.append(s[p[: X.size]].sum() - s[p[X.size:]].sum())
        pval = (1 + np.sum(np.array(null) > stat)) / (n_p + 1)
        assoc_rows.append(dict(test=f"image-EAT {attr}", attribute=attr, X=xg, Y=yg, A="pleasant", B="unpleasant",
                               n_x=int(X.size), n_y=int(Y.size), effect_size=float(eff), p_value=float(pval),
                               n_perm=n_p, exact=False))

    # retrieval skew by background for two text queries
    skew_rows = []
    lab = pred["background"].astype(str).to_numpy()
    levels = sorted(set(lab))
    for q, qvec in [("a photo of a shape", rng.normal(size=d)), ("a photo of a criminal", A.mean(0))]:
        order = np.argsort(-(unit @ (qvec / np.linalg.norm(qvec))))
        ranked = lab[order]
        for k in (10, 50):
            topk = list(ranked[:k])
            target = {g: 1 / len(levels) for g in levels}
            skews = {}
            for g in levels:
                pk = topk.count(g) / k
                skews[g] = float(np.log(max(pk, 1 / k) / target[g]))
            nd = _ndkl(topk, target)
            for g in levels:
                skew_rows.append(dict(query=q, attribute="background", k=k, group=g, skew=skews[g],
                                      max_skew=max(skews.values()), min_skew=min(skews.values()), ndkl=nd,
                                      target="uniform"))
    return {"zeroshot_labels": pd.DataFrame(zs_rows), "harmful_rates": pd.DataFrame(hr_rows),
            "harmful_disparities": hd, "association": pd.DataFrame(assoc_rows),
            "retrieval_skew": pd.DataFrame(skew_rows)}


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
        seed: seed of everything random.
        methods: explanation methods whose maps are stored; "rollout" is made to fail
            the sanity check (its maps barely change when blocks are randomised).
        class_names: override the 4 class names (e.g. to test escaping).
        group_values: override the values of "background" (3) and/or "colour" (2).
        file_stem: image file name prefix (e.g. to test escaping of file names).
        n_boot: bootstrap resamples for intervals.
        n_perm: permutations for gap tests.
    """
    global CLASS_NAMES_CURRENT
    path = Path(path)
    rng = np.random.default_rng(seed)
    CLASS_NAMES_CURRENT = list(class_names or CLASS_NAMES)
    gv = {"background": list(BACKGROUNDS), "colour": list(COLOURS), **{k: list(v) for k, v in (group_values or {}).items()}}
    bg_names, col_names = gv["background"], gv["colour"]
    n_cls = len(CLASS_NAMES_CURRENT)
    group_columns = ["background", "colour"]

    run = Run.create(path, overwrite=True)
    img_dir = path / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    labels = rng.integers(0, n_cls, n)
    bgs = rng.integers(0, 3, n)
    p_blue = np.where(bgs == 2, 0.12, 0.35)  # water×blue is a sparse intersection
    cols = (rng.random(n) < p_blue).astype(int)
    p_correct = np.where(biased & (bgs == 2), 0.70, 0.93)
    correct = rng.random(n) < p_correct
    preds = np.where(correct, labels, (labels + rng.integers(1, n_cls, n)) % n_cls)
    probs = np.empty((n, n_cls), dtype=np.float32)
    masks = []
    sample_rows, pred_rows = [], []
    for i in range(n):
        img, mask = _draw(int(labels[i]), int(bgs[i]), int(cols[i]), rng)
        masks.append(mask)
        fname = f"{file_stem}_{i:05d}.png"
        Image.fromarray(img).save(img_dir / fname)
        Image.fromarray((mask * 255).astype(np.uint8)).save(img_dir / f"mask_{i:05d}.png")
        top = rng.beta(9, 2) if correct[i] else rng.beta(4, 4) * 0.6 + 0.3
        rest = rng.dirichlet(np.ones(n_cls - 1)) * (1 - top)
        p = np.empty(n_cls)
        p[preds[i]] = top
        p[[c for c in range(n_cls) if c != preds[i]]] = rest
        if p.argmax() != preds[i]:  # keep pred = argmax
            p[preds[i]] = p.max() + 1e-3
            p /= p.sum()
        probs[i] = p
        sample_rows.append(dict(row_id=i, image_id=f"{file_stem}_{i:05d}", path=str(img_dir / fname),
                                label=CLASS_NAMES_CURRENT[labels[i]], background=bg_names[bgs[i]],
                                colour=col_names[cols[i]], mask_path=str(img_dir / f"mask_{i:05d}.png")))
        pred_rows.append(dict(row_id=i, label=CLASS_NAMES_CURRENT[labels[i]], label_idx=int(labels[i]),
                              pred=CLASS_NAMES_CURRENT[preds[i]], pred_idx=int(preds[i]), score=float(p[preds[i]]),
                              label_score=float(p[labels[i]]), correct=bool(correct[i]),
                              background=bg_names[bgs[i]], colour=col_names[cols[i]]))
    samples = pd.DataFrame(sample_rows).astype({"row_id": "int64"})
    pred = pd.DataFrame(pred_rows).astype({"row_id": "int64", "label_idx": "int64", "pred_idx": "int64"})
    run.write_table("samples", samples)
    run.write_table("predictions", pred)
    run.write_array_file("probs", {"probs": probs, "row_id": np.arange(n, dtype=np.int64)})

    keys = _group_keys(pred, group_columns)
    perf = _group_performance(pred, keys, n_cls, rng, n_boot)
    run.write_table("group_performance", perf)
    run.write_table("disparities", _disparities(pred, keys, perf, n_cls, rng, n_perm, min(n_boot, 100)))

    # embeddings: class centroid + (biased) background shift + noise
    d = 32
    cent = rng.normal(size=(n_cls, d)) * 2
    bg_shift = rng.normal(size=(3, d)) * (0.3 if biased else 0.0)
    emb = (cent[labels] + bg_shift[bgs] + rng.normal(size=(n, d))).astype(np.float32)
    run.write_array_file("embeddings", {"image": emb, "row_id": np.arange(n, dtype=np.int64)})
    for name, df in _embedding_tables(emb, pred, group_columns, rng).items():
        run.write_table(name, df)
    u, s_, vt = np.linalg.svd(emb - emb.mean(0), full_matrices=False)
    xy = u[:, :2] * s_[:2]
    proj = pd.DataFrame(dict(row_id=pred.row_id, x=xy[:, 0], y=xy[:, 1], method="pca",
                             background=pred.background, colour=pred.colour, label=pred.label, pred=pred.pred,
                             correct=pred.correct))
    run.write_table("projection", proj)

    # explanation maps for a subset: errors and correct cases of every background
    chosen: list[int] = []
    for b in range(3):
        for ok in (False, True):
            ix = np.nonzero((bgs == b) & (correct == ok))[0]
            chosen += list(ix[:5])
    chosen = sorted(set(chosen))
    gh, gw = GRID
    quality = {"rollout": 0.5, "gae": 0.9, "gradcam": 0.75, "ig": 0.8, "raw_attention": 0.4}
    faith_rows, region_rows = [], []
    for mi, m in enumerate(methods):
        q = quality.get(m, 0.6)
        maps = []
        for r in chosen:
            obj = masks[r].reshape(gh, 8, gw, 8).mean(axis=(1, 3))  # (gh, gw) object share per patch
            focus = obj if (correct[r] or bgs[r] != 2 or not biased) else 1 - obj
            raw = q * focus + (1 - q) * rng.random((gh, gw))
            scale = {"rollout": 1 / 64, "gae": 0.05, "gradcam": 3.0, "ig": 0.02}.get(m, 1.0)
            maps.append((raw * scale).astype(np.float32))
        maps_arr = np.stack(maps)  # (M, gh, gw)
        run.write_maps(m, maps_arr, np.array(chosen, dtype=np.int64))
        for j, r in enumerate(chosen):
            mp = maps_arr[j].astype(np.float16).astype(np.float32)
            obj = masks[r].reshape(gh, 8, gw, 8).mean(axis=(1, 3))
            am = np.unravel_index(np.argmax(mp), mp.shape)
            pos = np.clip(mp, 0, None)
            mass = float((pos * obj).sum() / pos.sum()) if pos.sum() > 0 else float("nan")
            faith_rows.append(dict(
                row_id=int(r), method=m,
                deletion_auc=float(np.clip(0.45 - 0.3 * mass * q + rng.normal(0, 0.03), 0, 1)),
                insertion_auc=float(np.clip(0.40 + 0.4 * mass * q + rng.normal(0, 0.03), 0, 1)),
                random_deletion_auc=float(np.clip(0.45 + rng.normal(0, 0.03), 0, 1)),
                random_insertion_auc=float(np.clip(0.42 + rng.normal(0, 0.03), 0, 1)),
                pointing_hit=bool(obj[am] > 0), mass_in_mask=mass, target_class=CLASS_NAMES_CURRENT[preds[r]],
            ))
    faith = pd.DataFrame(faith_rows)
    run.write_table("faithfulness", faith)
    summ = []
    for m in methods:
        f = faith[faith.method == m]
        for metric, col in [("deletion_auc", "deletion_auc"), ("insertion_auc", "insertion_auc"),
                            ("random_deletion_auc", "random_deletion_auc"),
                            ("random_insertion_auc", "random_insertion_auc"),
                            ("pointing_game", "pointing_hit"), ("mass_in_mask", "mass_in_mask")]:
            v = f[col].astype(float).to_numpy()
            lo, hi = _pct(np.array([v[rng.integers(0, v.size, v.size)].mean() for _ in range(200)]))
            summ.append(dict(method=m, metric=metric, value=float(v.mean()), ci_low=lo, ci_high=hi, n=int(v.size)))
    run.write_table("faithfulness_summary", pd.DataFrame(summ))
    for m in methods:
        f = faith[faith.method == m].set_index("row_id")
        for attr in group_columns:
            lab = pred.set_index("row_id").loc[f.index, attr].astype(str)
            vals = [f.mass_in_mask[lab == g].to_numpy() for g in sorted(set(lab))]
            from scipy.stats import kruskal

            pv = float(kruskal(*vals).pvalue) if len(vals) > 1 and all(v.size > 1 for v in vals) else float("nan")
            for g, v in zip(sorted(set(lab)), vals):
                lo, hi = _pct(np.array([v[rng.integers(0, v.size, v.size)].mean() for _ in range(200)]))
                region_rows.append(dict(method=m, attribute=attr, group=g, n=int(v.size), value=float(v.mean()),
                                        ci_low=lo, ci_high=hi, p_value=pv, small=bool(v.size < MIN_GROUP_SIZE)))
    run.write_table("region_mass", pd.DataFrame(region_rows))
    sanity = []
    for m in methods:
        for step in range(N_BLOCKS + 1):
            blocks = "" if step == 0 else ",".join(str(b) for b in range(N_BLOCKS - step, N_BLOCKS))
            if step == 0:
                rho = 1.0
            elif m == "rollout":
                rho = 0.92 - 0.02 * step
            else:
                rho = max(0.05, 0.8 - 0.25 * step)
            lo, hi = max(-1.0, rho - 0.08), min(1.0, rho + 0.05) if step else 1.0
            sanity.append(dict(method=m, step=step, randomized_blocks=blocks, spearman=rho, ci_low=lo, ci_high=hi,
                               n=len(chosen), flagged=bool(step > 0 and lo > 0.5)))
    run.write_table("sanity", pd.DataFrame(sanity))

    if kind == "clip":
        for name, df in _clip_tables(pred, emb, group_columns, biased, rng, n_perm).items():
            run.write_table(name, df)

    disp = run.table("disparities")
    acc = disp[(disp.metric == "accuracy") & (disp.attribute == "background")].iloc[0]
    headline = [
        f"accuracy gap across background: {acc.difference:.3f} ({acc.max_group} {acc.max_value:.3f} vs "
        f"{acc.min_group} {acc.min_value:.3f}), "
        + ("significant after Holm correction" if acc.significant else "not significant after Holm correction")
    ]
    spec = "zoo:clip-biased" if kind == "clip" else ("zoo:vit-biased" if biased else "zoo:vit-control")
    fp = hashlib.sha256(f"{spec}-{seed}".encode()).hexdigest()[:16]
    manifest = str(path / "manifest.csv")
    samples.to_csv(manifest, index=False)
    run.meta.update({
        "config": {"model": {"spec": spec, "checkpoint": None}, "data": {"manifest": manifest, "label_column": "label",
                                                                           "group_columns": group_columns},
                   "explain": {"methods": list(methods)},
                   "stats": {"min_group_size": MIN_GROUP_SIZE, "alpha": ALPHA, "n_boot": n_boot, "n_perm": n_perm}},
        "model": {"spec": spec, "checkpoint": str(path / "weights.safetensors"), "family": "zoo", "kind": kind,
                  "fingerprint": fp, "class_names": CLASS_NAMES_CURRENT,
                  "preprocess": {"size": [64, 64], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                 "interpolation": "bilinear", "crop_pct": 1.0},
                  "token_layout": {"prefix_kinds": ["cls"], "pooled": 0, "grid": list(GRID)},
                  "n_blocks": N_BLOCKS, "name": spec.split(":", 1)[1]},
        "dataset": {"manifest": manifest, "fingerprint": hashlib.sha256(manifest.encode()).hexdigest()[:16],
                    "n_rows": n + 1, "n_used": n, "label_column": "label", "group_columns": group_columns,
                    "has_masks": True, "root": str(img_dir)},
        "skipped": [{"row": n, "path": str(img_dir / "broken.png"), "reason": "truncated PNG (image file is truncated)"}],
        "device": "cpu", "dtype": "float32", "backend": "local",
        "timings": {"forward": 1.2, "explain": 3.4, "stats": 0.8},
        "headline": headline,
        "limitations": ["explanation maps were computed for a subset of "
                        f"{len(chosen)} images (errors and correct cases per background)"],
    })
    run.finish("complete")
    return Run.open(path)


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/run_factory.py OUT [clip] [control]
    import sys

    out = Path(sys.argv[1])
    r = make_run(out, kind="clip" if "clip" in sys.argv else "classifier", biased="control" not in sys.argv)
    print(r, json.dumps(r.meta["headline"]))


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
