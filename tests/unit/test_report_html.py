"""report.html / report.md / audit.json from a factory run: sections, tables, and that every
number in the performance and disparity tables equals audit.json's."""

from __future__ import annotations

import json
import math
import re

import pytest
from bs4 import BeautifulSoup

from audit.findings import metric_key
from audit.report import build_summary, fmt, write_report
from audit.report.summary import AuditSummary
from tests.run_factory import shared_run

SECTIONS = ["findings", "provenance", "composition", "performance", "disparities", "embeddings", "explanations",
            "faithfulness", "sanity", "limitations", "per-class"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    run = shared_run(kind="classifier", biased=True)
    out = tmp_path_factory.mktemp("report")
    paths = write_report([run.path], out_dir=out, formats=("html", "md", "json"))
    html = paths["html"].read_text(encoding="utf-8")
    return {"run": run, "paths": paths, "html": html, "soup": BeautifulSoup(html, "html.parser"),
            "json": json.loads(paths["json"].read_text(encoding="utf-8"))}


def _num(text: str) -> float | None:
    t = text.strip()
    return None if t == "n/a" else float(t)


def _close(shown: float | None, value: float | None, *, p: bool = False) -> bool:
    if shown is None or value is None:
        return shown is None and value is None
    if p and value < 0.001:
        return math.isclose(shown, value, rel_tol=0.06)
    return abs(shown - value) <= 0.0005 + 1e-12


def _ci(text: str) -> tuple[float | None, float | None]:
    if text.strip() == "n/a":
        return None, None
    m = re.fullmatch(r"\[(\S+), (\S+)\]", text.strip())
    assert m, text
    return _num(m.group(1)), _num(m.group(2))


def test_audit_json_validates_against_schema(report: dict) -> None:
    data = report["json"]
    s = AuditSummary.model_validate(data)
    assert s.schema_version == 1 and data["schema_version"] == 1
    assert s.provenance.fingerprint == report["run"].meta["model"]["fingerprint"]
    assert s.provenance.n_used == 600 and s.provenance.n_skipped == 1
    # composition counts are the samples table's counts
    samples = report["run"].table("samples")
    for c in s.composition:
        if c.attribute == "background":
            assert c.n == int((samples.background == c.group).sum())
    sparse = [c for c in s.composition if c.sparse]
    assert sparse and all(c.n < 50 for c in sparse)
    assert "water×blue" in {c.group for c in sparse}


def test_html_is_self_contained_and_has_sections(report: dict) -> None:
    soup, html = report["soup"], report["html"]
    for sid in SECTIONS:
        assert soup.find("section", id=sid) is not None, sid
    assert soup.find("script") is None
    assert not soup.find_all("link")
    for tag in soup.find_all(src=True):
        assert tag["src"].startswith("data:image/png;base64,")
    for tag in soup.find_all(href=True):
        assert tag["href"].startswith("#"), tag["href"]
    assert "http://" not in html and "https://" not in html
    assert "@media print" in soup.find("style").text
    imgs = soup.find_all("img")
    assert len(imgs) >= 6 and all(i.get("alt") for i in imgs)
    # the explanation gallery holds the worst group's errors beside correct cases
    gallery = soup.find("section", id="explanations")
    kinds = [f["class"] for f in gallery.find_all("figure")]
    assert ["gallery", "error"] in kinds and ["gallery", "correct"] in kinds


def test_performance_numbers_equal_audit_json(report: dict) -> None:
    perf = report["json"]["performance"]
    seen = set()
    for table_id in ("performance-table", "perclass-table"):
        rows = report["soup"].find(id=table_id).find("tbody").find_all("tr")
        assert rows
        for tr in rows:
            i = int(tr["data-idx"])
            seen.add(i)
            rec = perf[i]
            tds = tr.find_all("td")
            assert tds[0].text == rec["attribute"] and tds[1].text == rec["group"]
            # the main table names the scope with the metric (balanced_accuracy vs balanced_accuracy[macro])
            shown = metric_key(rec["metric"], rec["cls"]) if table_id == "performance-table" else rec["metric"]
            assert tds[2].text == shown
            assert _close(_num(tr.find("td", class_="v").text), rec["value"])
            lo, hi = _ci(tr.find("td", class_="ci").text)
            assert _close(lo, rec["ci_low"]) and _close(hi, rec["ci_high"])
            assert ("sparse" in (tr.get("class") or [])) == rec["small"]
    assert seen == set(range(len(perf)))  # every performance row is shown once


def test_disparity_numbers_equal_audit_json(report: dict) -> None:
    disp = report["json"]["disparities"]
    rows = report["soup"].find(id="disparity-table").find("tbody").find_all("tr")
    assert len(rows) == len(disp)
    for tr in rows:
        rec = disp[int(tr["data-idx"])]
        assert _close(_num(tr.find("td", class_="v").text), rec["difference"])
        lo, hi = _ci(tr.find("td", class_="ci").text)
        assert _close(lo, rec["diff_ci_low"]) and _close(hi, rec["diff_ci_high"])
        assert _close(_num(tr.find("td", class_="p").text), rec["p_value"], p=True)
        assert _close(_num(tr.find("td", class_="ph").text), rec["p_holm"], p=True)
        text = tr.find_all("td")[-1].text
        if rec["difference"] is None:
            assert text.startswith("not tested")
        else:
            assert text == ("significant after Holm correction" if rec["significant"]
                            else "not significant after Holm correction")


def test_audit_json_numbers_are_the_run_tables(report: dict) -> None:
    """audit.json carries the run's numbers unchanged (single source)."""
    run = report["run"]
    gp = run.table("group_performance")
    perf = report["json"]["performance"]
    assert len(perf) == len(gp)
    for rec, (_, row) in zip(perf, gp.iterrows()):
        assert rec["value"] == pytest.approx(row["value"], nan_ok=True) if rec["value"] is not None else \
            math.isnan(row["value"])
        assert rec["n"] == row["n"]


def test_findings_and_limitations(report: dict) -> None:
    data = report["json"]
    soup = report["soup"]
    section = soup.find("section", id="findings")
    heads = [li.text for li in section.find("ol", class_="headline").find_all("li")]
    assert heads == data["headline"] == [f["text"] for f in data["findings"][: len(heads)]]
    assert section.find("p", class_="summary").text == data["findings_summary"]
    prov = soup.find("section", id="provenance").text
    assert "interpolation bilinear (zoo)" in prov and "crop_pct 1.0 (zoo)" in prov  # what was used, and from where
    assert "deletion baseline: blur" in prov
    ledger = {(f["kind"], f["attribute"], f["metric"], f["scope"], f["family"]): f for f in data["findings"]}
    bg = next(d for d in data["disparities"] if d["attribute"] == "background" and d["metric"] == "accuracy")
    f_bg = ledger[("performance", "background", "accuracy", "overall", "range")]
    assert bg["significant"] and f_bg["significant"] and f_bg["gap"] == pytest.approx(bg["difference"])
    assert f_bg["worst_group"] == bg["min_group"] and f_bg["best_group"] == bg["max_group"]
    assert "significant after Holm correction" in f_bg["text"]
    colour = next(d for d in data["disparities"] if d["attribute"] == "colour" and d["metric"] == "accuracy")
    f_col = ledger[("performance", "colour", "accuracy", "overall", "range")]
    assert not colour["significant"] and not f_col["significant"]
    assert "not significant after Holm correction" in f_col["text"]
    # ranked: every significant finding comes before every not significant one
    status = [f["status"] for f in data["findings"]]
    assert status.index("not significant") > max(i for i, s_ in enumerate(status) if s_ == "significant")
    # the table in the report shows the same ranks as audit.json, every significant one included
    shown = [int(tr.find("td").text) for tr in section.find("table", id="findings-table").find("tbody").find_all("tr")]
    assert set(shown) >= {f["rank"] for f in data["findings"] if f["significant"]}
    lims = " ".join(data["limitations"])
    assert "water×blue (n=" in lims  # sparse intersection
    assert "rollout failed the model-randomisation sanity check" in lims
    assert "skipped" in lims and "truncated PNG" in lims
    assert "fair" not in " ".join(heads).lower()


def test_markdown_report_has_the_same_rows(report: dict) -> None:
    md = report["paths"]["md"].read_text(encoding="utf-8")
    data = report["json"]
    for h in ["## Findings", "## Dataset composition", "## Performance by group", "## Disparity tests",
              "## Explanation gallery", "## Faithfulness", "## Sanity check", "## Limitations"]:
        assert h in md
    for name in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (report["paths"]["md"].parent / name).is_file()
    main = [r for r in data["performance"] if r["cls"] in ("__all__", "__macro__")]
    for r in main[:10]:
        assert f"| {fmt(r['value'])} | [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] | {r['n']} |" in md


def test_build_summary_is_deterministic_apart_from_timestamp() -> None:
    run = shared_run(kind="classifier", biased=True)
    a = build_summary(run).model_dump()
    b = build_summary(run).model_dump()
    a.pop("generated")
    b.pop("generated")
    assert a == b


def test_clip_report_sections(tmp_path) -> None:
    run = shared_run(kind="clip", biased=True)
    paths = write_report([run.path], out_dir=tmp_path, formats=("html", "json"))
    soup = BeautifulSoup(paths["html"].read_text(encoding="utf-8"), "html.parser")
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert soup.find("section", id="clip") is not None
    rows = soup.find(id="harmful-table").find("tbody").find_all("tr")
    assert len(rows) == len(data["clip"]["harmful_rates"])
    for tr in rows:
        rec = data["clip"]["harmful_rates"][int(tr["data-idx"])]
        assert _close(_num(tr.find_all("td")[3].text), rec["rate"])
    assoc = soup.find(id="association-table").find("tbody").find_all("tr")
    for tr in assoc:
        rec = data["clip"]["association"][int(tr["data-idx"])]
        assert _close(_num(tr.find_all("td")[7].text), rec["effect_size"])
    assert soup.find(id="skew-table") is not None


def test_association_rows_show_the_words_not_the_set_names(tmp_path) -> None:
    import shutil

    from audit.runs import Run

    src = shared_run(kind="clip", biased=True)
    shutil.copytree(src.path, tmp_path / "run")
    run = Run.open(tmp_path / "run")
    run.meta["config"]["clip"] = {"association": [{
        "name": "image-EAT background", "attribute": "background", "x_group": "water", "y_group": "plain",
        "a_texts": ["a photo of joy", "a photo of love"], "b_texts": ["a photo of agony", "a photo of war"]}]}
    run.save_meta()
    paths = write_report([run.path], out_dir=tmp_path / "out", formats=("html", "md", "json"))
    rec = next(r for r in json.loads(paths["json"].read_text())["clip"]["association"]
               if r["test"] == "image-EAT background")
    assert (rec["a_words"], rec["b_words"], rec["prompt"]) == ("joy, love", "agony, war", "a photo of …")
    soup = BeautifulSoup(paths["html"].read_text(encoding="utf-8"), "html.parser")
    cells = [[td.text for td in tr.find_all("td")] for tr in soup.find(id="association-table").find_all("tr")[1:]]
    assert ["image-EAT background", rec["X"], rec["Y"], "joy, love", "agony, war"] in [c[:5] for c in cells]
    assert "joy, love" in paths["md"].read_text(encoding="utf-8")
