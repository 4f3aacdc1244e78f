"""CLIP association statistics: WEAT / image-EAT, zero-shot label shares, harmful-label rates.

* WEAT (Caliskan et al. 2017) and image-EAT (Steed & Caliskan 2021): s(w, A, B) =
  mean_a cos(w, a) - mean_b cos(w, b); effect size d = (mean_X s - mean_Y s) / std_{X∪Y} s
  (ddof 1); statistic S = sum_X s - sum_Y s; p = share of equal-size re-partitions of X∪Y
  with S_i > S, by exact enumeration when there are at most ``exact_limit`` partitions,
  otherwise Monte Carlo, (1 + #{S_i >= S}) / (n_perm + 1). No maintained library
  implements the permutation test on embeddings, so it is written out here.
* Harmful-label rate (Agarwal et al. 2021): H_g = P(argmax_c sim(x, t_c) is a harmful
  label | g) over a label set mixing group labels, non-human and crime-related labels.
  The result depends on the label set, so its name travels with every row. Rate intervals
  are never narrower than the Wilson interval; the max-min gap's interval comes from
  simultaneous per-group intervals (:mod:`audit.stats.intervals`), so that it covers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from audit.errors import UsageError
from audit.stats.intervals import group_intervals, range_interval
from audit.stats.multiple import holm
from audit.stats.resampling import (
    as_rng,
    hypergeometric_permutation,
    multinomial_bootstrap,
    percentile_ci,
    permutation_pvalue,
    wilson_interval,
)
from audit.stats.rules import ALPHA, MIN_GROUP_SIZE

__all__ = [
    "ASSOCIATION_COLUMNS",
    "HARMFUL_DISPARITY_COLUMNS",
    "HARMFUL_RATE_COLUMNS",
    "ZEROSHOT_LABEL_COLUMNS",
    "AssociationTest",
    "association_table",
    "harmful_label_rates",
    "single_category_eat",
    "weat",
    "zeroshot_label_distribution",
]

ASSOCIATION_COLUMNS = ["test", "attribute", "X", "Y", "A", "B", "n_x", "n_y", "effect_size", "p_value", "n_perm",
                       "exact"]
ZEROSHOT_LABEL_COLUMNS = ["attribute", "group", "label", "label_kind", "n", "share", "ci_low", "ci_high"]
HARMFUL_RATE_COLUMNS = ["attribute", "group", "n", "rate", "ci_low", "ci_high", "small"]
HARMFUL_DISPARITY_COLUMNS = ["attribute", "k", "difference", "diff_ci_low", "diff_ci_high", "max_group", "min_group",
                             "p_value", "p_holm", "significant", "label_set"]


def _unit(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] == 0:
        raise UsageError(f"{name} must be a non-empty (n, D) array of embeddings; got shape {x.shape}")
    nrm = np.linalg.norm(x, axis=1, keepdims=True)
    if (nrm == 0).any():
        raise UsageError(f"{name} row {int(np.flatnonzero(nrm[:, 0] == 0)[0])} is an all-zero embedding")
    return x / nrm


def _assoc(w: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """s(w, A, B) for each row of unit-norm w: (n, D) -> (n,)."""
    return (w @ A.T).mean(axis=1) - (w @ B.T).mean(axis=1)


def _partition_test(values: np.ndarray, n_first: int, observed: float, *, n_perm: int, exact_limit: int,
                    rng: np.random.Generator, stat: str = "sum") -> tuple[float, int, bool]:
    """p-value of a split statistic over equal-size re-partitions of ``values``.

    stat "sum": S = sum(first) - sum(rest); "mean": mean(first) - mean(rest).
    Returns (p, number of partitions used, exact?).
    """
    n = len(values)
    total = values.sum()
    n_rest = n - n_first

    def to_stat(first_sum: np.ndarray) -> np.ndarray:
        if stat == "sum":
            return 2 * first_sum - total
        return first_sum / n_first - (total - first_sum) / n_rest

    n_parts = math.comb(n, n_first)
    tol = 1e-12 * max(1.0, abs(observed))
    if n_parts <= exact_limit:
        idx = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(n), n_first)),
                          dtype=np.int64, count=n_parts * n_first).reshape(n_parts, n_first)
        s = to_stat(values[idx].sum(axis=1))
        return float((s > observed + tol).mean()), n_parts, True
    sums = np.empty(n_perm)
    chunk = max(1, min(n_perm, 20_000_000 // max(n, 1)))
    for start in range(0, n_perm, chunk):
        m = min(chunk, n_perm - start)
        perm = rng.permuted(np.broadcast_to(values, (m, n)), axis=1)  # (m, n)
        sums[start:start + m] = perm[:, :n_first].sum(axis=1)
    s = to_stat(sums)
    return float(permutation_pvalue(observed, s)), int(n_perm), False


def weat(
    X: np.ndarray, Y: np.ndarray, A: np.ndarray, B: np.ndarray, *, n_perm: int = 10_000, seed: int = 0,
    exact_limit: int = 200_000,
) -> dict:
    """Word/Embedding Association Test between targets X, Y and attributes A, B.

    Args:
        X, Y: (n_x, D), (n_y, D) target embeddings (e.g. images of two groups, or words).
        A, B: (n_a, D), (n_b, D) attribute embeddings (e.g. "pleasant" / "unpleasant" texts).
        n_perm: Monte Carlo re-partitions when exact enumeration is too large.
        seed: random seed.
        exact_limit: enumerate all C(n_x + n_y, n_x) partitions when there are at most this many.

    Returns:
        dict with effect_size, statistic, p_value, n_perm (partitions used), exact, n_x, n_y.
    """
    Xu, Yu, Au, Bu = _unit(X, "X"), _unit(Y, "Y"), _unit(A, "A"), _unit(B, "B")
    if len(Xu) + len(Yu) < 3:
        raise UsageError("WEAT needs at least 3 target embeddings in X and Y together")
    sx, sy = _assoc(Xu, Au, Bu), _assoc(Yu, Au, Bu)
    s_all = np.concatenate([sx, sy])
    sd = s_all.std(ddof=1)
    d = (sx.mean() - sy.mean()) / sd if sd > 0 else float("nan")
    S = float(sx.sum() - sy.sum())
    p, used, exact = _partition_test(s_all, len(sx), S, n_perm=n_perm, exact_limit=exact_limit, rng=as_rng(seed))
    return {"effect_size": float(d), "statistic": S, "p_value": p, "n_perm": used, "exact": exact,
            "n_x": len(sx), "n_y": len(sy)}


def single_category_eat(
    w_set: np.ndarray, A: np.ndarray, B: np.ndarray, *, n_perm: int = 10_000, seed: int = 0,
    exact_limit: int = 200_000,
) -> dict:
    """Single-category EAT: association of one target (or the mean over a set) with A versus B.

    With c(x) = mean_{w in W} cos(w, x), d = (mean_A c - mean_B c) / std_{A∪B} c (ddof 1);
    for a single w this is Caliskan's SC-WEAT d(w). p: share of re-partitions of A∪B into
    |A|, |B| whose mean difference exceeds the observed one (exact or Monte Carlo, as in :func:`weat`).

    Returns:
        dict with effect_size, statistic (mean difference), p_value, n_perm, exact, n_x, n_y (= 0).
    """
    W, Au, Bu = _unit(w_set, "w_set"), _unit(A, "A"), _unit(B, "B")
    ca, cb = (W @ Au.T).mean(axis=0), (W @ Bu.T).mean(axis=0)  # (n_a,), (n_b,)
    c_all = np.concatenate([ca, cb])
    sd = c_all.std(ddof=1)
    stat = float(ca.mean() - cb.mean())
    d = stat / sd if sd > 0 else float("nan")
    p, used, exact = _partition_test(c_all, len(ca), stat, n_perm=n_perm, exact_limit=exact_limit,
                                     rng=as_rng(seed), stat="mean")
    return {"effect_size": float(d), "statistic": stat, "p_value": p, "n_perm": used, "exact": exact,
            "n_x": len(W), "n_y": 0}


@dataclass(frozen=True)
class AssociationTest:
    """One association test. X / Y name image groups (values of ``attribute``) or text sets.

    Y = None makes it a single-category test of X against A and B.
    """

    test: str
    A: str
    B: str
    X: str
    Y: str | None = None
    attribute: str | None = None


def association_table(
    image_emb: np.ndarray,
    groups: pd.DataFrame,
    text_emb_sets: Mapping[str, np.ndarray],
    *,
    tests: Sequence[AssociationTest | Mapping],
    n_perm: int = 10_000,
    seed: int = 0,
    exact_limit: int = 200_000,
) -> pd.DataFrame:
    """Run WEAT / image-EAT / single-category tests (table ``association``).

    Args:
        image_emb: (N, D) image embeddings, rows aligned with ``groups``.
        groups: (N rows) group columns.
        text_emb_sets: name -> (m, D) text embeddings (e.g. "pleasant", "career").
        tests: :class:`AssociationTest` (or dicts with its fields). X / Y are image groups when
            ``attribute`` is set and the value occurs in that column, otherwise text-set names.

    Returns:
        DataFrame with columns :data:`ASSOCIATION_COLUMNS`.
    """
    emb = np.asarray(image_emb)
    if len(groups) != len(emb):
        raise UsageError(f"groups has {len(groups)} rows but image_emb has {len(emb)}")
    rows = []
    for i, t in enumerate(tests):
        t = t if isinstance(t, AssociationTest) else AssociationTest(**dict(t))

        def resolve(name: str, role: str, t: AssociationTest = t, i: int = i) -> np.ndarray:
            if t.attribute is not None:
                if t.attribute not in groups.columns:
                    raise UsageError(f"test {t.test!r}: attribute {t.attribute!r} is not a group column; "
                                     f"available: {list(groups.columns)}")
                mask = groups[t.attribute].astype(str).to_numpy() == str(name)
                if mask.any():
                    return emb[mask]
            if name in text_emb_sets:
                return np.asarray(text_emb_sets[name])
            raise UsageError(f"test {t.test!r} (#{i}): {role}={name!r} is neither a value of attribute "
                             f"{t.attribute!r} nor a text set; text sets: {sorted(text_emb_sets)}")

        A, B = resolve(t.A, "A"), resolve(t.B, "B")
        X = resolve(t.X, "X")
        if t.Y is None:
            r = single_category_eat(X, A, B, n_perm=n_perm, seed=seed + i, exact_limit=exact_limit)
        else:
            r = weat(X, resolve(t.Y, "Y"), A, B, n_perm=n_perm, seed=seed + i, exact_limit=exact_limit)
        rows.append((t.test, t.attribute or "", t.X, t.Y or "", t.A, t.B, r["n_x"], r["n_y"], r["effect_size"],
                     r["p_value"], r["n_perm"], r["exact"]))
    return pd.DataFrame(rows, columns=ASSOCIATION_COLUMNS)


def _zeroshot_argmax(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    img = _unit(image_emb, "image_emb")
    txt = _unit(text_emb, "text_emb")
    out = np.empty(len(img), dtype=np.int64)
    for s in range(0, len(img), 65_536):  # bounded memory for large N
        out[s:s + 65_536] = np.argmax(img[s:s + 65_536] @ txt.T, axis=1)
    return out


def _check_labels(labels_df: pd.DataFrame, text_emb: np.ndarray) -> None:
    for c in ("label", "kind"):
        if c not in labels_df.columns:
            raise UsageError(f"labels_df needs columns 'label' and 'kind'; missing {c!r}")
    if len(labels_df) != len(text_emb):
        raise UsageError(f"labels_df has {len(labels_df)} rows but text_emb has {len(text_emb)} embeddings")


def zeroshot_label_distribution(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    labels_df: pd.DataFrame,
    groups: pd.DataFrame,
    *,
    group_cols: Sequence[str],
    interval: Literal["wilson", "bootstrap"] = "wilson",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Share of images per group whose zero-shot top label is each label (table ``zeroshot_labels``).

    interval "wilson" (default): the Wilson score interval of each share (the marginal of the
    group's multinomial label counts is binomial); unlike a percentile bootstrap it does not
    collapse to [0, 0] for labels never chosen in a group. "bootstrap": percentile interval
    of a multinomial count bootstrap of the group's label counts (``n_boot``, ``seed``).

    Args:
        image_emb: (N, D); text_emb: (L, D) in the same space.
        labels_df: (L rows) with columns label, kind.
        groups: (N rows) with ``group_cols``.

    Returns:
        DataFrame with columns :data:`ZEROSHOT_LABEL_COLUMNS`.
    """
    _check_labels(labels_df, text_emb)
    top = _zeroshot_argmax(image_emb, text_emb)
    rng = as_rng(seed)
    L = len(labels_df)
    labels = labels_df["label"].astype(str).tolist()
    kinds = labels_df["kind"].astype(str).tolist()
    rows = []
    for col in group_cols:
        if col not in groups.columns:
            raise UsageError(f"group column {col!r} not in groups; available: {list(groups.columns)}")
        codes, names = pd.factorize(groups[col].astype("string").fillna("<missing>"), sort=True)
        counts = np.bincount(codes * L + top, minlength=len(names) * L).reshape(len(names), L)
        n = counts.sum(axis=1)
        if interval == "wilson":
            lo, hi = wilson_interval(counts, n[:, None], alpha=alpha)
        elif interval == "bootstrap":
            boot = multinomial_bootstrap(counts, n_boot=n_boot, seed=rng)  # (B, G, L)
            lo, hi = percentile_ci(boot / np.maximum(n, 1)[None, :, None], alpha=alpha)
        else:
            raise UsageError(f"interval must be 'wilson' or 'bootstrap', got {interval!r}")
        for g, name in enumerate(names):
            for j in range(L):
                rows.append((col, str(name), labels[j], kinds[j], int(n[g]), counts[g, j] / n[g], lo[g, j], hi[g, j]))
    return pd.DataFrame(rows, columns=ZEROSHOT_LABEL_COLUMNS)


def harmful_label_rates(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    labels_df: pd.DataFrame,
    groups: pd.DataFrame,
    *,
    group_cols: Sequence[str],
    label_set: str,
    harmful_kinds: Sequence[str] = ("harmful",),
    min_group_size: int = MIN_GROUP_SIZE,
    n_boot: int = 1000,
    n_perm: int = 1000,
    alpha: float = ALPHA,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Harmful zero-shot label rate per group and its max-min gap test (Agarwal et al. 2021).

    Args:
        image_emb, text_emb, labels_df, groups, group_cols: as :func:`zeroshot_label_distribution`.
        label_set: name of the label set (written to every disparity row).
        harmful_kinds: label kinds counted as harmful.
        min_group_size: groups with fewer images are flagged and left out of the gap test.
        n_boot, n_perm, alpha, seed: bootstrap / permutation settings.

    Returns:
        (harmful_rates, harmful_disparities) with columns :data:`HARMFUL_RATE_COLUMNS` and
        :data:`HARMFUL_DISPARITY_COLUMNS`. A rate's interval is the hull of its count-bootstrap
        percentile interval and its Wilson score interval (a percentile bootstrap collapses to
        [0, 0] for a group with no harmful label; harmful labels are rare). The gap's interval is
        :func:`audit.stats.intervals.range_interval` over the non-small groups (simultaneous
        per-group intervals: it covers the true max-min gap, contains 0 when the groups
        overlap and always contains the estimate). The gap p-value permutes group labels
        (hypergeometric on counts), +1 corrected, ties between the observed and permuted gaps
        broken at random (exact level for this very discrete statistic); p_holm is over the
        attributes tested. ``n_perm = 0`` leaves p NaN.
    """
    _check_labels(labels_df, text_emb)
    harmful = labels_df["kind"].astype(str).isin(list(harmful_kinds)).to_numpy()
    if not harmful.any():
        raise UsageError(f"label set {label_set!r} has no label of kind {list(harmful_kinds)}; "
                         f"kinds present: {sorted(set(labels_df['kind'].astype(str)))}")
    hit = harmful[_zeroshot_argmax(image_emb, text_emb)]  # (N,) bool
    rng = as_rng(seed)
    rate_rows, disp_rows = [], []
    for col in group_cols:
        if col not in groups.columns:
            raise UsageError(f"group column {col!r} not in groups; available: {list(groups.columns)}")
        codes, names = pd.factorize(groups[col].astype("string").fillna("<missing>"), sort=True)
        G = len(names)
        counts = np.bincount(codes * 2 + hit, minlength=2 * G).reshape(G, 2)  # (G, [not harmful, harmful])
        n = counts.sum(axis=1)
        rate = counts[:, 1] / np.maximum(n, 1)
        boot = multinomial_bootstrap(counts, n_boot=n_boot, seed=rng)  # (B, G, 2)
        brate = boot[..., 1] / np.maximum(n, 1)
        parts = (counts[:, 1:2], n[:, None])  # (G, 1) successes and trials: a rate
        lo, hi = group_intervals(rate, brate, alpha=alpha, score_parts=parts)
        small = n < min_group_size
        for g, name in enumerate(names):
            rate_rows.append((col, str(name), int(n[g]), float(rate[g]), float(lo[g]), float(hi[g]), bool(small[g])))
        ok = np.flatnonzero(~small)
        row = {"attribute": col, "k": len(ok), "label_set": label_set}
        if len(ok) >= 2:
            r = rate[ok]
            imax, imin = int(np.argmax(r)), int(np.argmin(r))
            diff = float(r[imax] - r[imin])
            dlo, dhi = range_interval(r, brate[:, ok], alpha=alpha, score_parts=(parts[0][ok], parts[1][ok]))
            p = np.nan
            if n_perm > 0:
                perm = hypergeometric_permutation(counts[ok], n_perm=n_perm, seed=rng)  # (P, k, 2)
                prate = perm[..., 1] / n[ok]
                p = float(permutation_pvalue(diff, prate.max(axis=1) - prate.min(axis=1), ties="random", seed=rng))
            row.update(difference=diff, diff_ci_low=float(dlo), diff_ci_high=float(dhi),
                       max_group=str(names[ok[imax]]), min_group=str(names[ok[imin]]), p_value=p)
        else:
            row.update(difference=np.nan, diff_ci_low=np.nan, diff_ci_high=np.nan, max_group="", min_group="",
                       p_value=np.nan)
        disp_rows.append(row)
    rates = pd.DataFrame(rate_rows, columns=HARMFUL_RATE_COLUMNS)
    disp = pd.DataFrame(disp_rows, columns=[c for c in HARMFUL_DISPARITY_COLUMNS if c not in ("p_holm", "significant")])
    disp["p_holm"] = holm(disp["p_value"].to_numpy(np.float64))
    disp["significant"] = (disp["p_holm"] < alpha).fillna(False).astype(bool)
    return rates, disp[HARMFUL_DISPARITY_COLUMNS]
