"""Retrieval skew and NDKL against a check case computed by hand from the definitions."""

from __future__ import annotations

import numpy as np
import pytest

from audit.errors import UsageError
from audit.stats.retrieval import RETRIEVAL_SKEW_COLUMNS, ndkl, retrieval_skew, skew_at_k

RANKING = list("mmmfmffmff")
HALF = {"m": 0.5, "f": 0.5}


def test_check_values():
    s3, s5 = skew_at_k(RANKING, HALF, 3), skew_at_k(RANKING, HALF, 5)
    assert round(max(s3.values()), 3) == 0.693 and round(min(s3.values()), 3) == -0.405
    assert round(max(s5.values()), 3) == 0.470 and round(min(s5.values()), 3) == -0.916
    assert round(ndkl(RANKING, HALF), 3) == 0.362


def test_ndkl_written_out():
    tot, z = 0.0, 0.0
    for i in range(1, 11):
        pm = RANKING[:i].count("m") / i
        kl = sum(q * np.log(q / 0.5) for q in (pm, 1 - pm) if q > 0)
        tot += kl / np.log2(i + 1)
        z += 1 / np.log2(i + 1)
    assert ndkl(RANKING, HALF) == pytest.approx(tot / z)
    assert ndkl(list("mfmfmfmfmf"), HALF) < ndkl(RANKING, HALF)


def test_table_from_scores():
    scores = -np.arange(10.0)[None, :]  # rank order = column order
    t = retrieval_skew(np.vstack([scores, scores[:, ::-1]]), RANKING, queries=["q1", "q2"], attribute="gender",
                       ks=(3, 5, 50))
    assert list(t.columns) == RETRIEVAL_SKEW_COLUMNS
    r = t[(t["query"] == "q1") & (t.k == 3)].set_index("group")
    assert r.loc["m", "skew"] == pytest.approx(np.log(2)) and r.loc["f", "skew"] == pytest.approx(np.log(2 / 3))
    assert r.max_skew.iloc[0] == pytest.approx(np.log(2)) and r.ndkl.iloc[0] == pytest.approx(ndkl(RANKING, HALF))
    q2 = t[(t["query"] == "q2") & (t.k == 3)].set_index("group")  # reversed ranking f,f,m
    assert q2.loc["f", "skew"] == pytest.approx(np.log((2 / 3) / 0.5))
    assert 50 not in set(t.k)
    d = retrieval_skew(scores, RANKING, queries=["q"], attribute="g", ks=(5,), target={"m": 0.8, "f": 0.2})
    assert d.set_index("group").loc["m", "skew"] == pytest.approx(np.log(0.8 / 0.8))
    with pytest.raises(UsageError, match="sum to 1"):
        retrieval_skew(scores, RANKING, queries=["q"], attribute="g", target={"m": 0.8, "f": 0.8})
