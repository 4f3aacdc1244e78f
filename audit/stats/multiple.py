"""Multiple-testing adjustments: Holm (family-wise error) and Benjamini-Hochberg (FDR).

statsmodels is not a dependency, so Holm's step-down procedure is written out here
(six lines); BH uses :func:`scipy.stats.false_discovery_control`. NaN p-values
(tests that could not be run) are left NaN and do not count towards the family size.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as _st

__all__ = ["bh", "holm"]


def holm(p: np.ndarray | list[float]) -> np.ndarray:
    """Holm step-down adjusted p-values, monotone and capped at 1.

    With the m valid p-values sorted ascending, p_adj(i) = max_{j<=i} min(1, (m - j + 1) p(j)).

    >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    adj = np.minimum(1.0, (m - np.arange(m)) * q[order])
    adj = np.maximum.accumulate(adj)
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


def bh(p: np.ndarray | list[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (monotone, capped at 1), NaN kept as NaN.

    >>> bh([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = _st.false_discovery_control(p[ok], method="bh")
    return out
