"""Confirmation on the held-out half: the split, the tables' columns, the candidate record and the tests
(exact one-sided Fisher, the difference's interval). The method: :mod:`audit.slices.core`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MEMBER_COLUMNS", "SLICE_COLUMNS", "Candidate", "difference_ci", "fisher_greater", "jaccard",
           "split_halves", "target_size"]

#: columns of the ``slices`` table (documented in docs/RUN_FORMAT.md ("Error slices"))
SLICE_COLUMNS = [
    "slice_id", "scope", "status", "confirmed", "small",
    "n_discover", "discover_error_rate", "discover_rest_error_rate", "discover_p",
    "n_confirm", "n_rest", "errors", "rest_errors", "error_rate", "rest_error_rate",
    "difference", "ci_low", "ci_high", "p_value", "p_adj",
    "n_members", "components", "threshold", "top_words", "overlap", "typical_row_ids",
    "description", "note",
]
#: columns of the ``slice_members`` table
MEMBER_COLUMNS = ["row_id", "slice_id", "score", "half", "rank"]

# --------------------------------------------------------------------------- split
def split_halves(classes: np.ndarray, errors: np.ndarray, *, seed: int | np.random.SeedSequence = 0) -> np.ndarray:
    """Boolean mask of the discovery half, stratified by (class, error).

    Every (class, error) stratum is shuffled and alternately dealt to the two halves; the half
    that gets the odd row of a stratum is drawn at random.

    Args:
        classes: (N,) class codes (any hashable values).
        errors: (N,) booleans.
        seed: seed of the shuffle.

    Returns:
        (N,) bool, True for the discovery half.
    """
    rng = np.random.default_rng(seed)
    _, cls = np.unique(np.asarray(classes).astype(str), return_inverse=True)
    strata = cls.astype(np.int64) * 2 + np.asarray(errors, dtype=np.int64)
    disc = np.zeros(strata.size, dtype=bool)
    for s in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == s))
        start = int(rng.integers(0, 2))
        disc[idx[start::2]] = True
    return disc


# --------------------------------------------------------------------------- mixture
# --------------------------------------------------------------------------- tests
def fisher_greater(a: int, n_a: int, b: int, n_b: int) -> float:
    """One-sided exact Fisher p: errors a / n_a in the slice more frequent than b / n_b in the rest."""
    from scipy.stats import hypergeom

    if n_a == 0 or n_b == 0:
        return float("nan")
    # P(X >= a), X ~ Hypergeom(total rows, total errors, slice rows)
    return float(min(1.0, hypergeom.sf(a - 1, n_a + n_b, a + b, n_a)))


def difference_ci(a: int, n_a: int, b: int, n_b: int, *, n_boot: int, alpha: float,
                   rng: np.random.Generator) -> tuple[float, float]:
    from audit.stats import difference_interval

    ra = rng.binomial(n_a, a / n_a, size=n_boot) / n_a
    rb = rng.binomial(n_b, b / n_b, size=n_boot) / n_b
    lo, hi = difference_interval(np.array([a / n_a, b / n_b]), np.stack([ra, rb], axis=1), alpha=alpha,
                                 score_parts=(np.array([[a], [b]]), np.array([[n_a], [n_b]])),
                                 bounds=(0.0, 1.0))
    return float(lo), float(hi)


# --------------------------------------------------------------------------- candidates
@dataclass
class Candidate:
    scope: str
    components: np.ndarray  # the mixture components of the place
    threshold: float  # log posterior
    scope_rows: np.ndarray  # indices (into the usable rows) of the scope, both halves
    score: np.ndarray  # (len(scope_rows),) log posterior of the place
    disc_members: np.ndarray  # indices of discovery members
    disc_errors: np.ndarray  # the errors among them
    n_discover: int
    discover_rate: float
    discover_rest_rate: float
    discover_p: float
    stats: dict[str, Any] = field(default_factory=dict)


def target_size(min_group_size: int) -> int:
    """Discovery rows a slice's rule aims for: min_group_size + 2 sqrt(min_group_size).

    The halves are random, so a rule that admits m discovery rows admits about m +- sqrt(2 m)
    confirmation rows; aiming above ``min_group_size`` by this margin (65 for the default 50) makes a
    slice that is no more than the rows it needs confirmable about nine times in ten, where aiming
    at ``min_group_size`` itself would make it so about half the time.

    >>> target_size(50)
    65
    """
    return math.ceil(min_group_size + 2.0 * math.sqrt(min_group_size))


#: a slice never grows to rows whose posterior is below this (it has to stay a place in the mixture)
def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    u = np.union1d(a, b).size
    return np.intersect1d(a, b, assume_unique=True).size / u if u else 0.0


