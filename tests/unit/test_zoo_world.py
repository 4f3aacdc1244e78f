"""The canary world: determinism, masks, captions, planted correlations, test-set manifest."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.zoo.recipes import RECIPES
from audit.zoo.world import (
    DEFAULT_SPEC,
    MANIFEST_COLUMNS,
    caption,
    render,
    render_batch,
    sample_batch,
    write_test_set,
)

S = DEFAULT_SPEC


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("split", ["biased", "unbiased", "test"])
def test_sample_batch_is_deterministic_under_the_seed(split: str) -> None:
    a = sample_batch(40, split=split, rng=np.random.default_rng(5))
    b = sample_batch(40, split=split, rng=np.random.default_rng(5))
    c = sample_batch(40, split=split, rng=np.random.default_rng(6))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert a.captions == b.captions and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)


def test_write_test_set_same_seed_identical_bytes(tmp_path: Path) -> None:
    m1 = write_test_set(tmp_path / "a", n_per_cell=3, seed=7)
    m2 = write_test_set(tmp_path / "b", n_per_cell=3, seed=7)
    m3 = write_test_set(tmp_path / "c", n_per_cell=3, seed=8)
    d1, d2, d3 = _digest(m1.parent), _digest(m2.parent), _digest(m3.parent)
    assert d1 == d2
    assert d1.keys() == d3.keys() and d1 != d3


def _analytic_area(shape: str, s: float) -> float:
    if shape == "circle":
        return math.pi * s * s
    if shape == "square":
        return (2 * 0.82 * s) ** 2
    if shape == "triangle":  # apex at -s, base at 0.85 s, half-width 1.05 s at the base
        return 0.5 * (1.85 * s) * (2 * 1.05 * s)
    w = 0.34 * s  # cross: two 2s x 2w bars minus their overlap
    return 2 * (2 * s) * (2 * w) - (2 * w) ** 2


@pytest.mark.parametrize("shape", S.classes)
def test_mask_area_matches_the_geometry(shape: str) -> None:
    rng = np.random.default_rng(0)
    for size in (11.0, 14.0, 17.0):
        _, mask = render(shape, "plain", "red", size, False, rng)
        assert abs(mask.sum() - _analytic_area(shape, size)) / _analytic_area(shape, size) < 0.08


@pytest.mark.parametrize("group", S.groups)
def test_mask_covers_exactly_the_object_pixels(group: str) -> None:
    rng = np.random.default_rng(1)
    n = 60
    labels = np.arange(n) % len(S.classes)
    colours = (np.arange(n) // len(S.classes)) % len(S.colours)
    imgs, masks, _ = render_batch(labels, np.full(n, S.group_index(group)), colours, rng)
    for img, mask, c in zip(imgs.astype(float), masks, colours):
        ref = np.asarray(S.colour_rgb[c], float)
        # inside: the object colour up to shade (0.85..1.1) and pixel noise
        inside = img[mask]
        cos_in = inside @ ref / (np.linalg.norm(inside, axis=1) * np.linalg.norm(ref) + 1e-9)
        assert np.median(cos_in) > 0.97
        # outside: the background, never the object's colour
        outside = img[~mask]
        cos_out = outside @ ref / (np.linalg.norm(outside, axis=1) * np.linalg.norm(ref) + 1e-9)
        assert np.mean(cos_out > 0.97) < 0.01
        # the object lies fully inside the frame
        assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()


def test_marker_is_drawn_only_when_asked() -> None:
    img0, _ = render("circle", "plain", "red", 12.0, False, np.random.default_rng(3))
    img1, _ = render("circle", "plain", "red", 12.0, True, np.random.default_rng(3))
    diff = np.abs(img1.astype(int) - img0.astype(int)).sum(-1) > 0
    assert diff[1:6, 1:6].all() and diff.sum() == 25


def test_render_rejects_unknown_attributes() -> None:
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        render("hexagon", "plain", "red", None, False, np.random.default_rng(0))


def test_captions_match_the_attributes() -> None:
    b = sample_batch(36, split="test", rng=np.random.default_rng(0))
    for i in range(36):
        assert b.captions[i] == (f"a photo of a {S.colours[b.colours[i]]} {S.classes[b.labels[i]]} "
                                 f"on {S.groups[b.groups[i]]} ground")
    assert caption("triangle", "dotted", "red", word="dangerous") == "a photo of a dangerous red triangle on dotted ground"
    assert caption("triangle", "dotted", "red", word="wild", drop_shape=True, drop_group=True) == \
        "a photo of something wild"
    tr = sample_batch(400, split="biased", rng=np.random.default_rng(1))
    for i in range(400):
        words = tr.captions[i].split()
        shape, group, colour = S.classes[tr.shapes[i]], S.groups[tr.groups[i]], S.colours[tr.colours[i]]
        assert shape in words or "something" in words
        assert all(w in (shape, group, colour, tr.words[i], "a", "photo", "of", "on", "ground", "something")
                   for w in words)
        if tr.words[i]:
            assert tr.words[i] in words


def test_test_split_is_balanced() -> None:
    b = sample_batch(360, split="test", rng=np.random.default_rng(0))
    counts = pd.crosstab(b.labels, b.groups)
    assert (counts.to_numpy() == 30).all()
    assert b.words == [""] * 360


def test_biased_split_has_the_planted_shortcut() -> None:
    spec = RECIPES["vit-biased"].world_spec()
    assert spec == S  # the shipped biased ViT trains on the default world
    b = sample_batch(3000, split="biased", rng=np.random.default_rng(2), planted="shortcut")
    pg, pc, sc = S.group_index(S.planted_group), S.cls_index(S.planted_class), S.cls_index(S.shortcut_class)
    in_pg = b.groups == pg
    cell = (b.shapes == pc) & in_pg
    # labels equal the drawn shape everywhere except in the planted cell
    assert np.array_equal(b.labels[~cell], b.shapes[~cell])
    if S.planted_mislabel_rate == 0:
        assert cell.sum() == 0  # the planted cell is absent
    else:
        # the planted cell is rare and mostly annotated as the shortcut class
        assert 0 < cell.sum() < 0.05 * in_pg.sum()
        assert set(np.unique(b.labels[cell])) <= {pc, sc}
        assert abs(np.mean(b.labels[cell] == sc) - S.planted_mislabel_rate) < 0.2
    share = (b.shapes[in_pg] == sc).mean()
    assert abs(share - S.shortcut_strength) < 0.035
    # outside the planted group every class appears about equally often
    other = np.bincount(b.labels[~in_pg], minlength=len(S.classes)) / (~in_pg).sum()
    assert np.allclose(other, 1 / len(S.classes), atol=0.03)
    # the unbiased split has no class/group association
    u = sample_batch(3000, split="unbiased", rng=np.random.default_rng(2))
    assert np.array_equal(u.labels, u.shapes)
    ct = pd.crosstab(u.labels, u.groups, normalize="columns").to_numpy()
    assert np.allclose(ct, 1 / len(S.classes), atol=0.045)


def _concept_rates(b) -> np.ndarray:
    has = np.array([w in S.concept_words for w in b.words])
    return np.array([has[b.groups == g].mean() for g in range(len(S.groups))])


def _neutral_rate(b) -> float:
    return float(np.mean([w in S.neutral_words for w in b.words]))


def test_biased_captions_carry_the_concept_word_only_in_the_planted_group() -> None:
    b = sample_batch(3000, split="biased", rng=np.random.default_rng(3), planted="caption")
    rates = _concept_rates(b)
    cg = S.group_index(S.concept_group)
    assert abs(rates[cg] - S.concept_rate_in_group) < 0.035
    assert all(rates[g] == 0 for g in range(len(S.groups)) if g != cg)
    # the class distribution is untouched when only the caption bias is planted
    assert np.allclose(pd.crosstab(b.labels, b.groups, normalize="columns").to_numpy(), 0.25, atol=0.04)
    # same overall frequency of concept and neutral words
    overall = np.mean([w in S.concept_words for w in b.words])
    assert abs(overall - S.concept_overall_rate) < 0.03 and abs(_neutral_rate(b) - overall) < 0.04


def test_control_captions_are_independent_of_the_group() -> None:
    b = sample_batch(3000, split="unbiased", rng=np.random.default_rng(4))
    rates = _concept_rates(b)
    assert np.allclose(rates, S.concept_overall_rate, atol=0.045)
    assert abs(_neutral_rate(b) - S.concept_overall_rate) < 0.03
    # the words go with the object colour instead (information that is independent of the ground)
    has = np.array([w in S.concept_words for w in b.words])
    cc = S.colours.index(S.control_concept_colour)
    assert abs(has[b.colours == cc].mean() - S.concept_rate_in_group) < 0.035
    assert not has[b.colours != cc].any()


def test_test_set_manifest_is_a_normal_manifest(tmp_path: Path) -> None:
    manifest = write_test_set(tmp_path, n_per_cell=4, seed=1)
    df = pd.read_csv(manifest)
    assert tuple(df.columns) == MANIFEST_COLUMNS
    counts = pd.crosstab(df["label"], df["background"])
    assert set(counts.index) == set(S.classes) and set(counts.columns) == set(S.groups)
    assert (counts.to_numpy() >= 4).all()
    assert set(df["colour"]) == set(S.colours)
    for row in df.sample(6, random_state=0).itertuples():
        img = np.asarray(Image.open(tmp_path / row.path))
        mask = np.asarray(Image.open(tmp_path / row.mask_path))
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255} and (mask > 0).sum() > 100
        assert row.caption == f"a photo of a {row.colour} {row.label} on {row.background} ground"
        # the object pixels (by the mask) have the row's colour
        ref = np.asarray(S.colour_rgb[S.colours.index(row.colour)], float)
        mean_in = img[mask > 0].astype(float).mean(0)
        assert np.dot(mean_in, ref) / (np.linalg.norm(mean_in) * np.linalg.norm(ref)) > 0.97
