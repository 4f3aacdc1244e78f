"""Section "Where a finding is carried (heads)" in report.md, report.html, report.pdf and audit.json,
from tiny ``components`` / ``ablations`` / ``component_maps`` tables written into a copy of a factory run."""

from __future__ import annotations

import html
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from bs4 import BeautifulSoup

from audit.components.ablate import ABLATION_COLUMNS
from audit.fmt import fmt, fmt_ci
from audit.report import build_summary, write_report
from audit.report.carried import carried_findings
from audit.report.schema import AblationRow, Gallery
from audit.runs import Run
from tests.run_factory import shared_run

HEADING = "Where a finding is carried (heads)"
ASSOC = "association:image-EAT background"
TPR = "tpr:circle:background"
ASSOC_LABEL = "association image-EAT background by background (water vs plain)"
TPR_LABEL = "recall (TPR) of class 'circle' by background (water vs rest)"
ROLE = "a photo of <b>stripes</b>, a photo of water"  # markup in data stays text everywhere
TARGET_COLUMNS = ["finding_kind", "metric", "attribute", "groups", "label"]


def _components(finding: str, kind: str, metric: str, scale: float) -> list[dict]:
    rows = []
    for layer in (2, 3):
        for head in (0, 1, 2, 3, -1):
            eff = scale * (0.9 if (layer, head) == (3, 1) else 0.1 * (layer + head + 2))
            rows.append({"finding": finding, "finding_kind": kind, "metric": metric,
                         "component": f"L{layer}." + ("MLP" if head < 0 else f"H{head}"), "layer": layer,
                         "head": head, "kind": "mlp" if head < 0 else "head", "n": 400, "before": 1.5,
                         "after": 1.5 - eff, "effect": eff, "ci_low": eff - scale * 0.05,
                         "ci_high": eff + scale * 0.05})
    df = pd.DataFrame(rows)
    df["rank"] = df["effect"].rank(ascending=False, method="first").astype(int)
    df = df.sort_values("rank").reset_index(drop=True)
    df["roles"] = [ROLE if r == 1 else (f"role text {r}" if r <= 5 else "") for r in df["rank"]]
    return df.to_dict("records")


def _ablation(finding: str, k: int, heads: str, *, before: float, after: float, p_adj: float, sig: bool,
              exact: bool, target: tuple[str, str, str, str, str]) -> dict:
    return {"finding": finding, "k": k, "components": heads, "n_test": 200, "before": before, "after": after,
            "change": after - before, "reduction": abs(before) - abs(after), "random_mean": 0.0123,
            "random_q95": 0.05, "n_random": 16 if exact else 1000, "exact": exact, "random_p": p_adj / 2,
            "p_adj": p_adj, "significant": sig, "accuracy_before": 0.9, "accuracy_after": 0.88,
            **dict(zip(TARGET_COLUMNS, target))}


def _maps(finding: str, component: str, layer: int, head: int, groups: tuple[str, str]) -> pd.DataFrame:
    r, c = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    frames = []
    for i, g in enumerate(groups):
        v = np.linspace(0.01, 0.1, 16)[:: (1 if i == 0 else -1)]
        frames.append(pd.DataFrame({"finding": finding, "component": component, "layer": layer, "head": head,
                                    "group": g, "n_images": 32, "row": r.ravel(), "col": c.ravel(),
                                    "value": v.astype(np.float32), "prefix_share": 0.2}))
    return pd.concat(frames, ignore_index=True)


def write_component_tables(run: Run) -> None:
    comp = pd.DataFrame(_components(ASSOC, "association", "effect_size", 0.01)
                        + _components(TPR, "performance", "tpr", 0.2))
    run.write_table("components", comp)
    a_t = ("association", "effect_size", "background", "water vs plain", ASSOC_LABEL)
    t_t = ("performance", "tpr", "background", "water vs rest", TPR_LABEL)
    abl = pd.DataFrame([
        _ablation(ASSOC, 1, "L3.H1", before=1.234567, after=0.778, p_adj=0.0123, sig=True, exact=True, target=a_t),
        _ablation(ASSOC, 2, "L3.H1, L2.H3", before=1.234567, after=1.2, p_adj=0.4, sig=False, exact=False,
                  target=a_t),
        _ablation(TPR, 1, "L3.H1", before=-0.25, after=-0.2, p_adj=1.0, sig=False, exact=True, target=t_t),
    ])
    run.write_table("ablations", abl)
    run.write_table("component_maps", pd.concat([_maps(ASSOC, "L3.H1", 3, 1, ("water", "plain")),
                                                 _maps(TPR, "L3.H1", 3, 1, ("water", "rest"))], ignore_index=True))
    run.meta["components"] = {
        "layers": [2, 3], "n_images": 400, "output": "embedding", "roles_from": "vocabulary", "n_random": 1000,
        "correction": "holm over every finding and k", "notes": [], "vocabulary": ["default"],
        "findings": [{"ref": ASSOC, "kind": "association", "metric": "effect_size", "label": ASSOC_LABEL},
                     {"ref": TPR, "kind": "performance", "metric": "tpr", "label": TPR_LABEL}]}
    run.save_meta()


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from pypdf import PdfReader

    root = tmp_path_factory.mktemp("components")
    shutil.copytree(shared_run(kind="clip", biased=True).path, root / "run")
    run = Run.open(root / "run")
    write_component_tables(run)
    paths = write_report([run.path], out_dir=root / "out", formats=("html", "md", "pdf", "json"))
    pdf = "\n".join(p.extract_text() for p in PdfReader(paths["pdf"]).pages)
    text = paths["html"].read_text(encoding="utf-8")
    return {"run": run, "paths": paths, "md": paths["md"].read_text(encoding="utf-8"), "html": text,
            "soup": BeautifulSoup(text, "html.parser"), "pdf": pdf, "flat": re.sub(r"\s+", " ", pdf),
            "json": json.loads(paths["json"].read_text(encoding="utf-8"))}


def _md_plain(text: str) -> str:
    return html.unescape(re.sub(r"\\(.)", r"\1", text))


# --------------------------------------------------------------------------- audit.json
def test_summary_keeps_the_new_columns_and_the_top_components(reports: dict) -> None:
    data = reports["json"]
    assert [a["label"] for a in data["ablations"]] == [ASSOC_LABEL, ASSOC_LABEL, TPR_LABEL]
    assert [a["metric"] for a in data["ablations"]] == ["effect_size", "effect_size", "tpr"]
    assert data["ablations"][0]["groups"] == "water vs plain" and data["ablations"][0]["exact"] is True
    comps = data["components"]
    assert len(comps) == 10  # the top 5 of each finding, not all 10 components
    for ref in (ASSOC, TPR):
        rows = [c for c in comps if c["finding"] == ref]
        assert [c["rank"] for c in rows] == [1, 2, 3, 4, 5]
        assert rows[0]["component"] == "L3.H1" and rows[0]["roles"] == ROLE
    info = data["components_info"]
    assert info["layers"] == [2, 3] and info["roles_from"] == "vocabulary"
    assert [f["ref"] for f in info["findings"]] == [ASSOC, TPR]
    s = build_summary(reports["run"])
    carried = carried_findings(s)
    assert [f.ref for f in carried] == [ASSOC, TPR] and [f.figure for f in carried] == ["components_0",
                                                                                       "components_1"]
    assert carried[0].num_kind == "effect" and carried[1].num_kind == "rate"
    assert carried[0].effect_kind == "sig"  # effects below 0.01: three decimals would read 0.00x
    assert carried[0].n_significant == 1 and carried[1].n_significant == 0
    assert carried[1].group_names == ["water", "all other images"]


def test_old_ablations_tables_still_load(tmp_path) -> None:
    """A run written before the finding columns existed: defaults, and the reference as the label."""
    shutil.copytree(shared_run(kind="clip", biased=True).path, tmp_path / "run")
    run = Run.open(tmp_path / "run")
    for t in ("components", "component_maps"):  # the factory's CLIP run has them; an old run had ablations only
        run.table_path(t).unlink(missing_ok=True)
    run.meta.pop("components", None)
    run.save_meta()
    old = pd.DataFrame([_ablation("concept", 1, "L2.H1", before=2.0, after=1.4, p_adj=0.008, sig=True,
                                  exact=False, target=("",) * 5)])[ABLATION_COLUMNS]
    run.write_table("ablations", old)
    s = build_summary(run)
    assert s.ablations[0].label == "" and s.ablations[0].metric == "" and s.components == []
    (f,) = carried_findings(s)
    assert f.label == "concept" and f.num_kind == "rate" and f.groups == ()
    from audit.report.markdown import render_markdown

    s.gallery = Gallery()
    md = render_markdown(s, figure_files={}, gallery_files=[], perf_figures=[])
    assert f"## {HEADING}" in md and "| **1** | **L2.H1** |" in md


# --------------------------------------------------------------------------- report.md
def test_markdown_section(reports: dict) -> None:
    md = reports["md"]
    assert f"\n## {HEADING}\n" in md
    part = md.split(f"## {HEADING}", 1)[1].split("\n## ", 1)[0]
    plain = _md_plain(part)
    assert f"### {ASSOC_LABEL}" in plain and f"### {TPR_LABEL}" in plain
    assert "mean-ablated" in plain and "Holm" in plain and "random" in plain and "half" in plain
    # the significant row is bold and says so; the others do not
    assert ("| **1** | **L3.H1** | 200 | 1.235 | 0.778 | **0.457** | 0.012 | 16 (all) | **0.012** | "
            "0.900 → 0.880 | **significant** |") in plain
    assert "| 2 | L3.H1, L2.H3 | 200 | 1.235 | 1.200 | 0.035 | 0.012 | 1000 | 0.400 |" in plain
    assert "| 1 | L3.H1 | 200 | -0.250 | -0.200 | 0.050 | 0.012 | 16 (all) | 1.000 |" in plain
    # top components: effect and interval by the finding's scale, roles as text
    assert f"| 1 | L3.H1 | {fmt(0.009, 'sig')} | {fmt_ci(0.0085, 0.0095, 'sig')} | 400 |" in plain
    assert f"| 1 | L3.H1 | {fmt(0.18)} | {fmt_ci(0.17, 0.19)} | 400 |" in plain
    assert ROLE in plain and "<b>" not in part  # escaped in the file, read back as text
    assert "](figures/components_0.png)" in part and "](figures/components_1.png)" in part
    assert (reports["paths"]["md"].parent / "figures" / "components_1.png").stat().st_size > 1000


# --------------------------------------------------------------------------- report.html
def test_html_section(reports: dict) -> None:
    soup = reports["soup"]
    sec = soup.find("section", id="components")
    assert sec is not None and sec.find("h2").text == HEADING
    assert soup.find("nav").find("a", href="#components").text == HEADING
    assert [h.text for h in sec.find_all("h3")] == [ASSOC_LABEL, TPR_LABEL]
    rows = sec.find(id="ablations-0").find("tbody").find_all("tr")
    cells = [[td.text for td in tr.find_all("td")] for tr in rows]
    assert cells[0] == ["1", "L3.H1", "200", "1.235", "0.778", "0.457", "0.012", "16 (all)", "0.012",
                        "0.900 → 0.880", "significant"]
    assert "sig" in rows[0].get("class", []) and rows[0].find("strong").text == "significant"
    assert "sig" not in rows[1].get("class", []) and cells[1][-1] == "not significant"
    tpr = [[td.text for td in tr.find_all("td")] for tr in sec.find(id="ablations-1").find_all("tr")[1:]]
    assert tpr == [["1", "L3.H1", "200", "-0.250", "-0.200", "0.050", "0.012", "16 (all)", "1.000",
                    "0.900 → 0.880", "not significant"]]
    top = [[td.text for td in tr.find_all("td")] for tr in sec.find(id="top-components-0").find_all("tr")[1:]]
    assert len(top) == 5 and top[0][:4] == ["1", "L3.H1", fmt(0.009, "sig"), fmt_ci(0.0085, 0.0095, "sig")]
    assert top[0][5] == ROLE and sec.find("b") is None  # data is text, never markup
    assert len(sec.find_all("img")) == 2 and all(i["src"].startswith("data:image/png;base64,")
                                                 for i in sec.find_all("img"))
    # the section sits between the slices and the gallery
    ids = [s.get("id") for s in soup.find_all("section")]
    assert ids.index("slices") < ids.index("components") < ids.index("explanations")


# --------------------------------------------------------------------------- report.pdf
def test_pdf_section(reports: dict) -> None:
    flat = reports["flat"]
    assert HEADING in flat
    assert ASSOC_LABEL in flat and TPR_LABEL in flat
    assert "1 of 2 row(s) significant after Holm correction" in flat
    assert "1 L3.H1 200 1.235 0.778 0.457 0.012 16 (all) 0.012 0.900 -> 0.880 significant" in flat
    assert "1 L3.H1 200 -0.250 -0.200 0.050 0.012 16 (all) 1.000 0.900 -> 0.880 not significant" in flat
    assert f"{fmt(0.009, 'sig')} {fmt_ci(0.0085, 0.0095, 'sig')} 400" in flat
    assert "a photo of <b>stripes</b>" in flat  # a Paragraph would have made it bold, not shown it
    assert flat.index(HEADING) < flat.index("Explanation gallery")


def test_pdf_marks_the_significant_row_in_bold(reports: dict) -> None:
    from pypdf import PdfReader

    bold: list[str] = []

    def visit(text, cm, tm, font, size):  # pypdf's visitor signature
        if font and "Bold" in str(font.get("/BaseFont", "")) and text.strip():
            bold.append(text.strip())

    for page in PdfReader(reports["paths"]["pdf"]).pages:
        page.extract_text(visitor_text=visit)
    assert "significant" in bold and "0.457" in bold and "16 (all)" in bold
    assert "0.035" not in bold and "not significant" not in bold  # row k=2 of the same table


# --------------------------------------------------------------------------- without the tables
def test_a_run_without_the_tables_has_no_section(tmp_path) -> None:
    from pypdf import PdfReader

    from audit.report.html import render_html, sections
    from audit.report.markdown import render_markdown
    from audit.report.pdf import render_pdf

    shutil.copytree(shared_run(kind="clip", biased=True).path, tmp_path / "run")
    run = Run.open(tmp_path / "run")
    for t in ("components", "ablations", "component_maps"):  # a CLIP run with components.enabled: false
        run.table_path(t).unlink(missing_ok=True)
    run.meta.pop("components", None)
    run.save_meta()
    s = build_summary(Run.open(run.path))
    assert s.ablations == [] and s.components == [] and s.components_info is None and carried_findings(s) == []
    s.gallery = Gallery()  # no gallery images are rendered here
    assert "components" not in [sid for sid, _ in sections(s)]
    page = render_html(s, figures={}, gallery_images=[], perf_figures=[])
    assert 'id="components"' not in page and HEADING not in page
    md = render_markdown(s, figure_files={}, gallery_files=[], perf_figures=[])
    assert HEADING not in md and "carried" not in md
    render_pdf(s, tmp_path / "r.pdf", figures={}, gallery_images=[], perf_figures=[])
    assert HEADING not in "\n".join(p.extract_text() for p in PdfReader(tmp_path / "r.pdf").pages)


# --------------------------------------------------------------------------- the figure
def test_component_figure_heat_map_and_maps() -> None:
    from audit.viz.components import component_grid, components_figure

    comp = pd.DataFrame(_components(ASSOC, "association", "effect_size", 0.01))
    layers, heads, has_mlp, grid = component_grid(comp)
    assert layers == [2, 3] and heads == [0, 1, 2, 3] and has_mlp and grid.shape == (2, 5)
    assert grid[1, 1] == pytest.approx(0.009) and grid[0, 4] == pytest.approx(comp.loc[
        comp.component == "L2.MLP", "effect"].iloc[0])
    maps = _maps(ASSOC, "L3.H1", 3, 1, ("water", "plain"))
    fig = components_figure(comp, maps, attribute="background", groups=("plain", "water"))
    assert fig.get_size_inches()[0] <= 7.0 + 1e-9  # the PDF's text width
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("background = plain") for t in titles)
    assert titles.index(next(t for t in titles if "plain" in t)) < titles.index(
        next(t for t in titles if "water" in t))  # the groups in the order given
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sorted(texts) == ["1", "2", "3", "4", "5"]  # the top components are numbered by rank
    alone = components_figure(comp, None)
    assert len([ax for ax in alone.axes if ax.get_title()]) == 1  # heat map only


def test_component_figure_for_a_wide_model_stacks_the_maps() -> None:
    from audit.viz.components import components_figure

    rows = [{"component": f"L{ly}." + ("MLP" if h < 0 else f"H{h}"), "layer": ly, "head": h,
             "effect": 0.01 * ((ly * 13 + h) % 7 - 3), "rank": 0}
            for ly in range(12) for h in [*range(12), -1]]
    comp = pd.DataFrame(rows)
    comp["rank"] = comp["effect"].rank(ascending=False, method="first").astype(int)
    top = comp[comp["head"] >= 0].sort_values("rank").iloc[0]
    maps = _maps("f", str(top.component), int(top.layer), int(top["head"]), ("a", "rest"))
    fig = components_figure(comp, maps, attribute="bg")
    w, h = fig.get_size_inches()
    assert w <= 7.0 + 1e-9 and h > w * 0.6  # heat map above, maps below
    assert any("bg: all other images" in ax.get_title() for ax in fig.axes)


def test_ablation_row_words() -> None:
    rec = _ablation("x", 2, "L1.H0, L1.H1", before=0.3, after=0.1, p_adj=0.01, sig=True, exact=True,
                    target=("performance", "fpr", "bg", "a vs b", "lab"))
    r = AblationRow.model_validate({k: v for k, v in rec.items() if k in AblationRow.model_fields})
    assert r.random_sets == "16 (all)" and r.result == "significant" and r.num_kind == "rate"
