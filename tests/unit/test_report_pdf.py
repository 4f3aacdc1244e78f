"""report.pdf: pages, tables and the headline numbers (read back with pypdf)."""

from __future__ import annotations

import json
import re

import pytest
from pypdf import PdfReader

from audit.report import fmt, write_report
from tests.run_factory import shared_run


@pytest.fixture(scope="module")
def pdf(tmp_path_factory: pytest.TempPathFactory) -> dict:
    run = shared_run(kind="classifier", biased=True)
    paths = write_report([run.path], out_dir=tmp_path_factory.mktemp("pdf"), formats=("pdf", "json"))
    reader = PdfReader(paths["pdf"])
    text = "\n".join(p.extract_text() for p in reader.pages)
    return {"reader": reader, "text": text, "flat": re.sub(r"\s+", " ", text),
            "json": json.loads(paths["json"].read_text(encoding="utf-8")), "paths": paths}


def test_pdf_has_pages_and_sections(pdf: dict) -> None:
    assert len(pdf["reader"].pages) >= 4
    for h in ["Findings", "Model and data provenance", "Dataset composition", "Performance by group",
              "Disparity tests", "Embedding statistics", "Explanation gallery", "Faithfulness", "Sanity check",
              "Limitations"]:
        assert h in pdf["text"], h
    assert pdf["reader"].metadata.title.startswith("Audit report")
    # the figures are embedded as images
    n_images = sum(len(p.images) for p in pdf["reader"].pages)
    assert n_images >= 6


def test_pdf_contains_headline_numbers(pdf: dict) -> None:
    flat = pdf["flat"]
    data = pdf["json"]
    for d in data["disparities"]:
        if d["metric"] in ("accuracy", "balanced_accuracy") and d["attribute"] in ("background", "colour"):
            if d["difference"] is None:  # untested rows are listed by reason, not as rows of n/a
                assert f"Not tested ({d['note']})" in flat and d["attribute"] in flat, d
                continue
            for v, kind in [(d["difference"], "rate"), (d["diff_ci_low"], "rate"), (d["diff_ci_high"], "rate"),
                            (d["max_value"], "rate"), (d["min_value"], "rate"), (d["p_holm"], "p")]:
                assert fmt(v, kind) in flat, (d["attribute"], d["metric"], v)
    # the headline sentences themselves (wrapping only changes whitespace)
    for h in data["headline"]:
        assert re.sub(r"\s+", "", h) in re.sub(r"\s+", "", pdf["text"])
    assert data["provenance"]["fingerprint"] in flat


def test_pdf_performance_rows(pdf: dict) -> None:
    flat = pdf["flat"]
    for r in pdf["json"]["performance"]:
        if r["cls"] == "__all__" and r["metric"] == "accuracy":
            assert f"{fmt(r['value'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] {r['n']}" in flat
