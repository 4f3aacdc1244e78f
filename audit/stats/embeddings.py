"""Group structure in image embeddings: dispersion, centroid distances, linear probes, MMD.

All embeddings are L2-normalised first. Conventions that change numbers:

* dispersion of a group = mean cosine distance of its members to the centroid direction.
  For unit vectors x_i with mean c this equals exactly 1 - ||c|| (sum_i x_i . c/||c|| = n ||c||),
  which makes the bootstrap a matrix product: c* = W X / n for multiplicity weights W. The
  interval is the basic (reverse-percentile) bootstrap interval, because ||c*|| is biased
  upwards and the plain percentile interval would miss the estimate for diffuse groups.
* centroid distance = 1 - cos(c_a, c_b); its p-value permutes the group labels of the two
  groups' pooled rows (P random subsets of size n_a; sums as a 0/1-matrix product).
* MMD^2: unbiased estimator, RBF kernel exp(-||x - y||^2 / (2 s^2)), s = median pairwise
  distance (on at most 1,000 pooled points); permutation p-value, +1 corrected.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from audit.errors import UsageError
from audit.stats.multiple import holm
from audit.stats.resampling import (
    as_rng,
    index_bootstrap_weights,
    multinomial_bootstrap,
    percentile_ci,
    permutation_pvalue,
)
from audit.stats.rules import ALPHA, MIN_GROUP_SIZE

__all__ = [
    "EMBEDDING_DISTANCE_COLUMNS",
    "EMBEDDING_GROUP_COLUMNS",
    "LINEAR_PROBE_COLUMNS",
    "MMD_COLUMNS",
    "PROJECTION_BASE_COLUMNS",
    "embedding_group_stats",
    "linear_probe",
    "mmd_test",
    "projection",
]

EMBEDDING_GROUP_COLUMNS = ["attribute", "group", "n", "dispersion", "dispersion_ci_low", "dispersion_ci_high",
                           "small"]
EMBEDDING_DISTANCE_COLUMNS = ["attribute", "group_a", "group_b", "n_a", "n_b", "cosine_distance", "p_value", "p_holm",
                              "note"]
LINEAR_PROBE_COLUMNS = ["attribute", "k", "n", "balanced_accuracy", "bacc_ci_low", "bacc_ci_high", "auc",
                        "majority_rate", "null_mean", "null_p95", "p_value", "note"]
MMD_COLUMNS = ["attribute", "group_a", "group_b", "n_a", "n_b", "mmd2", "p_value", "p_holm", "estimator"]
PROJECTION_BASE_COLUMNS = ["row_id", "x", "y", "method"]

_CHUNK = 20_000_000  # elements per temporary matrix


def _normalise(emb: np.ndarray) -> np.ndarray:
    x = np.asarray(emb, dtype=np.float32)
    if x.ndim != 2:
        raise UsageError(f"embeddings must be an (N, D) array; got shape {x.shape}")
    nrm = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.isfinite(x).all():
        raise UsageError("embeddings contain NaN or Inf; recompute them or drop those rows")
    if (nrm == 0).any():
        raise UsageError(f"embedding row {int(np.flatnonzero(nrm[:, 0] == 0)[0])} is all zeros")
    return x / nrm


def _codes(groups: pd.DataFrame, col: str, n: int) -> tuple[np.ndarray, list[str]]:
    if col not in groups.columns:
        raise UsageError(f"group column {col!r} not found; available: {list(groups.columns)}")
    if len(groups) != n:
        raise UsageError(f"groups has {len(groups)} rows but the embeddings have {n}")
    codes, names = pd.factorize(groups[col].astype("string").fillna("<missing>"), sort=True)
    return codes.astype(np.int64), [str(x) for x in names]


def _boot_dispersion(xg: np.ndarray, *, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B,) bootstrap replicates of 1 - ||mean|| for unit rows xg (n, D)."""
    n = len(xg)
    out = np.empty(n_boot)
    chunk = max(1, min(n_boot, _CHUNK // max(n, 1)))
    for s in range(0, n_boot, chunk):
        m = min(chunk, n_boot - s)
        w = index_bootstrap_weights(n, n_boot=m, seed=rng).astype(np.float32)  # (m, n)
        c = (w @ xg) / n  # (m, D)
        out[s:s + m] = 1.0 - np.linalg.norm(c.astype(np.float64), axis=1)
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _random_subset_masks(n: int, k: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """(m, n) float32 0/1 rows, each with exactly k ones at random positions."""
    keys = rng.random((m, n))
    idx = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (m, 1))
    mask = np.zeros((m, n), dtype=np.float32)
    np.put_along_axis(mask, idx, 1.0, axis=1)
    return mask


def embedding_group_stats(
    emb: np.ndarray,
    groups: pd.DataFrame,
    *,
    group_cols: Sequence[str],
    n_perm: int = 1000,
    n_boot: int = 1000,
    alpha: float = ALPHA,
    seed: int = 0,
    min_group_size: int = MIN_GROUP_SIZE,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-group dispersion and between-group centroid distances (tables ``embedding_groups``,
    ``embedding_distances``).

    Args:
        emb: (N, D) embeddings (normalised here).
        groups: N rows with ``group_cols``.
        n_perm: label permutations per pair of groups.
        n_boot: bootstrap replicates for the dispersion interval.
        alpha: 1 - interval coverage.
        seed: random seed.
        min_group_size: groups with fewer rows are flagged ``small`` (their dispersion is shown
            with its interval) and their pairs are not tested (``note`` says so).

    Returns:
        (embedding_groups, embedding_distances); p_holm adjusts over all tested pairs of all attributes.
    """
    x = _normalise(emb)
    rng = as_rng(seed)
    grows, drows = [], []
    for col in group_cols:
        codes, names = _codes(groups, col, len(x))
        sums = np.zeros((len(names), x.shape[1]), dtype=np.float64)
        for g in range(len(names)):
            sums[g] = x[codes == g].sum(axis=0, dtype=np.float64)
        n = np.bincount(codes, minlength=len(names))
        cent = sums / n[:, None]
        for g, name in enumerate(names):
            disp = 1.0 - float(np.linalg.norm(cent[g]))
            lo = hi = np.nan
            if n[g] >= 2 and n_boot > 0:
                # basic (reverse-percentile) interval: ||c*|| is biased upwards by ~tr(S)/(2n||c||),
                # so the plain percentile interval of 1 - ||c*|| sits below the estimate for diffuse groups
                qlo, qhi = percentile_ci(_boot_dispersion(x[codes == g], n_boot=n_boot, rng=rng), alpha=alpha)
                lo, hi = 2 * disp - qhi, 2 * disp - qlo
            grows.append((col, name, int(n[g]), disp if n[g] >= 2 else np.nan, float(lo), float(hi),
                          bool(n[g] < min_group_size)))
        for a, b in itertools.combinations(range(len(names)), 2):
            dist = 1.0 - float(_cos(cent[a], cent[b]))
            p = np.nan
            note = ""
            if min(n[a], n[b]) < min_group_size:
                note = f"not tested: n < min_group_size={min_group_size}"
            elif n_perm > 0:
                xab = np.concatenate([x[codes == a], x[codes == b]])  # (n_a + n_b, D)
                tot = sums[a] + sums[b]
                null = np.empty(n_perm)
                chunk = max(1, min(n_perm, _CHUNK // len(xab)))
                for s in range(0, n_perm, chunk):
                    m = min(chunk, n_perm - s)
                    sa = (_random_subset_masks(len(xab), int(n[a]), m, rng) @ xab).astype(np.float64)  # (m, D)
                    null[s:s + m] = 1.0 - _cos(sa, tot[None, :] - sa)
                p = float(permutation_pvalue(dist, null))
            drows.append((col, names[a], names[b], int(n[a]), int(n[b]), dist, p, note))
    g_df = pd.DataFrame(grows, columns=EMBEDDING_GROUP_COLUMNS)
    d_df = pd.DataFrame(drows, columns=[c for c in EMBEDDING_DISTANCE_COLUMNS if c != "p_holm"])
    d_df.insert(7, "p_holm", holm(d_df["p_value"].to_numpy(np.float64)))
    return g_df, d_df[EMBEDDING_DISTANCE_COLUMNS]


def _ridge_oof_scores(
    z: np.ndarray, codes: np.ndarray, k: int, *, cv: int, seed: int, ridge: float
) -> np.ndarray:
    """Out-of-fold decision scores ``(P, n, k)`` of a ridge (least-squares) linear probe.

    ``codes`` is ``(P, n)``: row 0 the observed labels, further rows permutations of them. Per fold
    the ridge solution is linear in the targets, ``W = (Zc'Zc + ridge I)^-1 Zc' Y``, so one matrix
    ``M`` serves the observed labels and every permutation at once (the permutation null costs a
    few matrix products instead of ``P x cv`` refits). Equal, up to a positive factor per fold,
    to scikit-learn's ``RidgeClassifier(alpha=ridge)`` decision function (a test checks this).
    """
    from sklearn.model_selection import StratifiedKFold

    p_, n = codes.shape
    scores = np.zeros((p_, n, k))
    onehot = np.zeros((p_, n, k))
    np.put_along_axis(onehot, codes[:, :, None], 1.0, axis=2)
    for tr, te in StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed).split(z, codes[0]):
        mu = z[tr].mean(axis=0)
        zc = z[tr] - mu  # (n_tr, d)
        m = np.linalg.solve(zc.T @ zc + ridge * np.eye(z.shape[1]), zc.T)  # (d, n_tr)
        y_tr = onehot[:, tr, :]  # (P, n_tr, k)
        w = np.einsum("dn,pnk->pdk", m, y_tr)  # (P, d, k)
        scores[:, te, :] = np.einsum("td,pdk->ptk", z[te] - mu, w) + y_tr.mean(axis=1)[:, None, :]
    return scores


def _macro_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC from decision scores: binary on the score difference, else macro one-vs-rest."""
    from sklearn.metrics import roc_auc_score

    if scores.shape[1] == 2:
        return float(roc_auc_score(y, scores[:, 1] - scores[:, 0]))
    return float(np.mean([roc_auc_score(y == c, scores[:, c]) for c in range(scores.shape[1])]))


def _bacc_from_cm(cm: np.ndarray) -> np.ndarray:
    """Balanced accuracy (mean recall) from (..., k, k) confusion matrices."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    return (tp / np.maximum(cm.sum(axis=-1), 1)).mean(axis=-1)


def linear_probe(
    emb: np.ndarray,
    groups: pd.DataFrame,
    *,
    attribute: str,
    cv: int = 5,
    n_perm: int = 200,
    n_boot: int = 1000,
    max_rows: int = 20_000,
    pca_dim: int = 64,
    ridge: float = 1.0,
    alpha: float = ALPHA,
    seed: int = 0,
    min_group_size: int = 1,
) -> pd.DataFrame:
    """Can a linear model read the group from the embedding? (table ``linear_probe``)

    Groups with fewer than ``max(cv, min_group_size)`` rows are left out of the probe (named in
    ``note``).

    Standardised features (PCA to ``pca_dim`` components first when D > pca_dim; PCA is label-free
    and fitted on all rows used), a stratified ``cv``-fold ridge (least-squares, one-vs-rest)
    linear classifier, out-of-fold balanced accuracy (interval: multinomial bootstrap of the
    out-of-fold confusion matrix) and AUC (macro one-vs-rest for k > 2). The null: the same
    probe on ``n_perm`` permutations of the group labels; p = (1 + #{null >= observed}) /
    (n_perm + 1). Above ``max_rows`` rows a stratified random subsample is used. All of this is
    stated in ``note``.

    Why ridge rather than logistic regression: its solution is linear in the labels, so the
    permutation null is computed for all permutations in one pass (a logistic probe needs
    ``n_perm x cv`` iterative refits, minutes instead of a second); on the linear-separability
    question a probe asks, the two agree closely (the test compares them).

    Returns:
        One-row DataFrame with columns :data:`LINEAR_PROBE_COLUMNS`.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = _normalise(emb)
    codes, names = _codes(groups, attribute, len(x))
    rng = as_rng(seed)
    notes = []
    counts = np.bincount(codes, minlength=len(names))
    keep_cls = counts >= max(cv, min_group_size)
    if not keep_cls.all():
        dropped = [f"{names[i]} (n={int(counts[i])})" for i in np.flatnonzero(~keep_cls)]
        rule = f"min_group_size={min_group_size}" if min_group_size > cv else f"cv={cv}"
        notes.append(f"groups below {rule} left out: {', '.join(dropped)}")
    idx = np.flatnonzero(keep_cls[codes])
    if len(idx) > max_rows:  # stratified subsample
        share = max_rows / len(idx)
        picked = [rng.choice(idx[codes[idx] == g], size=max(cv, round(share * (codes[idx] == g).sum())),
                             replace=False) for g in np.unique(codes[idx])]
        idx = np.sort(np.concatenate(picked))
        notes.append(f"stratified subsample of {len(idx)} of {int(keep_cls[codes].sum())} rows")
    present = np.unique(codes[idx])
    if len(present) < 2:
        raise UsageError(f"linear_probe on {attribute!r}: need at least 2 groups with >= {max(cv, min_group_size)} "
                         "rows each")
    remap = -np.ones(len(names), dtype=np.int64)
    remap[present] = np.arange(len(present))
    y = remap[codes[idx]]
    k = len(present)
    z = x[idx].astype(np.float64)
    if z.shape[1] > pca_dim:
        z = PCA(n_components=pca_dim, random_state=seed).fit_transform(z)
        notes.append(f"PCA {x.shape[1]}->{pca_dim} dims (label-free, all rows)")
    z = StandardScaler().fit_transform(z)
    notes.append(f"standardised; {cv}-fold stratified ridge linear probe (alpha={ridge}); "
                 f"null: {n_perm} label permutations through the same folds")
    perms = np.stack([y, *(rng.permutation(y) for _ in range(n_perm))])  # (1 + P, n)
    scores = np.concatenate([
        _ridge_oof_scores(z, perms[s:s + 50], k, cv=cv, seed=seed, ridge=ridge)
        for s in range(0, len(perms), 50)
    ])  # (1 + P, n, k)
    pred = scores.argmax(axis=2)  # (1 + P, n)
    cms = np.stack([np.bincount(perms[i] * k + pred[i], minlength=k * k).reshape(k, k) for i in range(len(perms))])
    bacc = float(_bacc_from_cm(cms[0]))
    null = _bacc_from_cm(cms[1:]) if n_perm > 0 else np.zeros(0)
    boot = multinomial_bootstrap(cms[0].ravel(), n_boot=n_boot, seed=rng).reshape(n_boot, k, k)
    lo, hi = percentile_ci(_bacc_from_cm(boot), alpha=alpha) if n_boot > 0 else (np.nan, np.nan)
    auc = _macro_auc(y, scores[0])
    majority = float(np.bincount(y).max() / len(y))
    p = float(permutation_pvalue(bacc, null)) if n_perm > 0 else np.nan
    row = (attribute, k, len(y), bacc, float(lo), float(hi), auc, majority,
           float(null.mean()) if n_perm else np.nan, float(np.quantile(null, 0.95)) if n_perm else np.nan, p,
           "; ".join(notes))
    return pd.DataFrame([row], columns=LINEAR_PROBE_COLUMNS)


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _mmd2_perm(z: np.ndarray, n_a: int, *, n_perm: int, rng: np.random.Generator, bandwidth: float) -> tuple[float, np.ndarray]:
    """Unbiased MMD^2 of z[:n_a] vs z[n_a:] and its permutation null (P,)."""
    n = len(z)
    n_b = n - n_a
    K = np.exp(-_sqdist(z, z) / np.float32(2.0 * bandwidth**2)).astype(np.float32)  # (n, n)
    np.fill_diagonal(K, 1.0)
    ksum = K.sum(dtype=np.float64)
    rowsum = K.sum(axis=1, dtype=np.float64)

    def stat(q: np.ndarray, r: np.ndarray) -> np.ndarray:
        # q = z'Kz, r = z'K1 for the indicator z of group a
        kaa = (q - n_a) / (n_a * (n_a - 1))
        kbb = (ksum - 2 * r + q - n_b) / (n_b * (n_b - 1))
        kab = (r - q) / (n_a * n_b)
        return kaa + kbb - 2 * kab

    zi = np.zeros(n, dtype=np.float32)
    zi[:n_a] = 1
    obs = float(stat(np.array(zi @ K @ zi, dtype=np.float64), np.array(zi @ rowsum)))
    null = np.empty(n_perm)
    chunk = max(1, min(n_perm, _CHUNK // n))
    for s in range(0, n_perm, chunk):
        m = min(chunk, n_perm - s)
        Z = _random_subset_masks(n, n_a, m, rng)  # (m, n)
        KZ = Z @ K  # (m, n)
        q = (KZ * Z).sum(axis=1, dtype=np.float64)
        null[s:s + m] = stat(q, Z.astype(np.float64) @ rowsum)
    return obs, null


def mmd_test(
    emb: np.ndarray,
    groups: pd.DataFrame,
    *,
    attribute: str,
    n_perm: int = 500,
    seed: int = 0,
    max_exact: int = 10_000,
    min_group_size: int = 2,
) -> pd.DataFrame:
    """Kernel two-sample test (unbiased MMD^2, RBF, median heuristic) for every pair of groups (table ``mmd``).

    Pairs with more than ``max_exact`` rows together are tested on a random subsample of
    ``max_exact`` rows drawn proportionally from the two groups (the kernel matrix is
    quadratic in size); the ``estimator`` column then reads "subsampled n=...".

    Pairs with a group below ``min_group_size`` rows are not tested (``estimator`` says so).

    Returns:
        DataFrame with columns :data:`MMD_COLUMNS`; p_holm over the tested pairs.
    """
    x = _normalise(emb)
    codes, names = _codes(groups, attribute, len(x))
    rng = as_rng(seed)
    rows = []
    for a, b in itertools.combinations(range(len(names)), 2):
        ia, ib = np.flatnonzero(codes == a), np.flatnonzero(codes == b)
        na, nb = len(ia), len(ib)
        if min(na, nb) < max(2, min_group_size):
            rows.append((attribute, names[a], names[b], na, nb, np.nan, np.nan,
                         f"not tested: n < min_group_size={max(2, min_group_size)}"))
            continue
        est = "unbiased"
        if na + nb > max_exact:
            ma = max(2, round(max_exact * na / (na + nb)))
            ia = rng.choice(ia, size=min(na, ma), replace=False)
            ib = rng.choice(ib, size=min(nb, max(2, max_exact - len(ia))), replace=False)
            est = f"subsampled n={len(ia) + len(ib)}"
        if len(ia) < 2 or len(ib) < 2:
            rows.append((attribute, names[a], names[b], na, nb, np.nan, np.nan, "too few rows"))
            continue
        z = np.concatenate([x[ia], x[ib]])
        sub = z[rng.choice(len(z), size=min(len(z), 1000), replace=False)].astype(np.float64)
        d = np.sqrt(_sqdist(sub, sub))
        bw = float(np.median(d[np.triu_indices(len(sub), 1)]))
        obs, null = _mmd2_perm(z, len(ia), n_perm=n_perm, rng=rng, bandwidth=bw if bw > 0 else 1.0)
        rows.append((attribute, names[a], names[b], na, nb, obs, float(permutation_pvalue(obs, null)), est))
    out = pd.DataFrame(rows, columns=[c for c in MMD_COLUMNS if c != "p_holm"])
    out.insert(7, "p_holm", holm(out["p_value"].to_numpy(np.float64)))
    return out[MMD_COLUMNS]


def projection(
    emb: np.ndarray,
    meta: pd.DataFrame,
    *,
    method: Literal["pca", "umap"] = "pca",
    group_cols: Sequence[str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """2-D projection of the embeddings for plotting (table ``projection``).

    Args:
        emb: (N, D) embeddings.
        meta: N rows; ``row_id`` (else 0..N-1), optional label / pred / correct and group columns.
        method: "pca" (sklearn) or "umap" (needs the optional umap-learn package).
        group_cols: group columns to carry (default: every column of ``meta`` other than
            row_id / label / pred / correct).

    Returns:
        DataFrame: row_id, x, y, method, <group columns>, label, pred, correct.
    """
    x = _normalise(emb)
    if len(meta) != len(x):
        raise UsageError(f"meta has {len(meta)} rows but the embeddings have {len(x)}")
    if method == "pca":
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=seed).fit_transform(x.astype(np.float64))
    elif method == "umap":
        try:
            import umap  # type: ignore[import-not-found]
        except ImportError as e:
            raise UsageError("method='umap' needs the umap-learn package (pip install umap-learn); "
                             "or use method='pca'") from e
        xy = umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    else:
        raise UsageError(f"method must be 'pca' or 'umap', got {method!r}")
    fixed = ("row_id", "label", "pred", "correct")
    cols = list(group_cols) if group_cols is not None else [c for c in meta.columns if c not in fixed]
    out = pd.DataFrame({
        "row_id": meta["row_id"].to_numpy() if "row_id" in meta.columns else np.arange(len(x)),
        "x": xy[:, 0], "y": xy[:, 1], "method": method,
    })
    for c in cols:
        out[c] = meta[c].to_numpy()
    for c in ("label", "pred", "correct"):
        out[c] = meta[c].to_numpy() if c in meta.columns else None
    return out
