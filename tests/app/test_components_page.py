"""The Components page: the finding picker (labels and kinds), the heads x layers heat map of effects,
the selected component's figures, roles and spatial maps (table ``component_maps``), the random-heads
table with its significant rows, and runs written before maps and finding labels existed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.components.ablate import ABLATION_COLUMNS
from audit.components.maps import MAP_COLUMNS
from audit.components.run import COMPONENT_COLUMNS, TARGET_COLUMNS
from audit.runs import Run

PAGE = "pages/components.py"
ASSOC = "association:concept words vs neutral words"
TPR = "tpr:triangle:background"
LABELS = {ASSOC: "association concept words vs neutral words by background (dotted vs plain)",
          TPR: "recall (TPR) of class 'triangle' by background (dotted vs plain)"}
KINDS = {ASSOC: ("association", "effect_size"), TPR: ("performance", "tpr")}


def _components(finding: str, *, new: bool = True) -> pd.DataFrame:
    """Layers 1-2, heads 0-1 and the MLP; L2.H1 carries most (0.9), L1.H0 works against it (-0.2)."""
    rows = []
    for layer in (1, 2):
        for head in (0, 1, -1):
            eff = 0.9 if (layer, head) == (2, 1) else -0.2 if (layer, head) == (1, 0) else 0.01 * (layer + head + 2)
            rows.append({"finding": finding, "finding_kind": KINDS[finding][0], "metric": KINDS[finding][1],
                         "component": f"L{layer}." + ("MLP" if head < 0 else f"H{head}"), "layer": layer,
                         "head": head, "kind": "mlp" if head < 0 else "head", "n": 100, "before": 1.5,
                         "after": 1.5 - eff, "effect": eff, "ci_low": eff - 0.05, "ci_high": eff + 0.05, "rank": 0,
                         "roles": "stripes, <b>dots</b>" if eff > 0.5 else ""})
    comp = pd.DataFrame(rows, columns=COMPONENT_COLUMNS)
    comp["rank"] = comp["effect"].rank(ascending=False, method="first").astype(int)
    return comp if new else comp.drop(columns=["finding_kind", "metric"])


def _ablations(finding: str, *, significant: bool, new: bool = True) -> pd.DataFrame:
    rows = [{"finding": finding, "k": k, "components": heads, "n_test": 50, "before": 1.5, "after": after,
             "change": after - 1.5, "reduction": 1.5 - after, "random_mean": 0.2, "random_q95": 0.5, "n_random": 4,
             "exact": True, "random_p": p, "p_adj": p, "significant": significant and k == 2,
             "accuracy_before": 0.9, "accuracy_after": 0.88,
             "finding_kind": KINDS[finding][0], "metric": KINDS[finding][1], "attribute": "background",
             "groups": "dotted vs plain", "label": LABELS[finding]}
            for k, heads, after, p in [(1, "L2.H1", 0.6, 0.25), (2, "L2.H1, L1.H1", 0.1, 0.01 if significant else 0.5)]]
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS + (TARGET_COLUMNS if new else []))


def _maps(finding: str) -> pd.DataFrame:
    """2x2 grids of L2.H1 and L1.H1: dotted looks at the top-left patch, plain at the bottom-right."""
    rows = []
    for comp, layer, head in [("L2.H1", 2, 1), ("L1.H1", 1, 1)]:
        for group, hot, prefix in [("dotted", (0, 0), 0.2), ("plain", (1, 1), 0.7)]:
            for r in range(2):
                for c in range(2):
                    v = (1 - prefix) * (0.7 if (r, c) == hot else 0.1)
                    rows.append({"finding": finding, "component": comp, "layer": layer, "head": head, "group": group,
                                 "n_images": 32, "row": r, "col": c, "value": np.float32(v), "prefix_share": prefix})
    return pd.DataFrame(rows, columns=MAP_COLUMNS)


def _copy(run: Run, dest: Path) -> Run:
    """A private copy of a factory run (the session's runs stay as the other tests expect them)."""
    shutil.copytree(run.path, dest)
    return Run.open(dest)


@pytest.fixture
def new_run(clip_run: Run, tmp_path: Path) -> Run:
    """A run with the generalised stage: two findings (d and a recall gap), maps of the top heads."""
    run = _copy(clip_run, tmp_path / "components-new")
    run.write_table("components", pd.concat([_components(ASSOC), _components(TPR)], ignore_index=True))
    run.write_table("ablations", pd.concat([_ablations(ASSOC, significant=True), _ablations(TPR, significant=False)],
                                           ignore_index=True))
    run.write_table("component_maps", pd.concat([_maps(ASSOC), _maps(TPR)], ignore_index=True))
    run.meta["components"] = {
        "layers": [1, 2], "n_images": 100, "output": "embedding", "roles_from": "vocabulary", "n_random": 4,
        "correction": "holm over every finding and k", "notes": ["a *note* on a left-out finding"],
        "findings": [{"ref": r, "kind": KINDS[r][0], "metric": KINDS[r][1], "label": LABELS[r]} for r in (ASSOC, TPR)]}
    run.save_meta()
    return Run.open(run.path)


def _charts(at) -> list[tuple[dict, list[pd.DataFrame]]]:
    """Every Vega-Lite chart of the page: (spec, its datasets as DataFrames)."""
    import pyarrow as pa

    out = []
    for el in at.get("vega_lite_chart"):
        data = [pa.ipc.open_stream(d.data.data).read_pandas() for d in el.proto.datasets]
        out.append((json.loads(el.proto.spec), data))
    return out


def _text(at) -> str:
    return "\n".join(str(e.value) for e in [*at.markdown, *at.caption, *at.subheader])


def _unescape(s: str) -> str:
    return s.replace("\\", "").replace("**", "")


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_components_page_shows_the_heat_map_the_head_and_its_maps(app, new_run: Run) -> None:
    at = app(new_run, page=PAGE)
    _ok(at)
    assert at.title[0].value == "Where a finding is carried"
    picker = at.selectbox(key="co_finding")
    assert picker.value == ASSOC
    assert picker.options == [f"{LABELS[ASSOC]} — association test", f"{LABELS[TPR]} — group metric"]
    charts = _charts(at)
    spec, (cells,) = charts[0]  # the heat map: layers x heads, the MLP as an extra column
    assert spec["layer"][0]["encoding"]["x"]["sort"] == ["H0", "H1", "MLP"]
    assert spec["layer"][0]["encoding"]["color"]["field"] == "effect"
    tips = {t["field"] for t in spec["layer"][0]["encoding"]["tooltip"]}
    assert {"effect", "ci", "rank", "roles"} <= tips
    assert any(p.get("select") for p in spec["params"])  # a click selects a cell
    assert len(cells) == 6 and set(cells["column"]) == {"H0", "H1", "MLP"}
    top = cells.set_index("component").loc["L2.H1"]
    assert top["effect"] == pytest.approx(0.9) and top["ci"] == "[0.850, 0.950]" and bool(top["picked"])
    assert at.selectbox(key="co_pick").value == "L2.H1"  # ranked first
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["rank"] == "1 of 6" and metrics["effect on d"] == "0.900"
    assert metrics["d after ablation"] == "0.600"
    text = _unescape(_text(at))
    assert "[0.850, 0.950]" in text and "above 0" in text
    md = "\n".join(str(m.value) for m in at.markdown)
    assert "stripes" in md and "<b>dots</b>" not in md  # data is text, never HTML
    # the spatial maps of L2.H1: the two groups and their difference, n_images and prefix share stated
    maps = charts[1:]
    assert len(maps) == 3
    dotted, plain, diff = (d[0] for _, d in maps)
    assert dotted.loc[(dotted["row"] == 0) & (dotted["col"] == 0), "value"].iloc[0] == pytest.approx(0.56)
    assert plain.loc[(plain["row"] == 1) & (plain["col"] == 1), "value"].iloc[0] == pytest.approx(0.21)
    assert diff.loc[(diff["row"] == 0) & (diff["col"] == 0), "value"].iloc[0] == pytest.approx(0.56 - 0.03)
    assert [s.get("title", {}).get("text") for s, _ in maps] == ["dotted", "plain", "dotted − plain"]
    assert "32 images" in text and "20.0% of the attention" in text and "70.0% of the attention" in text
    assert "In plain most of this head's attention goes to those tokens" in text
    # the random-heads table: significant rows marked, the cost, the sentence on what locates a finding
    table = at.dataframe[0].value
    assert list(table["verdict"]) == ["no", "✔ yes"] and list(table["cost"]) == ["0.900 → 0.880"] * 2
    assert "Only a significant row says where the finding lives" in text
    assert "1 of 2 significant" in text and "The finding lives in L2.H1, L1.H1 (k = 2" in text
    assert "Cost: accuracy 0.900 → 0.880" in text
    assert "a *note*" not in md  # notes are escaped too


def test_selecting_a_head_shows_its_roles_and_maps_or_why_not(app, new_run: Run) -> None:
    at = app(new_run, page=PAGE)
    at.selectbox(key="co_pick").select("L1.H1").run()  # a head with maps but no role
    _ok(at)
    text = _unescape(_text(at))
    assert "L1.H1: head 1 of layer 1" in text and "not named; only the top components are" in text
    assert len(_charts(at)) == 4
    cells = _charts(at)[0][1][0].set_index("component")
    assert bool(cells.loc["L1.H1", "picked"]) and not bool(cells.loc["L2.H1", "picked"])  # the outline follows

    at.selectbox(key="co_pick").select("L1.H0").run()  # works against the finding; no map stored
    _ok(at)
    text = _unescape(_text(at))
    assert "below 0: ablating it moves d away from 0" in text
    assert "No spatial map of L1.H0: maps are taken for the top heads of each finding only (here L2.H1, L1.H1)" in text
    assert len(_charts(at)) == 1

    at.selectbox(key="co_pick").select("L2.MLP").run()
    _ok(at)
    assert "L2.MLP is an MLP: it acts on each token on its own, so it has no attention map" in _unescape(_text(at))


def test_a_rate_finding_speaks_of_its_gap_not_of_d(app, new_run: Run) -> None:
    at = app(new_run, page=PAGE)
    at.selectbox(key="co_finding").select(TPR).run()
    _ok(at)
    text = _unescape(_text(at))
    assert LABELS[TPR] in text and "Its gap (dotted − plain) is 1.500" in text
    assert "the gap in recall (TPR)" in text and "moves the gap towards 0" in text
    assert " d " not in text.replace("effect size d", "")
    metrics = {m.label: m.value for m in at.metric}
    assert "effect on gap" in metrics and "gap after ablation" in metrics
    assert "0 of 2 significant" in text and "this run does not say where the finding lives" in text
    assert len(_charts(at)) == 4  # its own maps


def test_an_old_run_without_maps_or_labels_still_renders(app, clip_run: Run, tmp_path: Path) -> None:
    run = _copy(clip_run, tmp_path / "components-old")
    old = "concept words vs neutral words"  # the old stage keyed findings by the association test's name
    run.write_table("components", _components(ASSOC, new=False).assign(finding=old))
    run.write_table("ablations", _ablations(ASSOC, significant=False, new=False).assign(finding=old))
    run.meta.pop("components", None)
    run.save_meta()
    run.table_path("component_maps").unlink(missing_ok=True)  # the factory's CLIP run has maps; an old run had none
    at = app(Run.open(run.path), page=PAGE)
    _ok(at)
    assert at.selectbox(key="co_finding").options == [f"association {old} — association test"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["effect on d"] == "0.900"
    text = _unescape(_text(at))
    assert "This run stores no spatial maps per head" in text
    assert "0 of 2 significant" in text
    assert len(_charts(at)) == 1


def test_components_page_without_tables_says_why(app, clf_run: Run) -> None:
    at = app(clf_run, page=PAGE)
    _ok(at)
    assert any("components.enabled" in str(i.value) for i in at.info)
