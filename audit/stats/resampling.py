"""Vectorised resampling: count bootstraps, permutation draws, intervals and p-values.

Everything here works on *counts* where it can. A metric that is a function of a
table of cell counts (a confusion matrix, a (bin, correct) calibration table) has
its nonparametric bootstrap given exactly by a multinomial draw of those counts,
and its group-label permutation null given exactly by a multivariate
hypergeometric draw of each group's cells from the pooled cells. Both cost
O(groups x cells x resamples), independent of the number of rows.

All functions take a ``numpy.random.Generator`` (or a seed) and never touch the
global random state.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import stats as _st

from audit.stats.rules import ALPHA

__all__ = [
    "as_rng",
    "clopper_pearson_interval",
    "hypergeometric_permutation",
    "index_bootstrap_weights",
    "multinomial_bootstrap",
    "percentile_ci",
    "permutation_counts",
    "permutation_pvalue",
    "tie_broken_pvalue",
    "wilson_interval",
]


def as_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """Return a Generator: ``seed`` itself if it is one, else ``default_rng(seed)``."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def multinomial_bootstrap(
    counts: np.ndarray, *, n_boot: int, seed: int | np.random.Generator | None = 0
) -> np.ndarray:
    """Bootstrap replicates of cell counts, independently per group.

    Resampling the n_g rows of a group with replacement and re-tabulating them is
    the same as drawing Multinomial(n_g, observed cell shares). This is that draw.

    Args:
        counts: (G, C) non-negative integer cell counts per group (or (C,) for one group).
        n_boot: number of bootstrap replicates B.
        seed: seed or Generator.

    Returns:
        (B, G, C) int64 replicate counts (or (B, C) for a 1-D input). Row sums equal
        the observed group sizes in every replicate.
    """
    rng = as_rng(seed)
    c = np.asarray(counts, dtype=np.int64)
    one = c.ndim == 1
    if one:
        c = c[None, :]
    n = c.sum(axis=1)  # (G,)
    p = np.divide(c, np.maximum(n, 1)[:, None], dtype=np.float64)  # (G, C)
    # numpy requires pvals to sum to <= 1 up to rounding; renormalise defensively
    p = p / np.where(p.sum(axis=1, keepdims=True) > 0, p.sum(axis=1, keepdims=True), 1.0)
    empty = n == 0
    if empty.any():  # a group without rows: all-zero replicates
        p[empty] = 0.0
        p[empty, 0] = 1.0
    out = rng.multinomial(n, p, size=(int(n_boot), c.shape[0]))  # (B, G, C)
    return out[:, 0, :] if one else out


def hypergeometric_permutation(
    counts: np.ndarray, *, n_perm: int, seed: int | np.random.Generator | None = 0
) -> np.ndarray:
    """Cell counts of each group after randomly permuting group labels.

    Permuting the group labels of all rows keeps the group sizes n_g and the pooled
    cell totals fixed; the cells of group g are then a multivariate hypergeometric
    draw of n_g rows from what the previous groups left in the pool. The multivariate
    draw is done colour by colour as a chain of univariate hypergeometric draws
    (``Generator.hypergeometric`` broadcasts over permutations), so the cost is
    O(G x C x n_perm) calls' worth of work and does not depend on the row count.

    Args:
        counts: (G, C) observed cell counts per group.
        n_perm: number of permutations P.
        seed: seed or Generator.

    Returns:
        (P, G, C) int64 counts; for every permutation the column sums equal the pooled
        cell totals and the row sums equal the observed group sizes.
    """
    rng = as_rng(seed)
    c = np.asarray(counts, dtype=np.int64)
    G, C = c.shape
    P = int(n_perm)
    used = c.sum(axis=0) > 0
    if not used.all():  # cells empty in every group stay empty: draw only the others
        out = np.zeros((P, G, C), dtype=np.int64)
        if used.any():
            out[:, :, used] = hypergeometric_permutation(c[:, used], n_perm=P, seed=rng)
        return out
    pool = np.broadcast_to(c.sum(axis=0), (P, C)).copy()  # (P, C) remaining per colour
    sizes = c.sum(axis=1)
    out = np.zeros((P, G, C), dtype=np.int64)
    for g in range(G - 1):
        left = np.full(P, sizes[g], dtype=np.int64)  # rows still to draw for group g
        rest = pool.sum(axis=1)  # (P,) rows in the pool
        for j in range(C):
            rest = rest - pool[:, j]  # rows of later colours
            if j == C - 1:
                x = left.copy()
            else:
                x = rng.hypergeometric(pool[:, j], rest, left) if left.any() else np.zeros(P, np.int64)
            out[:, g, j] = x
            left = left - x
        pool -= out[:, g, :]
    out[:, G - 1, :] = pool  # the last group takes what is left
    return out


def index_bootstrap_weights(
    n: int, *, n_boot: int, seed: int | np.random.Generator | None = 0
) -> np.ndarray:
    """Multiplicity of each of n rows in each of B bootstrap resamples.

    Returns:
        (B, n) int32 counts; every row sums to n (an ordinary with-replacement resample).
    """
    rng = as_rng(seed)
    idx = rng.integers(0, n, size=(int(n_boot), n))  # (B, n)
    offs = (np.arange(int(n_boot)) * n)[:, None]
    w = np.bincount((idx + offs).ravel(), minlength=int(n_boot) * n)
    return w.reshape(int(n_boot), n).astype(np.int32)


def percentile_ci(samples: np.ndarray, *, alpha: float = ALPHA, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval (alpha/2, 1 - alpha/2) of replicates along ``axis``, ignoring NaN.

    Replicates that are NaN (an empty denominator in a resample) are dropped; where all
    are NaN the bounds are NaN.
    """
    s = np.asarray(samples, dtype=np.float64)
    all_nan = np.isnan(s).all(axis=axis)
    if all_nan.any():
        s = np.where(np.expand_dims(all_nan, axis), 0.0, s)
    lo = np.nanquantile(s, alpha / 2, axis=axis)
    hi = np.nanquantile(s, 1 - alpha / 2, axis=axis)
    lo = np.where(all_nan, np.nan, lo)
    hi = np.where(all_nan, np.nan, hi)
    return lo, hi


def permutation_pvalue(
    observed: np.ndarray | float,
    null: np.ndarray,
    *,
    alternative: Literal["greater", "less", "two-sided"] = "greater",
    axis: int = 0,
    ties: Literal["count", "mid", "random"] = "count",
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """Monte Carlo p-value with the +1 correction: (1 + #{null >= obs}) / (B + 1).

    The observed data are one of the equally likely arrangements, so counting them
    keeps the test valid (never p = 0). NaN replicates are dropped from B.

    Null values tied with the observed one (within float round-off):

    * ``"count"`` (default) counts them in full: valid, but a discrete statistic (a gap between
      a few errors) makes the test conservative.
    * ``"random"`` breaks the ties at random (:func:`tie_broken_pvalue`, ``seed``): the
      observed value's rank among the B + 1 is then uniform under the null, so
      P(p <= alpha) = floor(alpha (B + 1)) / (B + 1) exactly, however many ties there are.
    * ``"mid"`` counts them half (the expected value of ``"random"``); deterministic, but
      conservative when a large share of the null sits on the observed value.
    """
    obs = np.expand_dims(np.asarray(observed, dtype=np.float64), axis)
    greater, tied, b = permutation_counts(observed, null, alternative=alternative, axis=axis)
    if ties == "random":
        zero = np.abs(np.squeeze(obs, axis)) <= 1e-12 if alternative != "less" else np.zeros(greater.shape, bool)
        p = tie_broken_pvalue(greater, tied, b, seed=seed, zero=zero)
    else:
        hits = greater + (0.5 * tied if ties == "mid" else tied)
        p = (1.0 + hits) / (b + 1.0)
    return np.where(np.isnan(np.squeeze(obs, axis)), np.nan, p)


def tie_broken_pvalue(
    greater: np.ndarray | int,
    tied: np.ndarray | int,
    valid: np.ndarray | int,
    *,
    seed: int | np.random.Generator | None = 0,
    zero: np.ndarray | bool = False,
) -> np.ndarray:
    """Permutation p-value with ties broken at random: (1 + greater + J) / (valid + 1).

    J is uniform on {0, ..., tied}: the observed value's position among the ``tied`` null
    values equal to it, so its rank among all valid + 1 values is uniform under the null
    and the test has its level exactly. Where ``zero`` (the observed statistic is 0, its
    smallest possible value: no gap at all) ties count in full instead, so that a gap of
    exactly 0 is never declared significant by the draw of J. NaN where ``valid`` is 0.
    """
    rng = as_rng(seed)
    g = np.asarray(greater, dtype=np.float64)
    t = np.asarray(tied, dtype=np.int64)
    v = np.asarray(valid, dtype=np.float64)
    J = np.floor(rng.random(t.shape) * (t + 1)).astype(np.float64)
    J = np.where(np.asarray(zero, dtype=bool), t, J)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(v > 0, (1.0 + g + J) / (v + 1.0), np.nan)


def permutation_counts(
    observed: np.ndarray | float,
    null: np.ndarray,
    *,
    alternative: Literal["greater", "less", "two-sided"] = "greater",
    axis: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts behind a Monte Carlo p-value: (#{more extreme}, #{tied}, #{valid}) along ``axis``.

    "Tied" means equal to the observed value up to 1e-12 relative round-off; NaN null values
    are not valid. For sequential p-values the counts of several batches add up.
    """
    null = np.asarray(null, dtype=np.float64)
    obs = np.expand_dims(np.asarray(observed, dtype=np.float64), axis)
    valid = ~np.isnan(null)
    tol = 1e-12 * np.maximum(1.0, np.abs(obs))  # float round-off must not break ties
    if alternative == "greater":
        t, o = null, obs
    elif alternative == "less":
        t, o = -null, -obs
    else:
        t, o = np.abs(null), np.abs(obs)
    tied = (np.abs(t - o) <= tol) & valid
    greater = (t > o + tol) & valid
    return greater.sum(axis=axis), tied.sum(axis=axis), valid.sum(axis=axis)


def wilson_interval(k: np.ndarray | int, n: np.ndarray | int, *, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion k/n (NaN where n == 0)."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    z = _st.norm.ppf(1 - alpha / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / den
    lo = np.where(n > 0, np.clip(centre - half, 0, 1), np.nan)
    hi = np.where(n > 0, np.clip(centre + half, 0, 1), np.nan)
    return lo, hi


def clopper_pearson_interval(
    k: np.ndarray | int, n: np.ndarray | int, *, alpha: float = ALPHA
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper-Pearson) binomial interval via beta quantiles (NaN where n == 0)."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lo = np.where(k > 0, _st.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
        hi = np.where(k < n, _st.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)
