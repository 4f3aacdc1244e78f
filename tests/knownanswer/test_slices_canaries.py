"""Known answers for slice discovery on the canaries: the planted cell is found without its labels.

zoo:vit-biased fails on triangles on dotted ground (the planted cell, docs/ZOO.md). Slice
discovery gets the run's image embeddings and its ``correct`` column only - the group columns are
dropped before the call - and must confirm, on the half of the rows it did not search, a slice
whose members (both halves) overlap the cell with Jaccard >= 0.5. zoo:vit-control must give no
confirmed slice at the default settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.runs import Run
from audit.slices import Vocabulary, discover_slices, slices_for_run
from audit.zoo.world import DEFAULT_SPEC as W

pytestmark = pytest.mark.slow

POLICY = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"
#: the group attribute of the planted cell
W_ATTR = "background"


def _hidden(run: Run) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, pd.DataFrame]:
    """(embeddings, their row ids, predictions without any group column, the group columns)."""
    pred = run.table("predictions")
    arr = run.arrays("embeddings")
    groups = pred[["row_id", *run.group_columns]]
    return arr["image"], arr["row_id"], pred.drop(columns=run.group_columns), groups


def _cell(groups: pd.DataFrame, pred: pd.DataFrame) -> set[int]:
    both = pred.merge(groups, on="row_id")
    sel = (both["label"] == W.planted_class) & (both[W_ATTR] == W.planted_group)
    return set(both.loc[sel, "row_id"].tolist())


def _best_jaccard(slices: pd.DataFrame, members: pd.DataFrame, cell: set[int]) -> float:
    best = 0.0
    for sid in slices.loc[slices["confirmed"], "slice_id"]:
        got = set(members.loc[members["slice_id"] == sid, "row_id"].tolist())
        best = max(best, len(got & cell) / len(got | cell))
    return best


def test_biased_classifier_planted_cell_is_a_confirmed_slice(canary_runs) -> None:
    run = Run.open(canary_runs["vit-biased"])
    emb, rid, pred, groups = _hidden(run)
    assert not set(run.group_columns) & set(pred.columns)
    cell = _cell(groups, pred)
    slices, members = discover_slices(emb, pred, row_ids=rid)  # the defaults
    assert slices["confirmed"].any()
    jac = _best_jaccard(slices, members, cell)
    print(f"vit-biased: {int(slices['confirmed'].sum())} confirmed slice(s); best Jaccard with the cell {jac:.2f}")
    assert jac >= 0.5
    top = slices[slices["confirmed"]].iloc[0]
    assert top["n_confirm"] >= 50 and top["ci_low"] > 0.3 and top["p_adj"] < 1e-10
    # not a lucky split: the same holds for other seeds of the split / mixture
    for seed in range(1, 5):
        s, m = discover_slices(emb, pred, row_ids=rid, seed=seed)
        assert _best_jaccard(s, m, cell) >= 0.5, f"seed {seed}"


def test_biased_classifier_slice_overlap_names_the_cell(canary_runs) -> None:
    run = Run.open(canary_runs["vit-biased"])
    slices, members = slices_for_run(run)  # group columns only describe the slices
    pred = run.table("predictions")
    cell = set(pred.loc[(pred["label"] == W.planted_class) & (pred[W_ATTR] == W.planted_group), "row_id"])
    best = max(slices.loc[slices["confirmed"], "slice_id"],
               key=lambda sid: len(cell & set(members.loc[members["slice_id"] == sid, "row_id"])))
    row = slices[slices["slice_id"] == best].iloc[0]
    assert f"{W_ATTR}={W.planted_group}" in row["overlap"]
    share = float(row["overlap"].split("%")[0]) / 100
    assert share >= 0.7


def test_control_classifier_has_no_confirmed_slice(canary_runs) -> None:
    run = Run.open(canary_runs["vit-control"])
    emb, rid, pred, _ = _hidden(run)
    for seed in range(5):
        slices, _ = discover_slices(emb, pred, row_ids=rid, seed=seed)
        assert not slices["confirmed"].any(), slices[["scope", "status", "error_rate", "p_adj"]]


def test_clip_runs_have_no_confirmed_slice(canary_runs) -> None:
    # both zoo CLIPs classify the shapes (zero-shot) almost without error; nothing to find
    for name in ("clip-biased", "clip-control"):
        slices, _ = slices_for_run(Run.open(canary_runs[name]))
        assert not slices["confirmed"].any(), name


def test_slice_is_named_by_a_clip_text_tower(canary_runs) -> None:
    """Naming across models: slices of the ViT run described in the zoo CLIP's space (its image
    embeddings of the same rows, stored by the clip-control run, and its text tower)."""
    import torch

    from audit.models import load_model

    clip = load_model("zoo:clip-control")

    def text_embed(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            return clip.encode_text(clip.tokenize(texts)).float().numpy()

    vocab = (Vocabulary.from_words(W.groups, template="a photo of something on {} ground", category="ground")
             .merged(Vocabulary.from_words(W.colours, template="a photo of something {}", category="colour"))
             .merged(Vocabulary.from_words(W.classes, template="a photo of a {}", category="shape")))
    clip_arr = Run.open(canary_runs["clip-control"]).arrays("embeddings")
    run = Run.open(canary_runs["vit-biased"])
    slices, members = slices_for_run(run, text_embed=text_embed, vocabulary=vocab,
                                     describe_embeddings=clip_arr["image"], describe_row_ids=clip_arr["row_id"])
    pred = run.table("predictions")
    cell = set(pred.loc[(pred["label"] == W.planted_class) & (pred[W_ATTR] == W.planted_group), "row_id"])
    best = max(slices.loc[slices["confirmed"], "slice_id"],
               key=lambda sid: len(cell & set(members.loc[members["slice_id"] == sid, "row_id"])))
    words = [w.split(" (")[0] for w in slices.loc[slices["slice_id"] == best, "top_words"].iloc[0].split("; ")]
    print(f"vit-biased slice named: {words}")
    assert set(words[:2]) == {W.planted_class, W.planted_group}


# -- the pipeline's own slice stage (the demo runs) ------------------------------------------------------
def test_pipeline_stage_finds_names_and_ranks_the_planted_cell(canary_runs) -> None:
    """The run's own tables (the slice stage of `make demo`, the default vocabulary, the zoo CLIP as
    slices.embedder): a confirmed slice recovers the cell, is named by its shape and its ground, is a
    leading ledger finding, and fails the example policy's max_confirmed_slice_gap."""
    from audit.report.policy import evaluate
    from audit.report.policy_schema import load_policy

    run = Run.open(canary_runs["vit-biased"])
    slices, members = run.table("slices"), run.table("slice_members")
    assert run.meta["slices"]["named_by"] == "zoo:clip-control"
    pred = run.table("predictions")
    cell = set(pred.loc[(pred["label"] == W.planted_class) & (pred[W_ATTR] == W.planted_group), "row_id"])
    assert _best_jaccard(slices, members, cell) >= 0.5
    best = max(slices.loc[slices["confirmed"], "slice_id"],
               key=lambda sid: len(cell & set(members.loc[members["slice_id"] == sid, "row_id"])))
    row = slices[slices["slice_id"] == best].iloc[0]
    words = [w.split(" (")[0] for w in row["top_words"].split("; ")][:3]
    assert f"a {W.planted_class}" in words and W.planted_group in words, words
    groups = run.table("slice_groups")
    top = groups[(groups.slice_id == best) & (groups.attribute == W_ATTR)].sort_values("lift").iloc[-1]
    assert top["group"] == W.planted_group and top["share_in_slice"] >= 0.7

    ledger = run.findings()
    srow = ledger[(ledger["kind"] == "slice") & (ledger["worst_group"] == f"slice {best}")].iloc[0]
    assert srow["significant"] and srow["rank"] <= 5 and srow["n_worst"] == row["n_confirm"]
    assert srow["ci_low"] <= srow["gap"] <= srow["ci_high"]
    verdict = evaluate(run, load_policy(POLICY)).rows
    sl = verdict[verdict["rule"] == "max_confirmed_slice_gap"]
    assert (sl["outcome"] == "fail").any()


def test_pipeline_stage_controls_are_clean(canary_runs) -> None:
    from audit.report.policy import evaluate
    from audit.report.policy_schema import load_policy

    for name in ("vit-control", "clip-biased", "clip-control"):
        run = Run.open(canary_runs[name])
        assert run.has_table("slices"), name
        assert not run.table("slices")["confirmed"].any(), name
        assert not run.findings().query("kind == 'slice' and significant").shape[0], name
        verdict = evaluate(run, load_policy(POLICY)).rows
        assert set(verdict.loc[verdict["rule"] == "max_confirmed_slice_gap", "outcome"]) == {"pass"}, name
