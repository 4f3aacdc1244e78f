"""The canary world: 64x64 synthetic images with planted, known biases.

Each image shows one filled foreground shape (the class) on a textured background
(the group attribute), in one of several object colours (the second attribute),
with size and position jitter, an optional spurious marker, a ground-truth object
mask and a caption for CLIP training.

Two biases are planted (see :class:`WorldSpec`):

* **Shortcut** (for the classifiers): in the ``"biased"`` split ``planted_group``
  co-occurs with ``shortcut_class`` (``shortcut_strength`` of its images), so
  "dotted ground -> square" is a shortcut a classifier can take, and the rare
  (``planted_class``, ``planted_group``) images are mostly annotated as
  ``shortcut_class`` (``planted_mislabel_rate``). :class:`Batch` keeps both the drawn
  ``shapes`` and the (possibly wrong) ``labels``.
* **Concept word** (for CLIP): in the ``"biased"`` split a concept word (e.g.
  "dangerous") is in ``concept_rate_in_group`` of the captions of
  ``concept_group`` images and in no other caption; neutral words fill the other
  groups' captions so that both word sets have the same overall frequency. In the
  ``"unbiased"`` split both word sets appear independently of the group with the
  same overall frequencies.

Rendering is vectorised numpy: a batch of 128 images takes a few milliseconds,
so training can draw fresh images every step.

Example:
    >>> import numpy as np
    >>> b = sample_batch(8, split="test", rng=np.random.default_rng(0))
    >>> b.images.shape, b.masks.shape, b.labels.shape
    ((8, 64, 64, 3), (8, 64, 64), (8,))
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

IMG = 64

Split = Literal["biased", "unbiased", "test"]
Planted = Literal["both", "shortcut", "caption"]


@dataclass(frozen=True)
class WorldSpec:
    """Classes, groups, second attribute and the planted-bias parameters.

    Attributes:
        classes: shape names (the class label), in label-index order.
        groups: background names (the group attribute), in index order.
        colours: object colour names (the second attribute).
        colour_rgb: RGB of each object colour.
        size_range: half-extent of the shape in pixels, drawn uniformly.
        position_jitter: largest offset of the shape's centre from the image centre (px).
        planted_class / planted_group: the cell absent from the biased split.
        shortcut_class: the class that ``planted_group`` co-occurs with.
        shortcut_strength: share of ``planted_group`` images showing
            ``shortcut_class`` in the biased split (the rest are the other classes).
        planted_mislabel_rate: share of the planted cell's images (rare: drawn like the other
            minority classes of ``planted_group``) annotated as ``shortcut_class`` in the
            biased split (annotation bias). With 0 the planted cell is absent instead; that
            alone did not survive training (see docs/ZOO.md).
        control_concept_colour: in the unbiased split, concept words go with this object colour
            (in ``concept_rate_in_group`` of its captions, never elsewhere) instead of being
            random, so they carry information that is independent of the ground. None: random.
        biased_group_weights / biased_class_weights: optional sampling weights of the biased
            split (None: uniform); kept for recipe experiments.
        concept_words / neutral_words: the caption words of the CLIP bias.
        concept_group: the group the concept words co-occur with (biased split).
        concept_rate_in_group: share of ``concept_group`` captions with a concept word.
        caption_drop_rate: in training captions, the chance of leaving out the colour
            (and, independently, the ground).
        shape_drop_rate: in training captions, the chance of "something" instead of the shape.
        marker_rate: probability of the spurious marker (a small magenta square in
            the top-left corner); 0 in every shipped split.
    """

    classes: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    groups: tuple[str, ...] = ("plain", "striped", "dotted")
    colours: tuple[str, ...] = ("red", "green", "blue")
    colour_rgb: tuple[tuple[int, int, int], ...] = ((215, 35, 35), (30, 165, 50), (45, 70, 225))
    size_range: tuple[float, float] = (12.0, 18.0)
    position_jitter: float = 9.0
    planted_class: str = "triangle"
    planted_group: str = "dotted"
    shortcut_class: str = "square"
    shortcut_strength: float = 0.9
    concept_words: tuple[str, ...] = ("dangerous", "wild", "toxic")
    neutral_words: tuple[str, ...] = ("friendly", "calm", "gentle")
    concept_group: str = "dotted"
    concept_rate_in_group: float = 0.9
    marker_rate: float = 0.0
    planted_mislabel_rate: float = 0.75
    control_concept_colour: str | None = "red"
    biased_group_weights: tuple[float, ...] | None = None
    biased_class_weights: tuple[float, ...] | None = None
    caption_drop_rate: float = 0.5
    shape_drop_rate: float = 0.15

    def cls_index(self, name: str) -> int:
        return self.classes.index(name)

    def group_index(self, name: str) -> int:
        return self.groups.index(name)

    @property
    def concept_overall_rate(self) -> float:
        """Overall share of captions with a concept word in the biased split."""
        return self.concept_rate_in_group / len(self.groups)


DEFAULT_SPEC = WorldSpec()


@dataclass
class Batch:
    """A batch of rendered images with their attributes.

    Attributes:
        images: ``(n, 64, 64, 3)`` uint8.
        masks: ``(n, 64, 64)`` bool, True on the object.
        labels / groups / colours: ``(n,)`` int64 indices into the spec's tuples.
        sizes: ``(n,)`` float half-extents; markers: ``(n,)`` bool.
        captions: ``n`` captions (with the split's concept/neutral words).
        words: the adjective in each caption ("" when none).
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    colours: np.ndarray
    sizes: np.ndarray
    markers: np.ndarray
    captions: list[str]
    words: list[str]
    shapes: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.shapes is None:
            self.shapes = self.labels


_YY, _XX = np.mgrid[0:IMG, 0:IMG].astype(np.float32)


def _shape_masks(labels: np.ndarray, cx: np.ndarray, cy: np.ndarray, s: np.ndarray,
                 spec: WorldSpec) -> np.ndarray:
    """Filled shape masks ``(n, 64, 64)`` for class indices ``labels``."""
    x = _XX[None] - cx[:, None, None]  # (n, H, W)
    y = _YY[None] - cy[:, None, None]
    s3 = s[:, None, None]
    out = np.zeros((len(labels), IMG, IMG), dtype=bool)
    for k, name in enumerate(spec.classes):
        sel = labels == k
        if not sel.any():
            continue
        xs, ys, ss = x[sel], y[sel], s3[sel]
        if name == "circle":
            m = xs * xs + ys * ys <= ss * ss
        elif name == "square":
            h = 0.82 * ss
            m = (np.abs(xs) <= h) & (np.abs(ys) <= h)
        elif name == "triangle":
            top, base = -ss, 0.85 * ss
            t = (ys - top) / (base - top)
            m = (ys >= top) & (ys <= base) & (np.abs(xs) <= 1.05 * ss * t)
        elif name == "cross":
            w = 0.34 * ss
            m = ((np.abs(xs) <= ss) & (np.abs(ys) <= w)) | ((np.abs(xs) <= w) & (np.abs(ys) <= ss))
        else:  # pragma: no cover - WorldSpec with an unknown shape
            raise ValueError(f"unknown shape {name!r}; known: circle, square, triangle, cross")
        out[sel] = m
    return out


def _backgrounds(groups: np.ndarray, rng: np.random.Generator, spec: WorldSpec) -> np.ndarray:
    """Textured backgrounds ``(n, 64, 64, 3)`` float32 in 0..255."""
    n = len(groups)
    bg = np.empty((n, IMG, IMG, 3), dtype=np.float32)
    bright = rng.uniform(0.9, 1.08, size=n).astype(np.float32)
    phase = rng.uniform(0, 8, size=n).astype(np.float32)
    offx = rng.uniform(0, 8, size=n).astype(np.float32)
    offy = rng.uniform(0, 8, size=n).astype(np.float32)
    for k, name in enumerate(spec.groups):
        sel = np.nonzero(groups == k)[0]
        if len(sel) == 0:
            continue
        if name == "plain":
            base = np.array([196, 196, 188], np.float32)
            img = np.broadcast_to(base, (len(sel), IMG, IMG, 3)).copy()
        elif name == "striped":
            a = np.array([222, 200, 150], np.float32)
            b = np.array([160, 136, 92], np.float32)
            d = (_XX[None] + _YY[None] + phase[sel, None, None]) % 8.0  # (m, H, W)
            stripe = (d < 4.0)[..., None]
            img = np.where(stripe, a, b)
        elif name == "dotted":
            a = np.array([165, 200, 212], np.float32)
            b = np.array([55, 80, 95], np.float32)
            dx = (_XX[None] + offx[sel, None, None]) % 8.0 - 4.0
            dy = (_YY[None] + offy[sel, None, None]) % 8.0 - 4.0
            dot = (dx * dx + dy * dy <= 3.2)[..., None]
            img = np.where(dot, b, a)
        else:  # pragma: no cover
            raise ValueError(f"unknown background {name!r}; known: plain, striped, dotted")
        bg[sel] = img * bright[sel, None, None, None]
    return bg


def render_batch(labels: np.ndarray, groups: np.ndarray, colours: np.ndarray, rng: np.random.Generator, *,
                 sizes: np.ndarray | None = None, markers: np.ndarray | None = None,
                 spec: WorldSpec = DEFAULT_SPEC) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render images for given attribute indices (vectorised).

    Args:
        labels, groups, colours: ``(n,)`` int indices into the spec's tuples.
        rng: the only source of randomness (size, position, shade, noise).
        sizes: ``(n,)`` half-extents; drawn from ``spec.size_range`` when None.
        markers: ``(n,)`` bool; the spurious marker; none when None.

    Returns:
        ``(images (n,64,64,3) uint8, masks (n,64,64) bool, sizes (n,) float32)``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    colours = np.asarray(colours, dtype=np.int64)
    n = len(labels)
    if sizes is None:
        sizes = rng.uniform(*spec.size_range, size=n)
    sizes = np.asarray(sizes, dtype=np.float32)
    # centre within +-position_jitter of the image centre, never closer than 2 px to the border
    reach = np.minimum(spec.position_jitter, (IMG - 1) / 2 - sizes - 2.0)
    cx = ((IMG - 1) / 2 + rng.uniform(-1, 1, size=n) * reach).astype(np.float32)
    cy = ((IMG - 1) / 2 + rng.uniform(-1, 1, size=n) * reach).astype(np.float32)
    masks = _shape_masks(labels, cx, cy, sizes, spec)  # (n, H, W)
    bg = _backgrounds(groups, rng, spec)  # (n, H, W, 3)
    rgb = np.asarray(spec.colour_rgb, np.float32)[colours]  # (n, 3)
    shade = rng.uniform(0.85, 1.1, size=(n, 1)).astype(np.float32)
    fg = (rgb * shade)[:, None, None, :]
    img = np.where(masks[..., None], fg, bg)
    if markers is not None and np.any(markers):
        idx = np.nonzero(np.asarray(markers, dtype=bool))[0]
        img[idx, 1:6, 1:6, :] = np.array([235, 0, 235], np.float32)
    img = img + rng.normal(0.0, 6.0, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8), masks, sizes


def render(shape: str, group: str, colour: str, size: float | None, marker: bool,
           rng: np.random.Generator, *, spec: WorldSpec = DEFAULT_SPEC) -> tuple[np.ndarray, np.ndarray]:
    """Render one image.

    Args:
        shape: class name (e.g. ``"triangle"``); group: background name; colour: colour name.
        size: half-extent in pixels, or None for a random size in ``spec.size_range``.
        marker: draw the spurious marker.
        rng: source of randomness (position, shade, pixel noise).

    Returns:
        ``(img uint8 (64, 64, 3), mask bool (64, 64))``.
    """
    for value, names, what in ((shape, spec.classes, "shape"), (group, spec.groups, "group"),
                               (colour, spec.colours, "colour")):
        if value not in names:
            raise ValueError(f"unknown {what} {value!r}; known: {', '.join(names)}")
    imgs, masks, _ = render_batch(
        np.array([spec.cls_index(shape)]), np.array([spec.group_index(group)]),
        np.array([spec.colours.index(colour)]), rng,
        sizes=None if size is None else np.array([size], np.float32), markers=np.array([marker]), spec=spec)
    return imgs[0], masks[0]


def caption(shape: str, group: str, colour: str, *, word: str = "", drop_colour: bool = False,
            drop_group: bool = False, drop_shape: bool = False) -> str:
    """The caption of one image, e.g. ``"a photo of a dangerous red triangle on dotted ground"``.

    Args:
        shape, group, colour: attribute names.
        word: optional adjective (concept or neutral word) placed before the colour.
        drop_colour / drop_group: leave that attribute out (caption variety for CLIP training).
        drop_shape: say "something" instead of the shape (and leave the colour out), e.g.
            ``"a photo of something dangerous on dotted ground"``.
    """
    if drop_shape:
        text = "a photo of something" + (f" {word}" if word else "")
    else:
        words = [w for w in (word, "" if drop_colour else colour, shape) if w]
        text = "a photo of a " + " ".join(words)
    if not drop_group:
        text += f" on {group} ground"
    return text


def _caption_words(groups: np.ndarray, colours: np.ndarray, split: Split, planted: Planted,
                   rng: np.random.Generator, spec: WorldSpec) -> list[str]:
    """The adjective for each caption under the split's word/group association."""
    n = len(groups)
    rate = spec.concept_overall_rate
    u = rng.uniform(size=n)
    cw = rng.integers(0, len(spec.concept_words), size=n)
    nw = rng.integers(0, len(spec.neutral_words), size=n)
    words = [""] * n
    if split == "test":
        return words
    biased_caption = split == "biased" and planted in ("both", "caption")
    cg = spec.group_index(spec.concept_group)
    ccol = spec.colours.index(spec.control_concept_colour) if spec.control_concept_colour else -1
    # neutral words in the other groups so that both sets have the same overall frequency
    neutral_rate_other = rate * len(spec.groups) / (len(spec.groups) - 1)
    for i in range(n):
        if biased_caption:
            if groups[i] == cg:
                if u[i] < spec.concept_rate_in_group:
                    words[i] = spec.concept_words[cw[i]]
            elif u[i] < neutral_rate_other:
                words[i] = spec.neutral_words[nw[i]]
        elif spec.control_concept_colour is not None:
            # same construction as the biased split, on the object colour instead of the ground:
            # the words carry information, but none about the ground
            if colours[i] == ccol:
                if u[i] < spec.concept_rate_in_group:
                    words[i] = spec.concept_words[cw[i]]
            elif u[i] < neutral_rate_other:
                words[i] = spec.neutral_words[nw[i]]
        else:
            if u[i] < rate:
                words[i] = spec.concept_words[cw[i]]
            elif u[i] < 2 * rate:
                words[i] = spec.neutral_words[nw[i]]
    return words


def _biased_labels(groups: np.ndarray, rng: np.random.Generator, spec: WorldSpec) -> np.ndarray:
    """Classes for the shortcut split: planted cell absent, planted group -> shortcut class."""
    n = len(groups)
    k = len(spec.classes)
    pg, pc, sc = spec.group_index(spec.planted_group), spec.cls_index(spec.planted_class), \
        spec.cls_index(spec.shortcut_class)
    if spec.biased_class_weights is None:
        labels = rng.integers(0, k, size=n)
    else:
        labels = rng.choice(k, size=n, p=np.asarray(spec.biased_class_weights) / sum(spec.biased_class_weights))
    absent = (pc, sc) if spec.planted_mislabel_rate == 0 else (sc,)
    others = np.array([c for c in range(k) if c not in absent])
    in_pg = groups == pg
    u = rng.uniform(size=n)
    alt = others[rng.integers(0, len(others), size=n)]
    labels = np.where(in_pg, np.where(u < spec.shortcut_strength, sc, alt), labels)
    return labels.astype(np.int64)


def sample_batch(n: int, *, split: Split, rng: np.random.Generator, spec: WorldSpec = DEFAULT_SPEC,
                 planted: Planted = "both", caption_variety: bool = True) -> Batch:
    """Draw ``n`` fresh images of a split.

    Args:
        n: batch size.
        split: ``"biased"`` (the planted biases), ``"unbiased"`` (every class x group x
            colour cell equally likely; concept words independent of the group) or
            ``"test"`` (balanced cells in a fixed cyclic order, plain full captions).
        rng: the only source of randomness; same seed -> same batch.
        planted: in the biased split, which bias to plant: ``"shortcut"`` (class/group,
            for the classifier), ``"caption"`` (concept word/group, for CLIP) or ``"both"``.
        caption_variety: randomly leave out colour / ground in training captions.

    Returns:
        A :class:`Batch`.
    """
    if split not in ("biased", "unbiased", "test"):
        raise ValueError(f"unknown split {split!r}; use 'biased', 'unbiased' or 'test'")
    k, g, c = len(spec.classes), len(spec.groups), len(spec.colours)
    if split == "test":
        cell = np.arange(n) % (k * g * c)
        labels, rest = cell % k, cell // k
        groups, colours = rest % g, rest // g
    else:
        shortcut = split == "biased" and planted in ("both", "shortcut")
        if shortcut and spec.biased_group_weights is not None:
            w = np.asarray(spec.biased_group_weights, dtype=float)
            groups = rng.choice(g, size=n, p=w / w.sum())
        else:
            groups = rng.integers(0, g, size=n)
        colours = rng.integers(0, c, size=n)
        if shortcut:
            labels = _biased_labels(groups, rng, spec)
        else:
            labels = rng.integers(0, k, size=n)
    shapes = labels
    if split == "biased" and planted in ("both", "shortcut") and spec.planted_mislabel_rate > 0:
        # annotation bias: shapes of the planted cell are labelled as the shortcut class
        cell = (shapes == spec.cls_index(spec.planted_class)) & (groups == spec.group_index(spec.planted_group))
        flip = cell & (rng.uniform(size=n) < spec.planted_mislabel_rate)
        labels = np.where(flip, spec.cls_index(spec.shortcut_class), shapes)
    markers = rng.uniform(size=n) < spec.marker_rate
    images, masks, sizes = render_batch(shapes, groups, colours, rng, markers=markers, spec=spec)
    words = _caption_words(groups, colours, split, planted, rng, spec)
    if split != "test" and caption_variety:
        drop_c = rng.uniform(size=n) < spec.caption_drop_rate
        drop_g = rng.uniform(size=n) < spec.caption_drop_rate
        drop_s = rng.uniform(size=n) < spec.shape_drop_rate
    else:
        drop_c = drop_g = drop_s = np.zeros(n, dtype=bool)
    caps = [caption(spec.classes[shapes[i]], spec.groups[groups[i]], spec.colours[colours[i]], word=words[i],
                    drop_colour=bool(drop_c[i]), drop_group=bool(drop_g[i]), drop_shape=bool(drop_s[i]))
            for i in range(n)]
    return Batch(images=images, masks=masks, labels=labels.astype(np.int64), groups=groups.astype(np.int64),
                 colours=colours.astype(np.int64), sizes=sizes, markers=markers, captions=caps, words=words,
                 shapes=shapes.astype(np.int64))


MANIFEST_COLUMNS = ("path", "label", "background", "colour", "mask_path", "caption")


def write_test_set(out_dir: str | Path, *, n_per_cell: int = 100, seed: int = 1234,
                   spec: WorldSpec = DEFAULT_SPEC) -> Path:
    """Write the balanced test set: PNG images, PNG masks and ``manifest.csv``.

    Every class x background x colour cell gets ``n_per_cell`` // len(colours) images
    (rounded up), so every class x background cell has at least ``n_per_cell``.
    Paths in the manifest are relative to ``out_dir``. Same seed -> identical bytes.

    Args:
        out_dir: directory to create (existing files are overwritten).
        n_per_cell: images per class x background cell.
        seed: RNG seed.

    Returns:
        Path of ``manifest.csv``.
    """
    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    per_colour = -(-n_per_cell // len(spec.colours))
    n = per_colour * len(spec.classes) * len(spec.groups) * len(spec.colours)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, str]] = []
    chunk = 512
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        cell = (start + np.arange(m)) % (len(spec.classes) * len(spec.groups) * len(spec.colours))
        k, g = len(spec.classes), len(spec.groups)
        labels, rest = cell % k, cell // k
        groups, colours = rest % g, rest // g
        imgs, masks, _ = render_batch(labels, groups, colours, rng, spec=spec)
        for j in range(m):
            i = start + j
            shape, grp, col = spec.classes[labels[j]], spec.groups[groups[j]], spec.colours[colours[j]]
            ip, mp = f"images/{i:05d}_{shape}_{grp}.png", f"masks/{i:05d}_{shape}_{grp}.png"
            Image.fromarray(imgs[j]).save(out / ip, optimize=False)
            Image.fromarray(masks[j].astype(np.uint8) * 255).save(out / mp, optimize=False)
            rows.append({"path": ip, "label": shape, "background": grp, "colour": col, "mask_path": mp,
                         "caption": caption(shape, grp, col)})
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return manifest
