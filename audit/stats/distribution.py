"""What a model predicts, by group: prediction shares and their disparities (no labels needed).

A run without labels cannot measure accuracy by group, but it can still show whether the
model's *predictions* depend on the group: the share of each predicted class per group, and
tests of the gaps between groups. (With labels the same tables describe the model's selection
rates, the "demographic parity" view.)

Uncertainty follows the package's rules (docs/RUN_FORMAT.md, DESIGN.md): per-group intervals
from a multinomial bootstrap of the group's prediction counts, hulled with the Wilson score
interval and the estimate (:func:`audit.stats.intervals.group_intervals`); groups below
``min_group_size`` rows are flagged ``small`` and left out of every test; gaps are tested against
a permutation null (group labels permuted among the usable groups' rows, drawn exactly on the
counts as multivariate hypergeometric tables); the max - min gap's interval comes from
simultaneous per-group intervals (:func:`audit.stats.intervals.range_interval`), so it contains
its estimate and contains 0 when the groups' intervals overlap; Holm runs over every test of the
table.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"pred": ["a", "b"] * 100, "g": ["x"] * 100 + ["y"] * 100})
    >>> dist, disp = prediction_distribution(df, group_cols=["g"], n_boot=200, n_perm=200)
    >>> dist.groupby(["attribute", "group"])["share"].sum().tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from audit.stats.intervals import group_intervals, range_interval
from audit.stats.multiple import holm
from audit.stats.resampling import as_rng, hypergeometric_permutation, multinomial_bootstrap
from audit.stats.rules import ALPHA, MIN_GROUP_SIZE

__all__ = ["DISTRIBUTION_COLUMNS", "PREDICTION_DISPARITY_COLUMNS", "prediction_distribution"]

DISTRIBUTION_COLUMNS = ["attribute", "group", "cls", "n", "count", "share", "ci_low", "ci_high", "small"]
PREDICTION_DISPARITY_COLUMNS = [
    "attribute", "cls", "k", "max_group", "min_group", "max_value", "min_value", "difference",
    "diff_ci_low", "diff_ci_high", "p_value", "p_holm", "significant", "test", "note",
]
ALL = "__all__"
_TOL = 1e-12


def _chi2(counts: np.ndarray) -> np.ndarray:
    """Pearson chi-square statistic of (..., G, C) tables (columns with a zero total contribute 0)."""
    c = np.asarray(counts, dtype=np.float64)
    n_g = c.sum(axis=-1, keepdims=True)
    n_c = c.sum(axis=-2, keepdims=True)
    total = c.sum(axis=(-2, -1), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = n_g * n_c / total
        cell = np.where(e > 0, (c - e) ** 2 / np.where(e > 0, e, 1.0), 0.0)
    return cell.sum(axis=(-2, -1))


def _max_tv(shares: np.ndarray) -> tuple[float, int, int]:
    """Largest total variation distance between two rows of (k, C) shares, and the pair."""
    d = 0.5 * np.abs(shares[:, None, :] - shares[None, :, :]).sum(axis=-1)  # (k, k)
    np.fill_diagonal(d, -1.0)  # a pair of two different groups, also when all distances are 0
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    return float(d[i, j]), int(i), int(j)


def _extremes(v: np.ndarray) -> tuple[int, int]:
    """Indices of the largest and smallest value: two different groups, also when all values tie."""
    imax = int(np.argmax(v))
    imin = int(np.argmin(np.where(np.arange(v.size) == imax, np.inf, v)))
    return (imax, imin) if v[imin] <= v[imax] else (imin, imax)


def _exceed(null: np.ndarray, obs: float) -> int:
    return int(np.sum(null >= obs - _TOL * max(1.0, abs(obs))))


def _sequential(obs: float, exceed: int, n_perm: int, max_perm: int, draw) -> tuple[float, int]:
    """Extend a permutation p-value with fewer than 10 exceedances in rounds (Besag & Clifford 1991):
    ``draw(m)`` returns m more null statistics. Returns (p, draws used)."""
    used = n_perm
    while exceed < 10 and used < max_perm:
        m = min(max(n_perm, 10_000), max_perm - used)
        exceed += _exceed(draw(m), obs)
        used += m
    return (1.0 + exceed) / (1.0 + used), used


def prediction_distribution(
    predictions: pd.DataFrame,
    *,
    group_cols: Sequence[str],
    pred_col: str = "pred",
    classes: Sequence[str] | None = None,
    min_group_size: int = MIN_GROUP_SIZE,
    n_boot: int = 1000,
    n_perm: int = 1000,
    alpha: float = ALPHA,
    seed: int = 0,
    max_perm: int = 100_000,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Share of each predicted class by group, and tests of its dependence on the group.

    For every attribute in ``group_cols`` (each on its own; no intersections):

    * **distribution**: for each group and class, ``count`` of rows predicted as the class, ``share``
      = count / n (shares sum to 1 per group), and a 1 - ``alpha`` interval (multinomial bootstrap of
      the group's counts, hulled with the Wilson interval and the estimate: it always contains the
      share). ``small`` marks groups with n < ``min_group_size``; they are left out of the tests.
    * **disparities**: one row ``cls = "__all__"``: a permutation test of independence of group and
      predicted class over the usable groups (statistic: Pearson's chi-square of the group x class
      counts; ``difference`` is the largest total variation distance between two groups' prediction
      distributions, those two groups in ``max_group`` / ``min_group``); and one row per predicted
      class: the max - min gap of its share across the usable groups with a 1 - ``alpha`` interval
      (:func:`audit.stats.intervals.range_interval`) and the permutation p-value of that gap.
      Permutations are drawn on the counts (multivariate hypergeometric); tests whose first
      ``n_perm`` draws give fewer than 10 exceedances get more, in rounds, up to ``max_perm`` (so a
      p-value can pass Holm over many tests). Holm runs over every test of the table;
      ``significant`` = p_holm < alpha. Classes never predicted in the usable groups, and the
      independence test when one class is predicted throughout, have nothing to test: p is NaN (not
      counted by Holm) and ``note`` says why.

    Args:
        predictions: one row per image with ``pred_col`` and the group columns (labels not needed).
        group_cols: the attributes.
        pred_col: the predicted class column.
        classes: every class the model can predict, in order (classes never predicted get zero
            shares); default: the predicted values, sorted. Predicted values not in ``classes`` are
            appended.
        min_group_size: groups with fewer rows are flagged and left out of the tests.
        n_boot: bootstrap replicates for the intervals.
        n_perm: permutations per test (before the sequential extension).
        alpha: 1 - interval level, and the level of ``significant``.
        seed: seed of every random draw.
        max_perm: most permutations for one test.

    Returns:
        ``(distribution, disparities)`` with columns :data:`DISTRIBUTION_COLUMNS` and
        :data:`PREDICTION_DISPARITY_COLUMNS` (documented in docs/RUN_FORMAT.md).

    Raises:
        ValueError: a column is missing.
    """
    missing = [c for c in [pred_col, *group_cols] if c not in predictions.columns]
    if missing:
        raise ValueError(f"prediction_distribution: missing columns {missing}; have {list(predictions.columns)}")
    pred = predictions[pred_col].astype(str).to_numpy()
    cls = [str(c) for c in classes] if classes is not None else []
    cls += sorted(set(pred) - set(cls))
    cls_index = {c: i for i, c in enumerate(cls)}
    pred_code = np.array([cls_index[p] for p in pred], dtype=np.int64)
    C = len(cls)
    rng_boot = as_rng(np.random.SeedSequence([seed, 11]))
    rng_perm = as_rng(np.random.SeedSequence([seed, 12]))
    dist_rows: list[dict] = []
    disp_rows: list[dict] = []
    for attr in group_cols:
        g_str = predictions[attr].astype(str).to_numpy()
        names, g_code = np.unique(g_str, return_inverse=True)
        G = len(names)
        counts = np.zeros((G, C), dtype=np.int64)
        np.add.at(counts, (g_code, pred_code), 1)
        n = counts.sum(axis=1)  # (G,)
        share = counts / np.maximum(n, 1)[:, None]  # (G, C)
        reps = multinomial_bootstrap(counts, n_boot=n_boot, seed=rng_boot) / np.maximum(n, 1)[None, :, None]
        lo, hi = group_intervals(share.ravel(), reps.reshape(reps.shape[0], G * C), alpha=alpha,
                                 score_parts=(counts.reshape(G * C, 1), np.repeat(n, C)[:, None]))
        lo, hi = lo.reshape(G, C), hi.reshape(G, C)  # every (group, class) cell at once
        small = n < min_group_size
        for gi in range(G):
            for c in range(C):
                dist_rows.append({"attribute": attr, "group": str(names[gi]), "cls": cls[c], "n": int(n[gi]),
                                  "count": int(counts[gi, c]), "share": float(share[gi, c]),
                                  "ci_low": float(lo[gi, c]), "ci_high": float(hi[gi, c]), "small": bool(small[gi])})
        disp_rows += _attribute_tests(attr, names, counts, reps, cls, small, min_group_size=min_group_size,
                                      n_perm=n_perm, max_perm=max_perm, alpha=alpha, rng=rng_perm)
    dist = pd.DataFrame(dist_rows, columns=DISTRIBUTION_COLUMNS)
    dist = dist.astype({"n": "int64", "count": "int64", "share": "float64", "ci_low": "float64",
                        "ci_high": "float64", "small": "bool"})
    disp = pd.DataFrame(disp_rows, columns=PREDICTION_DISPARITY_COLUMNS)
    disp["p_holm"] = holm(disp["p_value"].to_numpy(np.float64))
    disp["significant"] = (disp["p_holm"] < alpha).fillna(False).astype(bool)
    disp["k"] = disp["k"].astype("int64")
    for c in ("max_value", "min_value", "difference", "diff_ci_low", "diff_ci_high", "p_value", "p_holm"):
        disp[c] = disp[c].astype("float64")
    for c in ("attribute", "cls", "max_group", "min_group", "test", "note"):
        col = disp[c].astype(object)
        disp[c] = col.where(col.notna(), "").astype(str)
    return dist, disp


def _attribute_tests(attr: str, names: np.ndarray, counts: np.ndarray, reps: np.ndarray, cls: list[str],
                     small: np.ndarray, *, min_group_size: int, n_perm: int, max_perm: int, alpha: float,
                     rng: np.random.Generator) -> list[dict]:
    """The disparity rows of one attribute (p_holm / significant are filled in by the caller)."""
    ok = np.flatnonzero(~small)
    k = len(ok)
    n_excl = len(names) - k
    excl = f"{n_excl} group(s) excluded: n < min_group_size={min_group_size}" if n_excl else ""
    nan = float("nan")
    blank = {"max_group": "", "min_group": "", "max_value": nan, "min_value": nan, "difference": nan,
             "diff_ci_low": nan, "diff_ci_high": nan, "p_value": nan}
    indep = f"permutation test of independence (chi-square), {n_perm} perms"
    gap_test = f"permutation max-min gap, {n_perm} perms"
    if k < 2:
        note = f"fewer than 2 groups with n >= min_group_size={min_group_size}"
        return [{"attribute": attr, "cls": c, "k": k, **blank, "test": indep if c == ALL else gap_test, "note": note}
                for c in [ALL, *cls]]
    sub = counts[ok]  # (k, C)
    n_u = sub.sum(axis=1)  # (k,)
    share = sub / n_u[:, None]
    group_names = [str(names[i]) for i in ok]
    perm = hypergeometric_permutation(sub, n_perm=n_perm, seed=rng) if n_perm > 0 else None  # (P, k, C)
    rows: list[dict] = []

    # independence of group and predicted class
    present = sub.sum(axis=0) > 0
    row = {"attribute": attr, "cls": ALL, "k": k, **blank, "test": indep}
    tv, i, j = _max_tv(share)
    row.update(max_group=group_names[i], min_group=group_names[j], difference=tv)
    if present.sum() < 2:
        row["note"] = "; ".join(x for x in ["a single class is predicted in every usable group: nothing to test",
                                            excl] if x)
    else:
        obs = float(_chi2(sub))
        what = (f"difference: largest total variation distance between two groups' prediction distributions "
                f"({group_names[i]} vs {group_names[j]}); chi-square = {obs:.3g}")
        row["note"] = "; ".join(x for x in [what, excl] if x)
        if perm is not None:
            exceed = _exceed(_chi2(perm), obs)
            row["p_value"] = (1.0 + exceed) / (1.0 + n_perm)
            if exceed < 10 and max_perm > n_perm:
                row["p_value"], used = _sequential(
                    obs, exceed, n_perm, max_perm,
                    lambda m: _chi2(hypergeometric_permutation(sub[:, present], n_perm=m, seed=rng)))
                row["test"] = (f"permutation test of independence (chi-square), {used} perms "
                               "(sequential: extended while p was small)")
    rows.append(row)

    # each class's max - min share gap
    for c, name in enumerate(cls):
        row = {"attribute": attr, "cls": name, "k": k, **blank, "test": gap_test, "note": excl}
        if not present[c]:
            row["note"] = "; ".join(x for x in ["never predicted in the usable groups: nothing to test", excl] if x)
            rows.append(row)
            continue
        v = share[:, c]
        imax, imin = _extremes(v)
        diff = float(v[imax] - v[imin])
        row.update(max_group=group_names[imax], min_group=group_names[imin], max_value=float(v[imax]),
                   min_value=float(v[imin]), difference=diff)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            row["diff_ci_low"], row["diff_ci_high"] = range_interval(
                v, reps[:, ok, c], alpha=alpha, score_parts=(sub[:, c:c + 1], n_u[:, None]))
        if perm is not None:
            ps = perm[:, :, c] / n_u[None, :]
            exceed = _exceed(ps.max(axis=1) - ps.min(axis=1), diff)
            row["p_value"] = (1.0 + exceed) / (1.0 + n_perm)
            if exceed < 10 and max_perm > n_perm:
                two = np.stack([sub[:, c], n_u - sub[:, c]], axis=1)  # (k, 2): the class vs the rest

                def draw(m: int, two: np.ndarray = two) -> np.ndarray:
                    s = hypergeometric_permutation(two, n_perm=m, seed=rng)[:, :, 0] / n_u[None, :]
                    return s.max(axis=1) - s.min(axis=1)

                row["p_value"], used = _sequential(diff, exceed, n_perm, max_perm, draw)
                row["test"] = f"permutation max-min gap, {used} perms (sequential: extended while p was small)"
        rows.append(row)
    return rows
