"""Where explanations put their mass, by group: share of map mass inside the object region.

For image i with a non-negative map M_i and object mask R_i, mass_i = sum(M_i * R_i) / sum(M_i).
Maps on the patch grid and masks at pixel resolution are reconciled by average-pooling the
mask onto the grid (the fraction of each patch inside the object), when the mask size is a
multiple of the grid. Maps stay raw: no per-image normalisation (it cancels in the ratio anyway).

By group (:func:`region_mass_by_group`): mean share per group with a bootstrap interval; groups
below ``min_group_size`` are flagged ``small`` and left out of the max-min gap, whose interval
is :func:`audit.stats.intervals.range_interval` (it covers the true gap, unlike a percentile
bootstrap of the gap) and whose p-value is a permutation test, ties broken at random.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from audit.errors import UsageError
from audit.stats.intervals import range_interval
from audit.stats.resampling import as_rng, index_bootstrap_weights, percentile_ci, permutation_pvalue
from audit.stats.rules import ALPHA, MIN_GROUP_SIZE

__all__ = ["REGION_MASS_COLUMNS", "mass_in_region", "paired_mass_test", "region_mass_by_group"]

REGION_MASS_COLUMNS = ["method", "attribute", "group", "n", "value", "ci_low", "ci_high", "p_value", "small",
                       "difference", "diff_ci_low", "diff_ci_high"]


def mass_in_region(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each map's mass inside its region.

    Args:
        maps: (N, h, w) non-negative maps (patch grid or input resolution).
        masks: (N, H, W) boolean masks; H, W equal to h, w or integer multiples of them.

    Returns:
        (N,) float64; NaN where a map has no mass.
    """
    m = np.asarray(maps, dtype=np.float64)
    r = np.asarray(masks)
    if m.ndim != 3 or r.ndim != 3 or len(m) != len(r):
        raise UsageError(f"maps and masks must be (N, h, w) and (N, H, W) with the same N; got {m.shape} and {r.shape}")
    if (m < 0).any():
        raise UsageError("maps must be non-negative for mass shares (clip or take absolute values first)")
    h, w = m.shape[1:]
    H, W = r.shape[1:]
    if (H, W) != (h, w):
        if H % h or W % w:
            raise UsageError(f"mask size {H}x{W} is not a multiple of the map grid {h}x{w}; "
                             "resize the masks or the maps to a common grid")
        r = r.astype(np.float64).reshape(len(r), h, H // h, w, W // w).mean(axis=(2, 4))  # (N, h, w) fractions
    else:
        r = r.astype(np.float64)
    tot = m.sum(axis=(1, 2))
    inside = (m * r).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, inside / tot, np.nan)


def _group_means(values: np.ndarray, codes: np.ndarray, G: int) -> np.ndarray:
    return np.bincount(codes, weights=values, minlength=G) / np.maximum(np.bincount(codes, minlength=G), 1)


def region_mass_by_group(
    maps: np.ndarray,
    masks: np.ndarray,
    groups: pd.DataFrame,
    *,
    group_cols: Sequence[str],
    method: str,
    n_boot: int = 1000,
    n_perm: int = 1000,
    alpha: float = ALPHA,
    seed: int = 0,
    min_group_size: int = MIN_GROUP_SIZE,
) -> pd.DataFrame:
    """Mean share of map mass inside the object region per group (table ``region_mass``).

    Interval: percentile bootstrap of the group mean (images resampled within the group).
    Groups with fewer than ``min_group_size`` images (as given) are flagged ``small`` and left
    out of the gap: difference = max - min of the group means over the non-small groups, with
    the covering interval of :func:`audit.stats.intervals.range_interval` (simultaneous
    per-group intervals from the same bootstrap; it contains 0 when the groups overlap and
    always contains the estimate). p_value: permutation test of that max-min gap (group labels
    permuted among the non-small groups' images), +1 corrected, ties broken at random.
    difference, its interval and p_value are the same on every row of an attribute (this
    table has one row per group; the gap is per attribute), NaN for small groups and when
    fewer than two groups are large enough. Images whose map has no mass are left out (they
    have no share).

    Args:
        maps: (N, h, w) non-negative maps; masks: (N, H, W) bool; groups: N rows.
        group_cols: attributes; method: the explanation method's name (written to the table).
        n_boot, n_perm, alpha, seed: resampling settings (0 skips intervals / the test).
        min_group_size: groups with fewer images are small (not compared).

    Returns:
        DataFrame with columns :data:`REGION_MASS_COLUMNS`.
    """
    vals = mass_in_region(maps, masks)
    if len(groups) != len(vals):
        raise UsageError(f"groups has {len(groups)} rows but there are {len(vals)} maps")
    ok = ~np.isnan(vals)
    vals = vals[ok]
    rng = as_rng(seed)
    rows = []
    for col in group_cols:
        if col not in groups.columns:
            raise UsageError(f"group column {col!r} not found; available: {list(groups.columns)}")
        codes, names = pd.factorize(groups[col].astype("string").fillna("<missing>").to_numpy()[ok], sort=True)
        G = len(names)
        n = np.bincount(codes, minlength=G)
        mean = _group_means(vals, codes, G)
        lo = np.full(G, np.nan)
        hi = np.full(G, np.nan)
        boots = np.full((max(n_boot, 0), G), np.nan)
        for g in range(G):
            v = vals[codes == g]
            if len(v) >= 2 and n_boot > 0:
                w = index_bootstrap_weights(len(v), n_boot=n_boot, seed=rng)  # (B, n_g)
                boots[:, g] = (w @ v) / len(v)
                lo[g], hi[g] = percentile_ci(boots[:, g], alpha=alpha)
        small = n < min_group_size
        big = np.flatnonzero(~small)
        p = np.nan
        gap = dlo = dhi = np.nan
        if len(big) >= 2:
            gap = float(mean[big].max() - mean[big].min())
            if n_boot > 0:
                dlo, dhi = range_interval(mean[big], boots[:, big], alpha=alpha)
        if len(big) >= 2 and n_perm > 0:
            sel = np.isin(codes, big)
            v, c = vals[sel], np.searchsorted(big, codes[sel])
            k = len(big)
            null = np.empty(n_perm)
            chunk = max(1, min(n_perm, 10_000_000 // len(v)))
            for s in range(0, n_perm, chunk):
                m = min(chunk, n_perm - s)
                pc = rng.permuted(np.broadcast_to(c, (m, len(c))), axis=1)  # (m, n) permuted labels
                flat = (pc + k * np.arange(m)[:, None]).ravel()
                means = (np.bincount(flat, weights=np.tile(v, m), minlength=m * k)
                         / np.bincount(flat, minlength=m * k)).reshape(m, k)
                null[s:s + m] = means.max(axis=1) - means.min(axis=1)
            p = float(permutation_pvalue(gap, null, ties="random", seed=rng))
        for g, name in enumerate(names):
            rows.append((method, col, str(name), int(n[g]), float(mean[g]), float(lo[g]), float(hi[g]),
                         np.nan if small[g] else p, bool(small[g]), *((np.nan,) * 3 if small[g] else (gap, dlo, dhi))))
    return pd.DataFrame(rows, columns=REGION_MASS_COLUMNS).astype({"small": "bool"})


def paired_mass_test(values_a: np.ndarray, values_b: np.ndarray) -> dict:
    """Compare two models' (or methods') mass shares on the same images: Wilcoxon signed-rank.

    Args:
        values_a, values_b: (N,) paired values (NaN pairs dropped).

    Returns:
        dict with statistic, p_value (two-sided, scipy.stats.wilcoxon), n, median_difference (a - b).
    """
    from scipy.stats import wilcoxon

    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape:
        raise UsageError(f"paired values must have the same shape; got {a.shape} and {b.shape}")
    ok = ~(np.isnan(a) | np.isnan(b))
    d = a[ok] - b[ok]
    if (d != 0).sum() < 1:
        return {"statistic": np.nan, "p_value": 1.0, "n": int(ok.sum()), "median_difference": 0.0}
    res = wilcoxon(a[ok], b[ok])
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue), "n": int(ok.sum()),
            "median_difference": float(np.median(d))}
