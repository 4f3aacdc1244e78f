"""One ledger, every surface: the first three findings of a canary run read the same in the CLI,
report.html, report.md, report.pdf, audit.json, the model card, the dashboard's Overview and the
comparison; and the ledger finds the planted biases and keeps the controls clean."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from audit.runs import Run
from audit.zoo.world import DEFAULT_SPEC as W

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # builds the canary runs (once per session)


def _flat(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _md_plain(text: str) -> str:
    """Markdown as the reader sees it: backslash escapes and entities undone."""
    return html.unescape(re.sub(r"\\(.)", r"\1", text))


@pytest.fixture(scope="module")
def surfaces(canary_runs, tmp_path_factory) -> dict:
    from pypdf import PdfReader

    from audit.report import write_report

    run = Run.open(canary_runs["vit-biased"])
    out = tmp_path_factory.mktemp("surfaces")
    paths = write_report([run.path], out_dir=out, formats=("html", "md", "pdf", "json"), model_card=True)
    return {"run": run, "paths": paths,
            "pdf": "\n".join(p.extract_text() for p in PdfReader(paths["pdf"]).pages)}


def test_first_three_findings_are_the_same_everywhere(surfaces, canary_runs, capsys) -> None:
    from bs4 import BeautifulSoup
    from streamlit.testing.v1 import AppTest

    from audit.cli import main
    from audit.report.compare import compare_runs

    run, paths = surfaces["run"], surfaces["paths"]
    first3 = list(run.findings().sort_values("rank")["text"].head(3))
    assert len(first3) == 3

    # CLI
    assert main(["findings", str(run.path), "-n", "3"]) == 0
    cli = capsys.readouterr().out.splitlines()
    assert [re.sub(r"^\s+\d+\. ", "", line) for line in cli[1:4]] == first3
    # audit.json
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert [f["text"] for f in data["findings"][:3]] == first3 == data["headline"][:3]
    # report.html
    soup = BeautifulSoup(paths["html"].read_text(encoding="utf-8"), "html.parser")
    lis = soup.find("section", id="findings").find("ol", class_="headline").find_all("li")
    assert [li.text for li in lis[:3]] == first3
    # report.md (numbered list)
    md = _md_plain(paths["md"].read_text(encoding="utf-8"))
    for i, h in enumerate(first3, start=1):
        assert f"{i}. {h}" in md
    # report.pdf (wrapping changes only whitespace)
    pdf = _flat(surfaces["pdf"])
    for i, h in enumerate(first3, start=1):
        assert _flat(f"{i}. {h}") in pdf, h
    # model card
    card = _md_plain(paths["model_card"].read_text(encoding="utf-8"))
    for i, h in enumerate(first3, start=1):
        assert f"{i}. {h}" in card
    # dashboard Overview
    import os

    os.environ["VISION_AUDIT_RUNS"] = str(run.path)
    try:
        at = AppTest.from_file(str(ROOT / "dashboards" / "app.py"), default_timeout=120)
        at.run()
    finally:
        del os.environ["VISION_AUDIT_RUNS"]
    assert not at.exception
    shown = _md_plain("\n".join(str(m.value) for m in at.markdown))
    for i, h in enumerate(first3, start=1):
        assert f"{i}. {h}" in shown
    # comparison: leads with the biased run's first findings, each with that run's own numbers
    cmp = compare_runs(run, Run.open(canary_runs["vit-control"]), n_boot=200)
    lead = run.findings().iloc[0]
    pair = cmp.findings[0]
    assert (pair.kind, pair.attribute, pair.metric, pair.scope) == (lead["kind"], lead["attribute"], lead["metric"],
                                                                     lead["scope"])
    assert pair.a_gap == pytest.approx(lead["gap"]) and pair.a_status == lead["status"]


def test_planted_biases_lead_the_ledger(canary_runs) -> None:
    vit = Run.open(canary_runs["vit-biased"]).findings().iloc[0]
    assert (vit["metric"], vit["scope"], vit["attribute"], vit["worst_group"], vit["significant"]) == (
        "tpr", f"class:{W.planted_class}", "background", W.planted_group, True)
    assert vit["worst_value"] < 0.5 and vit["best_value"] > 0.9
    clip = Run.open(canary_runs["clip-biased"]).findings()
    top = clip[clip["significant"]].head(3)
    kinds = set(zip(top["kind"], top["attribute"]))
    assert ("harmful_label", "background") in kinds and ("association", "background") in kinds
    harm = clip[(clip["kind"] == "harmful_label") & (clip["attribute"] == "background")].iloc[0]
    # the 4-block CLIP (retrained 2026-12-02) gives a concept word to 15% of dotted images, never to others
    assert harm["worst_group"] == W.concept_group and harm["gap"] > 0.1 and harm["significant"]
    assert harm["best_value"] == 0.0


def test_controls_have_no_significant_outcome_finding_for_the_ground(canary_runs) -> None:
    from audit.findings import OUTCOME_KINDS

    for name in ("vit-control", "clip-control"):
        f = Run.open(canary_runs[name]).findings()
        bad = f[f["significant"] & f["kind"].isin(OUTCOME_KINDS) & (f["attribute"] == "background")
                & (f["kind"] != "calibration")]
        assert bad.empty, (name, bad["text"].tolist())
