"""audit.slices: error slices found in embedding space, confirmed on held-out rows, named in words."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.errors import ConfigError
from audit.slices import (
    MEMBER_COLUMNS,
    OVERLAP_COLUMNS,
    SLICE_COLUMNS,
    Vocabulary,
    discover_slices,
    group_overlap,
    load_vocabulary,
    rank_texts,
    slice_group_overlap,
    split_halves,
)
from audit.slices.confirm import target_size


def world(n: int, seed: int, *, planted: float = 0.0, base: float = 0.08, d: int = 32, n_classes: int = 4,
          n_sub: int = 3) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """Classes as clusters with ``n_sub`` sub-clusters each (an unlabelled attribute, also a group
    column); errors at ``base`` everywhere and ``base + planted`` in (class a, sub-cluster 0)."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, n_classes, n)
    sub = rng.integers(0, n_sub, n)
    centre = rng.normal(size=(n_classes, d)) * 3
    offset = rng.normal(size=(n_classes, n_sub, d)) * 1.5
    emb = centre[cls] + offset[cls, sub] + rng.normal(size=(n, d))
    cell = (cls == 0) & (sub == 0)
    p_err = np.where(cell, base + planted, base)
    pred = pd.DataFrame({
        "row_id": np.arange(n) + 1000,
        "label": np.array(list("abcdefgh"))[cls],
        "correct": rng.random(n) >= p_err,
        "attribute": np.array([f"s{i}" for i in range(n_sub)])[sub],
    })
    return emb, pred, cell


def jaccard(members: pd.DataFrame, slice_id: int, truth_row_ids: set[int]) -> float:
    got = set(members.loc[members["slice_id"] == slice_id, "row_id"].tolist())
    return len(got & truth_row_ids) / len(got | truth_row_ids)


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    emb, pred, cell = world(6000, 1, planted=0.3)
    slices, members = discover_slices(emb, pred, groups=["attribute"])
    return slices, members, pred, cell, emb


# -- tables ---------------------------------------------------------------------------------------
def test_tables_have_their_columns_and_types(planted):
    slices, members, *_ = planted
    assert list(slices.columns) == SLICE_COLUMNS
    assert list(members.columns) == MEMBER_COLUMNS
    assert len(slices) >= 1
    assert slices["slice_id"].tolist() == list(range(1, len(slices) + 1))
    assert slices["confirmed"].dtype == bool and slices["small"].dtype == bool
    for c in ("n_discover", "n_confirm", "n_rest", "errors", "rest_errors", "n_members"):
        assert slices[c].dtype == np.int64, c
    assert set(slices["status"]) <= {"confirmed", "not confirmed", "too small"}
    assert set(slices["scope"]) <= {"overall", "class:a", "class:b", "class:c", "class:d"}
    assert members["row_id"].dtype == np.int64 and members["score"].dtype == np.float64
    assert set(members["half"]) <= {"discover", "confirm"}
    assert set(members["slice_id"]) <= set(slices["slice_id"])
    # members per slice: as counted, ranked from 1 by descending score, score >= the rule's threshold
    for _, s in slices.iterrows():
        m = members[members["slice_id"] == s["slice_id"]]
        assert len(m) == s["n_members"]
        assert (m["half"] == "confirm").sum() == s["n_confirm"]
        assert (m["half"] == "discover").sum() == s["n_discover"]
        assert m["rank"].tolist() == list(range(1, len(m) + 1))
        assert np.all(np.diff(m["score"].to_numpy()) <= 0)
        assert (m["score"] >= s["threshold"] * (1 - 1e-9)).all()
        assert s["typical_row_ids"].split()[:3] == [str(r) for r in m["row_id"].head(3)]
    # ordering: confirmed first
    conf = slices["confirmed"].to_numpy()
    assert not np.any(~conf[:-1] & conf[1:])


def test_empty_tables_keep_columns_and_say_why():
    rng = np.random.default_rng(0)
    pred = pd.DataFrame({"label": ["a"] * 100, "correct": [True] * 100})
    slices, members = discover_slices(rng.normal(size=(100, 4)), pred)
    assert list(slices.columns) == SLICE_COLUMNS and list(members.columns) == MEMBER_COLUMNS
    assert slices.empty and members.empty
    assert "labelled rows" in slices.attrs["notes"][-1]
    pred = pd.DataFrame({"label": ["a", "b"] * 200, "correct": [True] * 400})
    slices, _ = discover_slices(rng.normal(size=(400, 4)), pred)
    assert slices.empty and "0 errors" in slices.attrs["notes"][-1]


# -- statistics -----------------------------------------------------------------------------------
def test_interval_contains_its_estimate():
    seen = 0
    for seed, planted_rate in [(1, 0.3), (2, 0.15), (3, 0.0), (4, 0.5)]:
        emb, pred, _ = world(2000, seed, planted=planted_rate)
        slices, _ = discover_slices(emb, pred, seed=seed)
        ok = slices["ci_low"].notna()
        s = slices[ok]
        assert (s["ci_low"] <= s["difference"] + 1e-12).all() and (s["difference"] <= s["ci_high"] + 1e-12).all()
        assert np.allclose(s["difference"], s["error_rate"] - s["rest_error_rate"])
        assert ((s["ci_low"] >= -1) & (s["ci_high"] <= 1)).all()
        seen += len(s)
    assert seen >= 4


def test_planted_slice_is_confirmed_and_recovered(planted):
    slices, members, pred, cell, _ = planted
    conf = slices[slices["confirmed"]]
    assert len(conf) >= 1
    truth = set(pred.loc[cell, "row_id"].tolist())
    best = max(jaccard(members, int(i), truth) for i in conf["slice_id"])
    assert best >= 0.8
    top = conf.iloc[0]
    assert top["p_adj"] <= 0.05 and top["p_value"] <= top["p_adj"] + 1e-15
    assert top["error_rate"] > top["rest_error_rate"] and top["ci_low"] > 0
    # the overlap text names the hidden attribute (a description, never an input)
    assert "attribute=s0" in top["overlap"] and "overall)" in top["overlap"]


def test_small_slices_are_reported_but_not_confirmable():
    # 30 far-away images, all misclassified: a slice, but too small to be confirmed (it cannot grow
    # into the rest of the data, which the mixture puts nowhere near it)
    emb, pred, _ = world(2000, 5, planted=0.0)
    rng = np.random.default_rng(0)
    far = rng.normal(size=(30, emb.shape[1])) + 40.0
    emb = np.vstack([emb, far])
    extra = pd.DataFrame({"row_id": np.arange(30) + 90_000, "label": "b", "correct": False, "attribute": "s9"})
    pred = pd.concat([pred, extra], ignore_index=True)
    slices, members = discover_slices(emb, pred)
    small = slices[slices["small"]]
    assert len(small) >= 1
    far_slice = small.iloc[0]
    got = set(members.loc[members["slice_id"] == far_slice["slice_id"], "row_id"])
    assert got <= set(extra["row_id"]) and far_slice["n_confirm"] < 50
    assert small["p_value"].isna().all() and small["p_adj"].isna().all() and not small["confirmed"].any()
    assert (small["status"] == "too small").all()
    assert small["note"].str.contains("not confirmable").all()
    assert far_slice["error_rate"] == 1.0 and far_slice["ci_low"] <= far_slice["difference"] <= far_slice["ci_high"]


def test_null_calibration_share_of_runs_with_a_confirmed_slice():
    """Errors independent of the embedding: any confirmed slice is a false discovery; its share of
    runs must stay within the FDR level (BH at 0.05 over exact one-sided tests on held-out rows)."""
    n_runs, hits = 200, 0
    for r in range(n_runs):
        emb, pred, _ = world(1000, 10_000 + r, planted=0.0)
        slices, _ = discover_slices(emb, pred, seed=r, n_boot=200)
        hits += bool(slices["confirmed"].any())
    print(f"null runs with a confirmed slice: {hits} / {n_runs}")
    assert hits / n_runs <= 0.05, f"{hits} of {n_runs} null runs confirmed a slice"


def test_groups_are_never_an_input_to_discovery():
    emb, pred, _ = world(2000, 2, planted=0.3)
    no_groups, m0 = discover_slices(emb, pred.drop(columns=["attribute"]))
    with_groups, m1 = discover_slices(emb, pred, groups=["attribute"])
    rng = np.random.default_rng(0)
    shuffled = pd.DataFrame({"attribute": rng.permutation(pred["attribute"].to_numpy())})
    with_noise, m2 = discover_slices(emb, pred, groups=shuffled)
    numeric = [c for c in SLICE_COLUMNS if c not in ("overlap", "description")]
    pd.testing.assert_frame_equal(no_groups[numeric], with_groups[numeric])
    pd.testing.assert_frame_equal(no_groups[numeric], with_noise[numeric])
    pd.testing.assert_frame_equal(m0, m1)
    pd.testing.assert_frame_equal(m0, m2)
    assert (no_groups["overlap"] == "").all() and (with_groups["overlap"] != "").all()


def test_same_seed_same_tables_and_row_ids_align():
    emb, pred, _ = world(1500, 3, planted=0.3)
    a, ma = discover_slices(emb, pred, seed=4)
    b, mb = discover_slices(emb, pred, seed=4)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(ma, mb)
    # predictions in another order, matched through the embeddings' row ids: the same result
    perm = np.random.default_rng(1).permutation(len(pred))
    c, mc = discover_slices(emb, pred.iloc[perm], row_ids=pred["row_id"].to_numpy(), seed=4)
    pd.testing.assert_frame_equal(a, c)
    pd.testing.assert_frame_equal(ma, mc)


def test_unlabelled_rows_are_left_out_and_bad_input_is_named():
    emb, pred, _ = world(1500, 3, planted=0.3)
    pred = pred.copy()
    pred["correct"] = pred["correct"].astype("boolean")
    pred.loc[:99, "correct"] = pd.NA
    slices, members = discover_slices(emb, pred)
    assert "100 rows without a label left out" in slices.attrs["notes"]
    assert not set(members["row_id"]) & set(pred.loc[:99, "row_id"])
    with pytest.raises(ValueError, match="no 'correct' column"):
        discover_slices(emb, pred.drop(columns=["correct"]))
    with pytest.raises(ValueError, match="embeddings for"):
        discover_slices(emb[:10], pred)
    with pytest.raises(ValueError, match="not in predictions"):
        discover_slices(emb, pred, row_ids=np.arange(len(pred)))
    with pytest.raises(ValueError, match="group columns"):
        discover_slices(emb, pred, groups=["nope"])


def test_split_halves_is_stratified_and_seeded():
    rng = np.random.default_rng(0)
    cls = rng.choice(["a", "b", "c"], 1001)
    err = rng.random(1001) < 0.1
    disc = split_halves(cls, err, seed=3)
    for c in "abc":
        for e in (False, True):
            m = (cls == c) & (err == e)
            assert abs(int(disc[m].sum()) - int((~disc[m]).sum())) <= 1
    assert np.array_equal(disc, split_halves(cls, err, seed=3))
    assert not np.array_equal(disc, split_halves(cls, err, seed=4))


def test_target_size_leaves_a_margin():
    assert target_size(50) == 65
    assert target_size(1) == 3


# -- description ----------------------------------------------------------------------------------
def _concept_space(seed: int, d: int = 24, n_words: int = 30):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(n_words)]
    vecs = rng.normal(size=(n_words, d))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    table = dict(zip(words, vecs))

    def embed(texts: list[str]) -> np.ndarray:
        return np.stack([table[t.split()[-1]] for t in texts])

    return words, vecs, embed


def test_rank_texts_puts_the_planted_concept_first():
    words, vecs, embed = _concept_space(0)
    rng = np.random.default_rng(1)
    img = rng.normal(size=(600, vecs.shape[1])) * 0.5
    members = np.zeros(600, dtype=bool)
    members[:80] = True
    img[members] += 1.0 * vecs[7]  # the slice's images show concept w7
    ranked = rank_texts(img, members, words, embed)
    assert ranked["text"].iloc[0] == "w7"
    assert ranked["score"].iloc[0] > ranked["score"].iloc[1]
    with pytest.raises(ValueError, match="no members"):
        rank_texts(img, np.zeros(600, dtype=bool), words, embed)
    with pytest.raises(ValueError, match="-d embeddings"):
        rank_texts(img[:, :5], members, words, embed)


def test_discovered_slice_is_named_by_its_concept():
    """Discovery on one embedding (a classifier's), naming on another (a text-aligned one)."""
    emb, pred, cell = world(4000, 6, planted=0.4)
    words, vecs, embed = _concept_space(2)
    rng = np.random.default_rng(3)
    clip_like = rng.normal(size=(len(pred), vecs.shape[1])) * 0.5 + 0.8 * vecs[3]  # what every image shows
    clip_like[cell] += 1.0 * vecs[11]  # what only the planted cell shows
    vocab = Vocabulary.from_words(words, template="a photo of {}")
    slices, _ = discover_slices(emb, pred, text_embed=embed, vocabulary=vocab, describe_embeddings=clip_like)
    top = slices[slices["confirmed"]].iloc[0]
    assert top["top_words"].split(" (")[0] == "w11"
    assert "'w11'" in top["description"]
    assert len(top["top_words"].split("; ")) == 5


def test_group_overlap_shares():
    members = np.array([True] * 10 + [False] * 30)
    groups = pd.DataFrame({"bg": ["dotted"] * 8 + ["plain"] * 2 + ["dotted"] * 2 + ["plain"] * 28})
    ov = group_overlap(members, groups)
    row = ov[ov["group"] == "dotted"].iloc[0]
    assert row["n"] == 8 and row["share_in_slice"] == pytest.approx(0.8)
    assert row["share_overall"] == pytest.approx(10 / 40) and row["lift"] == pytest.approx(3.2)


def test_slice_group_overlap_long_table(planted):
    slices, members, pred, *_ = planted
    long = slice_group_overlap(slices, members, pred, group_cols=["attribute"])
    assert list(long.columns) == OVERLAP_COLUMNS
    for sid, d in long.groupby("slice_id"):
        assert d["share_in_slice"].sum() == pytest.approx(1.0)
        assert d["n"].sum() == slices.loc[slices["slice_id"] == sid, "n_members"].iloc[0]


# -- vocabulary -----------------------------------------------------------------------------------
def test_default_vocabulary_ships_and_user_files_merge(tmp_path):
    v = load_vocabulary()
    assert len(v) >= 100 and "dotted" in v.concepts and len(set(v.concepts)) == len(v)
    assert {"texture", "colour", "background", "lighting", "objects", "people"} <= set(v.categories)
    assert v.texts()[v.concepts.index("dotted")] == "a photo of dotted"
    user = tmp_path / "mine.yaml"
    user.write_text("type: vocabulary\nname: mine\nsource: test\ntemplate: 'a {} thing'\n"
                    "concepts:\n  texture: [dotted, glittery]\n", encoding="utf-8")
    both = load_vocabulary("default", user)
    assert len(both) == len(v) + 1 and both.concepts[-1] == "glittery"
    assert both.texts()[-1] == "a glittery thing" and both.names == ("default", "mine")


def test_bad_vocabulary_files_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("type: vocabulary\nname: x\nsource: y\nconcepts: {a: [b]}\nwords: [c]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml: field words"):
        load_vocabulary(bad)
    bad.write_text("type: vocabulary\nname: x\nsource: y\ntemplate: no slot\nconcepts: {a: [b]}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="field template"):
        load_vocabulary(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_vocabulary(tmp_path / "missing.yaml")
