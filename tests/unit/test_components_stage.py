"""The components stage in a run: tables ``components``, ``ablations`` and ``component_maps`` for the
run's findings (CLIP associations, harmful labels, retrieval; group-metric gaps of a ViT classifier),
references checked before the forward pass, and the ledger's component findings."""

from __future__ import annotations

import numpy as np
import pytest

from audit.components.ablate import ABLATION_COLUMNS
from audit.components.maps import MAP_COLUMNS
from audit.components.run import COMPONENT_COLUMNS, TARGET_COLUMNS
from audit.components.targets import parse_reference
from audit.errors import ConfigError

ASSOC = "concept words vs neutral words"


def _config(tmp_path, name: str = "clip-biased", stats: dict | None = None, **components):
    from audit.config import parse_config
    from audit.demo import demo_config
    from audit.zoo.world import write_test_set

    manifest = tmp_path / "data" / "manifest.csv"
    if not manifest.is_file():
        write_test_set(tmp_path / "data", n_per_cell=12)
    cfg = demo_config(name, manifest, tmp_path)
    cfg["explain"] = {"methods": []}
    cfg["slices"] = {"enabled": False}
    cfg["stats"] = {"n_boot": 100, "n_perm": 200, "seed": 0, "min_group_size": 20, **(stats or {})}
    cfg["components"] = {"enabled": True, "k": [1, 2], "n_boot": 30, "n_random": 200, "map_images": 8,
                         **components}
    return parse_config(cfg, source="test")


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    from audit.pipeline import run_audit

    tmp = tmp_path_factory.mktemp("clip")
    return run_audit(_config(tmp, findings=[f"association:{ASSOC}", "harmful_label:background",
                                            "retrieval:a photo of something dangerous:background"]))


def test_clip_stage_writes_the_three_tables(clip_run) -> None:
    run = clip_run
    comp, abl, maps = run.table("components"), run.table("ablations"), run.table("component_maps")
    assert list(comp.columns) == COMPONENT_COLUMNS
    assert list(abl.columns) == ABLATION_COLUMNS + TARGET_COLUMNS
    assert list(maps.columns) == MAP_COLUMNS
    refs = [f"association:{ASSOC}", "harmful_label:background", "retrieval:a photo of something dangerous:background"]
    assert list(dict.fromkeys(comp["finding"])) == refs
    assert set(comp["finding_kind"]) == {"association", "harmful_label", "retrieval_skew"}
    per = comp[comp["finding"] == refs[0]]
    assert len(per) == 2 * (8 + 1) and set(per["kind"]) == {"head", "mlp"}  # last 2 of 4 blocks, 8 heads + MLP
    assert per.iloc[0]["roles"] != ""  # the top component is named in words
    assert list(abl["k"].unique()) == [1, 2] and abl["accuracy_before"].between(0, 1).all()
    assert abl.loc[abl["finding"] == refs[1], "groups"].iloc[0] == "dotted vs plain"
    meta = run.meta["components"]
    assert meta["output"] == "embedding" and meta["roles_from"] == "vocabulary"
    assert meta["layers"] == [2, 3] and [f["ref"] for f in meta["findings"]] == refs


def test_head_maps_are_attention_distributions_per_group(clip_run) -> None:
    maps = clip_run.table("component_maps")
    comp = clip_run.table("components")
    assert len(maps) and (maps["head"] >= 0).all()  # MLPs have no attention map
    for (_f, _c, _g), m in maps.groupby(["finding", "component", "group"]):
        assert len(m) == 16  # the canary CLIP's 4 x 4 patch grid
        assert m["value"].sum() + m["prefix_share"].iloc[0] == pytest.approx(1.0, abs=1e-5)
        assert m["n_images"].iloc[0] == 8
    groups = set(maps.loc[maps["finding"] == f"association:{ASSOC}", "group"])
    assert groups == {"dotted", "plain"}
    top = comp[(comp["finding"] == f"association:{ASSOC}") & (comp["kind"] == "head")].head(1)["component"]
    assert set(top) <= set(maps["component"])


def test_default_findings_take_the_associations_then_significant_ledger_rows(tmp_path) -> None:
    from audit.pipeline import run_audit

    run = run_audit(_config(tmp_path, max_findings=1))
    refs = [f["ref"] for f in run.meta["components"]["findings"]]
    assert refs[0] == f"association:{ASSOC}" and len(refs) <= 2


def test_vit_classifier_stage_decomposes_a_recall_gap(tmp_path) -> None:
    from audit.pipeline import run_audit

    run = run_audit(_config(tmp_path, name="vit-biased", stats={"min_group_size": 10}, findings=["tpr:triangle:background"],
                            layers=2))
    comp, abl = run.table("components"), run.table("ablations")
    assert set(comp["finding_kind"]) == {"performance"} and set(comp["metric"]) == {"tpr"}
    assert len(comp) == 2 * (2 + 1)  # the zoo ViT: 2 heads + MLP per block
    from audit.zoo.world import DEFAULT_SPEC

    classes = set(DEFAULT_SPEC.classes)
    top_roles = [r for r in comp["roles"] if r]
    assert top_roles and all(set(r.split(", ")) <= classes for r in top_roles)  # roles = classes it moves
    assert abl.iloc[0]["label"].startswith("recall (TPR) of class 'triangle' by background")
    assert run.meta["components"]["output"] == "logits" and run.meta["components"]["roles_from"] == "classes"
    assert np.isfinite(abl["accuracy_before"]).all()


@pytest.mark.parametrize(("ref", "message"), [
    ("nope", "'nope' is not a finding reference"),
    ("association:nope", "names 'nope', which is not a clip.association test"),
    ("tpr:hexagon:background", "class 'hexagon' is not one of the run's classes"),
    ("accuracy:shoe", "'shoe' is not a group column"),
    ("retrieval:a photo of nothing:background", "the query is not one of clip.queries"),
])
def test_bad_references_are_refused_before_the_forward_pass(tmp_path, ref, message) -> None:
    from audit.pipeline import run_audit

    with pytest.raises(ConfigError, match=message):
        run_audit(_config(tmp_path, findings=[ref]))
    assert not (tmp_path / "clip-biased" / "tables").exists()  # refused before any table was written


def test_a_named_finding_the_data_could_not_test_is_noted_not_decomposed(tmp_path) -> None:
    from audit.pipeline import run_audit

    run = run_audit(_config(tmp_path, stats={"min_group_size": 1000},
                            findings=[f"association:{ASSOC}", "harmful_label:background"]))
    meta = run.meta["components"]
    assert [f["ref"] for f in meta["findings"]] == [f"association:{ASSOC}"]
    assert any("harmful_label:background" in n and "not tested" in n for n in meta["notes"])
    assert any("harmful_label:background" in n for n in run.meta["limitations"])


def test_clip_kinds_are_refused_for_a_classifier(tmp_path) -> None:
    from audit.pipeline import run_audit

    with pytest.raises(ConfigError, match="association findings need a CLIP model"):
        run_audit(_config(tmp_path, name="vit-biased", findings=[f"association:{ASSOC}"]))


def test_parse_reference_forms() -> None:
    assert parse_reference(ASSOC, [ASSOC]) == ("association", (ASSOC,))
    assert parse_reference("harmful_label:race") == ("harmful_label", ("race",))
    assert parse_reference("retrieval:a photo of a doctor:gender") == ("retrieval", ("a photo of a doctor", "gender"))
    assert parse_reference("accuracy:gender") == ("metric", ("accuracy", "gender"))
    assert parse_reference("tpr:cat:gender") == ("metric", ("tpr", "cat", "gender"))
    for bad in ("tpr:gender", "accuracy:a:b", "ece:gender", "harmful_label:", "retrieval:q"):
        with pytest.raises(ConfigError, match="not a finding reference"):
            parse_reference(bad)


def test_only_significant_ablations_enter_the_ledger() -> None:
    import pandas as pd

    from audit.findings import build_findings

    base = {"finding": "tpr:cat:gender", "n_test": 300, "before": -0.4, "after": -0.1, "change": 0.3,
            "reduction": 0.3, "random_mean": 0.05, "random_q95": 0.1, "n_random": 1000, "exact": False,
            "accuracy_before": 0.95, "accuracy_after": 0.94, "finding_kind": "performance", "metric": "tpr",
            "attribute": "gender", "groups": "f vs m", "label": "recall (TPR) of class 'cat' by gender (f vs m)"}
    abl = pd.DataFrame([{**base, "k": 1, "components": "L2.H1", "random_p": 0.004, "p_adj": 0.008, "significant": True},
                        {**base, "k": 2, "components": "L2.H1, L1.H0", "random_p": 0.2, "p_adj": 0.2,
                         "significant": False}])
    ledger = build_findings({"ablations": abl})
    rows = ledger[ledger["kind"] == "component"]
    assert len(rows) == 1 and rows.iloc[0]["worst_group"] == "L2.H1" and bool(rows.iloc[0]["significant"])
    r = rows.iloc[0]
    assert r["scope"] == "finding:tpr:cat:gender" and r["metric"] == "tpr_reduction" and r["attribute"] == "gender"
    text = r["text"]
    assert text.startswith("recall (TPR) of class 'cat' by gender (f vs m) is carried by head(s) L2.H1")
    assert "the gap from -0.400 to -0.100" in text and "n=300" in text and "Holm" in text and "random" in text
    assert np.isclose(r["gap"], 0.25)


def test_old_ablation_tables_without_labels_still_read() -> None:
    import pandas as pd

    from audit.findings import build_findings

    old = {"finding": "concept", "k": 1, "components": "L2.H1", "n_test": 300, "before": 2.0, "after": 1.4,
           "change": -0.6, "reduction": 0.6, "random_mean": 0.1, "random_q95": 0.3, "n_random": 200, "exact": False,
           "random_p": 0.004, "p_adj": 0.008, "significant": True, "accuracy_before": 0.9, "accuracy_after": 0.9}
    text = build_findings({"ablations": pd.DataFrame([old])})["text"].iloc[0]
    assert text.startswith("association concept is carried by head(s) L2.H1: mean-ablating them changes d from 2.000")
