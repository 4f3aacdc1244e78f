"""Intervals for gaps between groups that cover what they claim: range, ratio and differences.

The percentile bootstrap of the max-min gap of bootstrap replicates does not: the gap of
replicates is never below the gap of the true values' noise, so the interval cannot contain 0,
it often excludes the point estimate, and by simulation it covers a true zero gap 0% of the
time. This module builds gap intervals from *per-group* intervals instead.

Construction
------------
1. **Per-group intervals** (:func:`group_intervals`). Group g, with estimate v_g and
   bootstrap replicates (groups resampled independently), gets at level 1 - a the hull
   (smallest interval containing all) of

   * the percentile interval (a/2, 1 - a/2) of its replicates;
   * the normal interval v_g +- z_{1-a/2} * sd(replicates), which keeps the interval honest
     where B replicates cannot resolve a tail as small as a/2 (Bonferroni over many groups);
   * for a rate x/n, the Wilson score interval, and for a mean of J rates (balanced accuracy,
     macro averages) the MOVER combination of the J Wilson intervals (Zou & Donner 2008):
     v -+ sqrt(sum_j (p_j - l_j)^2) / J. A percentile bootstrap of a proportion near 0 or 1
     under-covers and collapses to a point at 0/n or n/n; the score interval does not;
   * the estimate v_g itself;

   clipped to the metric's range (``bounds``, [0, 1] for every metric of this package).
2. **Simultaneous level.** For the range and the ratio of k groups, each group's interval has
   level 1 - alpha/k (Bonferroni), so that all k cover their true values at once with
   probability >= 1 - alpha.
3. **range** (max - min): [max(0, max_g L_g - min_g U_g), max_g U_g - min_g L_g].
   **ratio** (min / max, non-negative values): [min_g L_g / max_g U_g, min(1, min_g U_g / max_g L_g)].
4. **difference of two groups** (the pairwise and one-vs-rest families, a - b):
   MOVER from the two per-group intervals at level 1 - alpha (no Bonferroni):
   [d - sqrt((v_a - L_a)^2 + (U_b - v_b)^2), d + sqrt((U_a - v_a)^2 + (v_b - L_b)^2)],
   d = v_a - v_b; with Wilson intervals this is Newcombe's (1998) hybrid score interval.

Why the range and ratio intervals cover (and always contain their estimate)
--------------------------------------------------------------------------
Let E be the event that theta_g is in [L_g, U_g] for every g; P(E) >= 1 - alpha by
Bonferroni. On E: max theta <= max U and min theta >= min L, so max theta - min theta <=
max U - min L; and max theta >= theta_{argmax L} >= max L, min theta <= theta_{argmin U} <=
min U, so max theta - min theta >= max L - min U (and >= 0). Hence the true range is in the
range interval whenever E holds: coverage >= 1 - alpha. A true zero gap (all theta equal) is
inside exactly when the k intervals share a point, which E guarantees. For the ratio
(theta >= 0): min theta / max theta >= min L / max U and <= min U / max L, and <= 1.
Every v_g lies in its own [L_g, U_g] (the hull includes it), so the same argument with
theta := v shows that the point estimates max v - min v and min v / max v always lie in
their intervals. The difference interval contains d because both square roots are >= 0.
The coverage is demonstrated by simulation with known truth in
``tests/unit/test_stats_coverage.py`` (and the containment by a property test).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats as _st

from audit.stats.resampling import wilson_interval
from audit.stats.rules import ALPHA

__all__ = [
    "difference_interval",
    "group_intervals",
    "range_interval",
    "ratio_interval",
    "score_floor",
]

ScoreParts = tuple[np.ndarray, np.ndarray]


def score_floor(successes: np.ndarray, trials: np.ndarray, value: np.ndarray, *,
                alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Score interval of a rate, or MOVER interval of a mean of rates, around ``value``.

    Args:
        successes: (G, J) numerators x_j of the J rates whose mean is the metric (J = 1: a rate).
        trials: (G, J) denominators n_j; components with n_j == 0 are left out of the mean.
        value: (G,) the metric's estimate (the mean of the defined x_j / n_j).
        alpha: 1 - level of the interval.

    Returns:
        (lo, hi), each (G,): value -+ sqrt(sum_j (p_j - l_j)^2) / J with (l_j, u_j) the Wilson
        interval of x_j / n_j; for J = 1 exactly the Wilson interval. NaN where no component is
        defined.
    """
    x = np.atleast_2d(np.asarray(successes, dtype=np.float64))
    n = np.atleast_2d(np.asarray(trials, dtype=np.float64))
    v = np.asarray(value, dtype=np.float64)
    lo_j, hi_j = wilson_interval(x, n, alpha=alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, x / np.where(n > 0, n, 1.0), np.nan)
    ok = ~np.isnan(p)
    J = ok.sum(axis=-1).astype(np.float64)
    down = np.sqrt(np.where(ok, (p - lo_j) ** 2, 0.0).sum(axis=-1))
    up = np.sqrt(np.where(ok, (hi_j - p) ** 2, 0.0).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(J > 0, v - down / np.where(J > 0, J, 1.0), np.nan)
        hi = np.where(J > 0, v + up / np.where(J > 0, J, 1.0), np.nan)
    return lo, hi


def group_intervals(
    values: np.ndarray,
    replicates: np.ndarray,
    *,
    alpha: float,
    score_parts: ScoreParts | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group intervals at level 1 - alpha that always contain their estimate.

    Args:
        values: (G,) estimates v_g.
        replicates: (B, G) bootstrap replicates (NaN replicates are ignored).
        alpha: 1 - level, per group (pass alpha / k yourself for simultaneous intervals).
        score_parts: optional ``(successes, trials)``, each (G, J), when the metric is a rate
            (J = 1) or a mean of J rates; then the interval is never narrower than the score
            interval (see :func:`score_floor`).
        bounds: the metric's range; intervals are clipped to it.

    Returns:
        (lo, hi), each (G,): the hull of the percentile interval, the bootstrap-SE normal
        interval, the score interval (if ``score_parts``) and v_g, clipped to ``bounds``.
        NaN where v_g is NaN, or where every replicate is NaN and there is no score interval.
    """
    v = np.asarray(values, dtype=np.float64)
    b = np.asarray(replicates, dtype=np.float64).reshape(-1, v.size)
    z = float(_st.norm.ppf(1 - alpha / 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        enough = (~np.isnan(b)).sum(axis=0) >= 2
        safe = np.where(enough[None, :], b, 0.0)
        q_lo = np.where(enough, np.nanquantile(safe, alpha / 2, axis=0), np.nan)
        q_hi = np.where(enough, np.nanquantile(safe, 1 - alpha / 2, axis=0), np.nan)
        sd = np.where(enough, np.nanstd(safe, axis=0, ddof=1), np.nan)
    parts_lo = [q_lo, v - z * sd]
    parts_hi = [q_hi, v + z * sd]
    if score_parts is not None:
        s_lo, s_hi = score_floor(score_parts[0], score_parts[1], v, alpha=alpha)
        parts_lo.append(s_lo)
        parts_hi.append(s_hi)
    lo_stack, hi_stack = np.stack(parts_lo), np.stack(parts_hi)
    defined = ~np.isnan(lo_stack).all(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.fmin(np.nanmin(np.where(defined, lo_stack, 0.0), axis=0), v)
        hi = np.fmax(np.nanmax(np.where(defined, hi_stack, 0.0), axis=0), v)
    lo = np.clip(lo, bounds[0], bounds[1])
    hi = np.clip(hi, bounds[0], bounds[1])
    bad = np.isnan(v) | ~defined
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


def _simultaneous(values, replicates, alpha, score_parts, bounds):
    v = np.asarray(values, dtype=np.float64).ravel()
    k = v.size
    if k == 0:
        raise ValueError("need at least one group value")
    return v, *group_intervals(v, replicates, alpha=alpha / k, score_parts=score_parts, bounds=bounds)


def range_interval(
    values: np.ndarray,
    replicates: np.ndarray,
    *,
    alpha: float = ALPHA,
    score_parts: ScoreParts | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[float, float]:
    """Interval for the range max_g theta_g - min_g theta_g of k group values.

    Built from simultaneous (Bonferroni, alpha / k each) per-group intervals
    [L_g, U_g] (:func:`group_intervals`): [max(0, max L - min U), max U - min L]. It has
    coverage >= 1 - alpha whenever the per-group intervals have their level, contains 0 when
    the groups' intervals overlap, and always contains max v - min v (proof in the module
    docstring).

    Args:
        values: (k,) group estimates, none NaN.
        replicates: (B, k) bootstrap replicates, groups resampled independently.
        alpha: 1 - coverage.
        score_parts: optional ``(successes, trials)``, each (k, J), for rate metrics.
        bounds: the metric's range.

    Returns:
        (lo, hi); NaN when a group's interval is undefined.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> reps = rng.binomial(300, [0.8, 0.8], size=(500, 2)) / 300
        >>> lo, hi = range_interval(np.array([0.80, 0.81]), reps)
        >>> lo == 0.0 and hi > 0.01
        True
    """
    _, lo, hi = _simultaneous(values, replicates, alpha, score_parts, bounds)
    if np.isnan(lo).any() or np.isnan(hi).any():
        return float("nan"), float("nan")
    return float(max(0.0, lo.max() - hi.min())), float(hi.max() - lo.min())


def ratio_interval(
    values: np.ndarray,
    replicates: np.ndarray,
    *,
    alpha: float = ALPHA,
    score_parts: ScoreParts | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[float, float]:
    """Interval for the ratio min_g theta_g / max_g theta_g of k non-negative group values.

    From the same simultaneous per-group intervals as :func:`range_interval`:
    [min L / max U, min(1, min U / max L)] (lower ends are clipped at 0). Coverage >= 1 - alpha
    and min v / max v always inside (module docstring).

    Args:
        values: (k,) non-negative group estimates.
        replicates: (B, k) bootstrap replicates.
        alpha, score_parts, bounds: as :func:`range_interval`.

    Returns:
        (lo, hi); NaN when the ratio is undefined (every upper end is 0: all values are 0) or a
        group's interval is undefined. The upper end is 1 when max L is 0.
    """
    _, lo, hi = _simultaneous(values, replicates, alpha, score_parts, bounds)
    if np.isnan(lo).any() or np.isnan(hi).any():
        return float("nan"), float("nan")
    lo = np.maximum(lo, 0.0)
    max_u, max_l = float(hi.max()), float(lo.max())
    if max_u <= 0:
        return float("nan"), float("nan")
    r_lo = float(lo.min()) / max_u
    r_hi = 1.0 if max_l <= 0 else min(1.0, float(hi.min()) / max_l)
    return r_lo, r_hi


def difference_interval(
    values: np.ndarray,
    replicates: np.ndarray,
    *,
    alpha: float = ALPHA,
    score_parts: ScoreParts | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[float, float]:
    """MOVER interval for the difference theta_a - theta_b of two groups (a = index 0).

    With per-group intervals [L, U] at level 1 - alpha (:func:`group_intervals`) and d = v_a - v_b:
    [d - sqrt((v_a - L_a)^2 + (U_b - v_b)^2), d + sqrt((U_a - v_a)^2 + (v_b - L_b)^2)]
    (Zou & Donner 2008; Newcombe's hybrid score interval when the per-group intervals are
    Wilson's). It always contains d and may extend below 0.

    Args:
        values: (2,) estimates (v_a, v_b).
        replicates: (B, 2) independent bootstrap replicates of a and b.
        alpha, score_parts, bounds: as :func:`range_interval` (score_parts (2, J)).

    Returns:
        (lo, hi); NaN when a group's interval is undefined.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size != 2:
        raise ValueError(f"difference_interval takes two groups, got {v.size}")
    lo, hi = group_intervals(v, replicates, alpha=alpha, score_parts=score_parts, bounds=bounds)
    if np.isnan(lo).any() or np.isnan(hi).any():
        return float("nan"), float("nan")
    d = float(v[0] - v[1])
    down = float(np.hypot(v[0] - lo[0], hi[1] - v[1]))
    up = float(np.hypot(hi[0] - v[0], v[1] - lo[1]))
    return d - down, d + up
