"""Retrieval skew of text-to-image rankings (Geyik et al. 2019; Berg et al. 2022).

Skew@k(a) = ln(p_{<=k}(a) / p*(a)), with a zero count replaced by one (p = 1/k) before the
log; MaxSkew@k / MinSkew@k are its max / min over groups. NDKL = (1/Z) sum_{i=1..n}
KL(D_{<=i} || D*) / log2(i + 1), Z = sum_i 1 / log2(i + 1), KL with the natural log and
0 log 0 = 0. Written out here (a few lines of numpy): no maintained library implements it.

Check case (computed by hand from the definitions of Geyik et al. 2019): ranking m,m,m,f,m,f,f,m,f,f with p* = 1/2 gives MaxSkew@3 =
0.693, MinSkew@3 = -0.405, MaxSkew@5 = 0.470, MinSkew@5 = -0.916, NDKL = 0.362.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from audit.errors import UsageError

__all__ = ["RETRIEVAL_SKEW_COLUMNS", "ndkl", "retrieval_skew", "skew_at_k"]

RETRIEVAL_SKEW_COLUMNS = ["query", "attribute", "k", "group", "skew", "max_skew", "min_skew", "ndkl", "target"]


def _target_vector(groups: list[str], target: Mapping[str, float]) -> np.ndarray:
    missing = [g for g in groups if g not in target]
    if missing:
        raise UsageError(f"target distribution has no share for group(s) {missing}; give a share for every group")
    p = np.array([float(target[g]) for g in groups])
    if (p <= 0).any() or not np.isclose(p.sum(), 1.0, atol=1e-6):
        raise UsageError(f"target shares must be > 0 and sum to 1; got {dict(zip(groups, p.tolist()))}")
    return p


def skew_at_k(ranking: Sequence[str], target: Mapping[str, float], k: int) -> dict[str, float]:
    """Skew@k for every group in ``target``: ln(p_{<=k}(a) / p*(a)), zero counts replaced by 1/k.

    >>> r = skew_at_k(list("mmmfmffmff"), {"m": 0.5, "f": 0.5}, 3)
    >>> round(r["m"], 3), round(r["f"], 3)
    (0.693, -0.405)
    """
    if k < 1 or k > len(ranking):
        raise UsageError(f"k={k} must be between 1 and the ranking length {len(ranking)}")
    groups = list(target)
    p = _target_vector(groups, target)
    top = list(ranking[:k])
    counts = np.array([top.count(g) for g in groups], dtype=np.float64)
    share = np.maximum(counts, 1.0) / k
    return dict(zip(groups, np.log(share / p).tolist()))


def _kl_prefix(onehot: np.ndarray, p: np.ndarray) -> np.ndarray:
    """KL(D_{<=i} || p) for every prefix i: onehot (n, G) -> (n,)."""
    cum = np.cumsum(onehot, axis=0)  # (n, G)
    d = cum / np.arange(1, len(onehot) + 1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(d > 0, d * np.log(d / p), 0.0)  # 0 log 0 = 0
    return terms.sum(axis=1)


def ndkl(ranking: Sequence[str], target: Mapping[str, float]) -> float:
    """Normalised discounted KL divergence of a ranking from the target distribution.

    >>> round(ndkl(list("mmmfmffmff"), {"m": 0.5, "f": 0.5}), 3)
    0.362
    """
    groups = list(target)
    p = _target_vector(groups, target)
    index = {g: i for i, g in enumerate(groups)}
    unknown = sorted({r for r in ranking if r not in index})
    if unknown:
        raise UsageError(f"ranking holds group(s) {unknown} that the target distribution does not list")
    onehot = np.zeros((len(ranking), len(groups)))
    onehot[np.arange(len(ranking)), [index[r] for r in ranking]] = 1.0
    disc = 1.0 / np.log2(np.arange(1, len(ranking) + 1) + 1.0)
    return float((_kl_prefix(onehot, p) * disc).sum() / disc.sum())


def retrieval_skew(
    scores: np.ndarray,
    group_labels: Sequence[str] | np.ndarray,
    *,
    queries: Sequence[str],
    attribute: str,
    ks: Sequence[int] = (10, 50, 100),
    target: Literal["uniform", "dataset"] | Mapping[str, float] = "uniform",
    ndkl_depth: int | None = None,
) -> pd.DataFrame:
    """Skew@k per group, MaxSkew@k, MinSkew@k and NDKL for each text query (table ``retrieval_skew``).

    Args:
        scores: (Q, N) similarity of each query to each image; higher ranks first.
        group_labels: (N,) group of each image for ``attribute``.
        queries: (Q,) query texts (row names of ``scores``).
        attribute: the group column's name, written to the output.
        ks: cut-offs; those above N are skipped.
        target: "uniform" over the groups present, "dataset" (their shares among the N
            images), or an explicit {group: share}.
        ndkl_depth: rank depth for NDKL (default: the whole ranking).

    Returns:
        DataFrame with columns :data:`RETRIEVAL_SKEW_COLUMNS`, one row per (query, k, group);
        max_skew / min_skew / ndkl repeat within a (query, k).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None, :]
    lab = np.asarray(group_labels).astype(str)
    if s.shape[0] != len(queries):
        raise UsageError(f"scores has {s.shape[0]} rows but {len(queries)} queries were named")
    if s.shape[1] != len(lab):
        raise UsageError(f"scores has {s.shape[1]} columns but group_labels has {len(lab)} entries")
    groups = sorted(set(lab.tolist()))
    if isinstance(target, str):
        if target == "uniform":
            tgt = {g: 1.0 / len(groups) for g in groups}
        elif target == "dataset":
            tgt = {g: float((lab == g).mean()) for g in groups}
        else:
            raise UsageError(f"target must be 'uniform', 'dataset' or a mapping; got {target!r}")
        tname = target
    else:
        tgt = {str(k): float(v) for k, v in target.items()}
        tname = "custom"
    groups = list(tgt)
    p = _target_vector(groups, tgt)
    gi = {g: i for i, g in enumerate(groups)}
    unknown = sorted(set(lab.tolist()) - set(gi))
    if unknown:
        raise UsageError(f"group_labels hold group(s) {unknown} that the target distribution does not list")
    code = np.array([gi[x] for x in lab])
    depth = s.shape[1] if ndkl_depth is None else min(int(ndkl_depth), s.shape[1])
    disc = 1.0 / np.log2(np.arange(1, depth + 1) + 1.0)
    rows = []
    for q, query in enumerate(queries):
        order = np.argsort(-s[q], kind="stable")
        ranked = code[order]  # (N,)
        onehot = np.zeros((depth, len(groups)))
        onehot[np.arange(depth), ranked[:depth]] = 1.0
        nd = float((_kl_prefix(onehot, p) * disc).sum() / disc.sum())
        for k in ks:
            if k > len(ranked):
                continue
            counts = np.bincount(ranked[:k], minlength=len(groups)).astype(np.float64)
            sk = np.log(np.maximum(counts, 1.0) / k / p)
            for g, name in enumerate(groups):
                rows.append((query, attribute, int(k), name, float(sk[g]), float(sk.max()), float(sk.min()), nd, tname))
    return pd.DataFrame(rows, columns=RETRIEVAL_SKEW_COLUMNS)
