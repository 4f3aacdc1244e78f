"""Comparison of two runs: both values, the difference B - A and its bootstrap interval."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bs4 import BeautifulSoup

from audit.errors import UsageError
from audit.report import write_report
from audit.report.compare import compare_runs
from tests.run_factory import shared_run


@pytest.fixture(scope="module")
def runs() -> tuple:
    return shared_run(kind="classifier", biased=True), shared_run(kind="classifier", biased=False)


def test_differences_match_independent_computation(runs: tuple) -> None:
    a, b = runs
    s = compare_runs(a, b, n_boot=2000, seed=1)
    pa, pb = a.table("predictions"), b.table("predictions")
    rng = np.random.default_rng(7)
    rows = [r for r in s.rows if r.kind == "group" and r.metric == "accuracy" and r.attribute == "background"]
    assert {r.group for r in rows} == set(pa.background)
    for r in rows:
        ca = pa[pa.background == r.group].correct.to_numpy(dtype=float)
        cb = pb[pb.background == r.group].correct.to_numpy(dtype=float)
        assert r.a == pytest.approx(ca.mean()) and r.b == pytest.approx(cb.mean())
        assert r.diff == pytest.approx(cb.mean() - ca.mean())
        assert (r.n_a, r.n_b) == (ca.size, cb.size)
        # an independent row bootstrap of the difference agrees with the multinomial one
        boot = [rng.choice(cb, cb.size).mean() - rng.choice(ca, ca.size).mean() for _ in range(2000)]
        lo, hi = np.percentile(boot, [2.5, 97.5])
        assert r.diff_ci_low == pytest.approx(lo, abs=0.02) and r.diff_ci_high == pytest.approx(hi, abs=0.02)
        assert r.diff_ci_low < r.diff < r.diff_ci_high
    water = next(r for r in rows if r.group == "water")
    assert water.diff_ci_low > 0  # the control fixed the planted bias; the interval excludes 0
    # the findings come from the two ledgers: the biased run's accuracy gap by background, significant in A only
    key = ("performance", "background", "accuracy", "overall", "range")
    fa = a.findings().set_index(["kind", "attribute", "metric", "scope", "family"]).loc[key]
    fb = b.findings().set_index(["kind", "attribute", "metric", "scope", "family"]).loc[key]
    pair = next(f for f in s.findings if (f.kind, f.attribute, f.metric, f.scope, f.family) == key)
    assert (pair.a_gap, pair.a_status, pair.b_gap, pair.b_status) == (
        pytest.approx(fa["gap"]), fa["status"], pytest.approx(fb["gap"]), fb["status"])
    assert pair.a_status == "significant" and pair.b_gap < pair.a_gap
    assert s.headline == [f.text for f in s.findings]
    assert all(r.kind != "max-min gap" for r in s.rows)  # gaps are the ledgers', never re-estimated here
    worst = next(r for r in s.rows if r.kind == "worst group" and r.metric == "accuracy" and r.attribute == "background")
    assert worst.a == pytest.approx(min(r.a for r in rows))


def test_comparison_report_files(runs: tuple, tmp_path) -> None:
    a, b = runs
    paths = write_report([a.path, b.path], out_dir=tmp_path)
    assert set(paths) == {"html", "md", "pdf", "json"}
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["kind"] == "comparison"
    soup = BeautifulSoup(paths["html"].read_text(encoding="utf-8"), "html.parser")
    assert soup.find("script") is None
    trs = soup.find(id="diff-table").find("tbody").find_all("tr")
    assert len(trs) == len(data["rows"])
    for tr in trs:
        rec = data["rows"][int(tr["data-idx"])]
        d = tr.find("td", class_="d").text
        assert d == "n/a" if rec["diff"] is None else abs(float(d) - rec["diff"]) <= 0.0005
        assert tr.find("td", class_="dci").text.startswith("[")
    pairs = soup.find(id="disparity-pairs").find("tbody").find_all("tr")
    assert pairs and "significant after Holm correction" in pairs[0].text
    md = paths["md"].read_text(encoding="utf-8")
    assert "| B − A |" in md or "B − A" in md


def test_three_runs_or_model_card_with_two_is_a_usage_error(runs: tuple, tmp_path) -> None:
    a, b = runs
    with pytest.raises(UsageError, match="one run"):
        write_report([a.path, b.path, a.path], out_dir=tmp_path)
    with pytest.raises(UsageError, match="model-card"):
        write_report([a.path, b.path], out_dir=tmp_path, model_card=True)
    with pytest.raises(UsageError, match="unknown report format"):
        write_report([a.path], out_dir=tmp_path, formats=("docx",))
