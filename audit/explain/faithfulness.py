"""Faithfulness checks for explanation maps.

* :func:`deletion_insertion` (Petsiuk et al., RISE 2018), patch-wise and batched: patches are
  ordered by map value; deletion replaces the top patches step by step with the baseline,
  insertion reveals them on a blurred start; the target-class probability is recorded at every
  step (0 % included) and integrated with the trapezoidal rule over the fraction of patches
  changed. Lower deletion AUC and higher insertion AUC = more faithful. Always compare with
  :func:`random_map_like` (``faithfulness_table`` does).
* :func:`chefer_perturbation` (Chefer et al. 2021): black out 0, 10, ..., 90 % of the pixels by
  map order, top-1 accuracy on the predicted class, AUC = trapz x 100.
* :func:`pointing_game` and :func:`mass_in_mask` against object masks.
* :func:`faithfulness_verdicts`: each method's scores tested against the random map on the same
  images (and the mask scores against chance), with one verdict per method: "better than random",
  "not distinguishable from random" or "fails the sanity check".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.integrate import trapezoid

from audit.errors import ExplainError
from audit.explain.captum_methods import make_baseline
from audit.explain.targets import ClassTarget, Target, prepare_target

if TYPE_CHECKING:
    from audit.models.base import Adapter

Baseline = Literal["black", "blur"]


@dataclass
class PerturbationCurves:
    """Deletion/insertion curves for a batch.

    Attributes:
        fractions: ``(S+1,)`` fraction of patches changed at each step, from 0 to 1.
        deletion: ``(B, S+1)`` target probability as top patches are removed (None if not run).
        insertion: ``(B, S+1)`` target probability as top patches are revealed (None if not run).
        target_index: ``(B,)`` class index whose probability was recorded.
    """

    fractions: np.ndarray
    deletion: np.ndarray | None
    insertion: np.ndarray | None
    target_index: np.ndarray

    @property
    def deletion_auc(self) -> np.ndarray | None:
        """``(B,)`` trapezoidal AUC of the deletion curves."""
        return None if self.deletion is None else trapezoid(self.deletion, self.fractions, axis=1)

    @property
    def insertion_auc(self) -> np.ndarray | None:
        """``(B,)`` trapezoidal AUC of the insertion curves."""
        return None if self.insertion is None else trapezoid(self.insertion, self.fractions, axis=1)

    def to_frame(self) -> pd.DataFrame:
        """One row per image: ``image, target_index, deletion_auc, insertion_auc``."""
        b = len(self.target_index)
        nan = np.full(b, np.nan)
        return pd.DataFrame(
            {
                "image": np.arange(b),
                "target_index": self.target_index.astype(np.int64),
                "deletion_auc": self.deletion_auc if self.deletion is not None else nan,
                "insertion_auc": self.insertion_auc if self.insertion is not None else nan,
            }
        )


def random_map_like(maps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A uniform random map of the same shape (the reference every AUC is reported beside)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand(maps.shape, generator=g, dtype=torch.float32)


def _check_maps(maps: torch.Tensor, images: torch.Tensor, grid: tuple[int, int]) -> None:
    if maps.dim() != 3 or maps.shape[0] != images.shape[0] or tuple(maps.shape[1:]) != tuple(grid):
        raise ExplainError(
            f"maps must be (B, gh, gw) = {(images.shape[0], *grid)} on the model's patch grid; "
            f"got {tuple(maps.shape)} (use Explanation.grid_maps)"
        )


def _class_target(adapter: Adapter, target: Target | None, images: torch.Tensor) -> Target:
    t = prepare_target(adapter, target, images, "deletion/insertion")
    if t.class_indices() is None and not isinstance(t, ClassTarget):
        t.probability(adapter, images[:1])  # raises the specific error for non-class targets
    return t


def _step_counts(n_patches: int, steps: int | None) -> np.ndarray:
    """Number of patches changed at each step: 0 .. n_patches in ``steps`` (default: one per step)."""
    s = n_patches if steps is None else int(steps)
    if s < 1:
        raise ExplainError(f"steps must be at least 1; got {steps}")
    return np.unique(np.round(np.linspace(0, n_patches, s + 1)).astype(np.int64))


@torch.no_grad()
def _curves(
    adapter: Adapter,
    images: torch.Tensor,
    order: torch.Tensor,
    counts: np.ndarray,
    start: torch.Tensor,
    end: torch.Tensor,
    target: Target,
    patch: tuple[int, int],
    grid: tuple[int, int],
    batch_size: int,
) -> np.ndarray:
    """Probability after switching the first ``counts[s]`` patches in ``order`` from start to end.

    All (image, step) pairs are flattened and evaluated in chunks of ``batch_size``.
    order ``(B, P)`` patch indices by decreasing relevance; start/end ``(B|1, 3, H, W)``.
    """
    b, p = order.shape
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(p).expand(b, p).contiguous())  # (B, P) rank of each patch
    cnt = torch.as_tensor(counts)
    n_steps = len(counts)
    pairs = [(i, s) for i in range(b) for s in range(n_steps)]
    idx = target.class_indices()
    out = np.zeros((b, n_steps), dtype=np.float64)
    ph, pw = patch
    for c0 in range(0, len(pairs), batch_size):
        chunk = pairs[c0 : c0 + batch_size]
        ii = torch.tensor([i for i, _ in chunk])
        ss = torch.tensor([s for _, s in chunk])
        switched = rank[ii] < cnt[ss][:, None]  # (C, P)
        m = switched.reshape(-1, 1, *grid).float()
        m = m.repeat_interleave(ph, dim=2).repeat_interleave(pw, dim=3).to(images.device)  # (C, 1, H, W)
        st = start[ii] if start.shape[0] > 1 else start.expand(len(chunk), -1, -1, -1)
        en = end[ii] if end.shape[0] > 1 else end.expand(len(chunk), -1, -1, -1)
        x = st * (1 - m) + en * m
        sub = _sub(target, ii) if idx is not None else target
        out[ii.numpy(), ss.numpy()] = sub.probability(adapter, x.to(adapter.device)).double().cpu().numpy()
    return out


def _sub(target: Target, ii: torch.Tensor) -> Target:
    """The same class-like target restricted to images ``ii`` (for chunked evaluation)."""
    import dataclasses

    idx = target.class_indices()
    return dataclasses.replace(target, index=idx[ii].tolist())  # type: ignore[type-var]


def deletion_insertion(
    adapter: Adapter,
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    target: Target | None = None,
    steps: int | None = None,
    baseline: Baseline = "blur",
    insertion_start: Baseline = "blur",
    mode: Literal["deletion", "insertion", "both"] = "both",
    batch_size: int = 64,
    blur_sigma: float | None = None,
) -> PerturbationCurves:
    """Patch-wise deletion and insertion curves (RISE), batched over all steps of all images.

    Args:
        adapter: the model.
        images: ``(B, 3, H, W)`` normalised images.
        maps: ``(B, gh, gw)`` maps on the patch grid (higher = more relevant).
        target: a class-like target (default: the predicted class); its probability is recorded.
        steps: number of steps from 0 to all patches (default: one patch per step).
        baseline: what deleted patches become: ``"blur"`` or ``"black"`` (black before normalisation).
        insertion_start: the canvas insertion starts from (blurred by default).
        mode: which curves to compute.
        batch_size: perturbed images per forward pass.

    Returns:
        :class:`PerturbationCurves`; ``.to_frame()`` gives per-image AUCs.
    """
    from audit.explain.captum_methods import patch_size

    images = images.detach().to(adapter.device)
    layout = adapter.token_layout(tuple(images.shape[-2:]))
    _check_maps(maps, images, layout.grid)
    target = _class_target(adapter, target, images)
    patch = patch_size(layout, tuple(images.shape[-2:]))
    counts = _step_counts(layout.n_patches, steps)
    fractions = counts / layout.n_patches
    flat = maps.detach().float().flatten(1).cpu()  # (B, P)
    order = torch.argsort(-flat, dim=1, stable=True)  # most relevant first, ties by position
    deletion = insertion = None
    if mode in ("deletion", "both"):
        end = make_baseline(adapter, images, baseline, blur_sigma=blur_sigma)
        deletion = _curves(
            adapter, images, order, counts, images, end, target, patch, layout.grid, batch_size
        )
    if mode in ("insertion", "both"):
        start = make_baseline(adapter, images, insertion_start, blur_sigma=blur_sigma)
        insertion = _curves(
            adapter, images, order, counts, start, images, target, patch, layout.grid, batch_size
        )
    idx = target.class_indices()
    return PerturbationCurves(
        fractions=fractions.astype(np.float64),
        deletion=deletion,
        insertion=insertion,
        target_index=(idx.numpy() if idx is not None else np.full(images.shape[0], -1)).astype(np.int64),
    )


def chefer_perturbation(
    adapter: Adapter,
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    kind: Literal["positive", "negative"] = "positive",
    fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    batch_size: int = 64,
) -> dict[str, object]:
    """Chefer et al.'s perturbation test: black out pixels by map order, top-1 accuracy, AUC x 100.

    Maps are upsampled (bilinear) to the input size; ``positive`` removes the most relevant pixels
    first, ``negative`` the least relevant. Accuracy is agreement with the predicted class on the
    unperturbed images. "Black" is zero before normalisation.

    Returns:
        ``{"fractions": (S,), "accuracy": (S,), "correct": (B, S) bool, "auc": float}``.
    """
    images = images.detach().to(adapter.device)
    b, _, h, w = images.shape
    layout = adapter.token_layout((h, w))
    _check_maps(maps, images, layout.grid)
    up = F.interpolate(maps.detach().float()[:, None], size=(h, w), mode="bilinear", align_corners=False)
    flat = up.flatten(1).cpu()  # (B, H*W)
    order = torch.argsort(-flat if kind == "positive" else flat, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w).expand(b, -1).contiguous())
    black = make_baseline(adapter, images, "black")
    with torch.no_grad():
        pred = adapter.logits(images).argmax(1).cpu()  # (B,)
        correct = np.zeros((b, len(fractions)), dtype=bool)
        jobs = [(i, j) for i in range(b) for j in range(len(fractions))]
        for c0 in range(0, len(jobs), batch_size):
            chunk = jobs[c0 : c0 + batch_size]
            ii = torch.tensor([i for i, _ in chunk])
            k = torch.tensor([round(fractions[j] * h * w) for _, j in chunk])
            m = (rank[ii] < k[:, None]).reshape(-1, 1, h, w).float().to(images.device)
            x = images[ii] * (1 - m) + black * m
            p = adapter.logits(x).argmax(1).cpu()
            correct[ii.numpy(), [j for _, j in chunk]] = (p == pred[ii]).numpy()
    acc = correct.mean(axis=0)
    return {
        "fractions": np.asarray(fractions),
        "accuracy": acc,
        "correct": correct,
        "auc": float(trapezoid(acc, np.asarray(fractions)) * 100),
    }


def pointing_game(maps_input_res: torch.Tensor, masks: torch.Tensor, *, tolerance_px: int = 15) -> np.ndarray:
    """Hit (1.0) if the map's maximum lies within ``tolerance_px`` of the object mask, else 0.0.

    Args:
        maps_input_res: ``(B, H, W)`` maps at input resolution (``Explanation.upsampled()``).
        masks: ``(B, H, W)`` boolean object masks.
        tolerance_px: Euclidean distance tolerance in pixels.

    Returns:
        ``(B,)`` float array; NaN for an empty mask. The first maximum (row-major) is used.
    """
    from scipy.ndimage import distance_transform_edt

    if maps_input_res.shape != masks.shape:
        raise ExplainError(
            f"pointing_game: maps {tuple(maps_input_res.shape)} and masks {tuple(masks.shape)} differ; "
            "upsample maps to the mask resolution first (Explanation.upsampled())"
        )
    m = maps_input_res.detach().float().cpu()
    mk = masks.detach().cpu().bool().numpy()
    out = np.full(m.shape[0], np.nan)
    for i in range(m.shape[0]):
        if not mk[i].any():
            continue
        r, c = divmod(int(m[i].flatten().argmax()), m.shape[2])
        dist = distance_transform_edt(~mk[i])  # distance of every pixel to the mask
        out[i] = float(dist[r, c] <= tolerance_px)
    return out


def mass_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Share of the map's positive mass inside the mask: ``Σ map⁺·mask / Σ map⁺`` per image.

    ``maps`` ``(B, h, w)`` are resized (bilinear) to the masks' ``(B, H, W)`` when they differ;
    negative values are clipped to 0 (signed maps count only their positive evidence).
    NaN when a map has no positive mass.
    """
    m = maps.detach().float().cpu()
    mk = masks.detach().cpu().float()
    if m.shape[-2:] != mk.shape[-2:]:
        m = F.interpolate(m[:, None], size=tuple(mk.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    m = m.clamp_min(0)
    tot = m.flatten(1).sum(1)
    inside = (m * mk).flatten(1).sum(1)
    return (
        torch.where(tot > 0, inside / tot.clamp_min(1e-30), torch.full_like(tot, float("nan")))
        .double()
        .numpy()
    )


def faithfulness_table(
    adapter: Adapter,
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    method: str,
    target: Target | None = None,
    row_ids: list[int] | np.ndarray | None = None,
    masks: torch.Tensor | None = None,
    steps: int | None = None,
    baseline: Baseline = "blur",
    seed: int = 0,
    tolerance_px: int = 15,
    batch_size: int = 64,
) -> pd.DataFrame:
    """The run's ``faithfulness`` table for one method and batch (RUN_FORMAT.md columns).

    Columns: row_id, method, deletion_auc, insertion_auc, random_deletion_auc, random_insertion_auc,
    pointing_hit (bool or None), mass_in_mask (float or None), target_class, map_problem ("" or why
    the map was not scored: NaN/Inf or constant; its scores are then NaN/None, never a number made
    up from an arbitrary deletion order).
    """
    from audit.explain.quality import map_problems

    images = images.detach().to(adapter.device)
    target = _class_target(adapter, target, images)
    kw = {"target": target, "steps": steps, "baseline": baseline, "batch_size": batch_size}
    real = deletion_insertion(adapter, images, maps, **kw)
    rand = deletion_insertion(adapter, images, random_map_like(maps, seed), **kw)
    b = images.shape[0]
    names = target.describe().get("names") or [str(i) for i in real.target_index]
    df = pd.DataFrame(
        {
            "row_id": np.asarray(row_ids if row_ids is not None else np.arange(b), dtype=np.int64),
            "method": method,
            "deletion_auc": real.deletion_auc,
            "insertion_auc": real.insertion_auc,
            "random_deletion_auc": rand.deletion_auc,
            "random_insertion_auc": rand.insertion_auc,
            "pointing_hit": pd.Series([None] * b, dtype=object),
            "mass_in_mask": pd.Series([None] * b, dtype=object),
            "target_class": [str(n) for n in names],
        }
    )
    if masks is not None:
        h, w = images.shape[-2:]
        up = F.interpolate(maps.detach().float()[:, None], size=(h, w), mode="bilinear", align_corners=False)[
            :, 0
        ]
        hits = pointing_game(up, masks, tolerance_px=tolerance_px)
        mass = mass_in_mask(maps, masks)
        df["pointing_hit"] = [None if np.isnan(v) else bool(v) for v in hits]
        df["mass_in_mask"] = [None if np.isnan(v) else float(v) for v in mass]
    problems = map_problems(maps)
    df["map_problem"] = problems
    bad = np.asarray([bool(p) for p in problems])
    if bad.any():
        df.loc[bad, ["deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc"]] = np.nan
        for col in ("pointing_hit", "mass_in_mask"):
            df[col] = df[col].astype(object)
            df.loc[bad, col] = None
    return df


# --------------------------------------------------------------------------- verdicts against a random map

BETTER = "better than random"
NOT_DISTINGUISHABLE = "not distinguishable from random"
FAILS_SANITY = "fails the sanity check"
VERDICTS = (BETTER, NOT_DISTINGUISHABLE, FAILS_SANITY)

VERDICT_COLUMNS = [
    "method", "score", "baseline", "perturbation", "value", "random_value", "difference", "ci_low", "ci_high",
    "n", "p_value", "p_adj", "better", "worse", "test", "n_maps", "n_unusable", "verdict", "reason",
]

# score -> (reference column, reference name, +1 if higher is better else -1)
_PAIRED_SCORES = {
    "deletion_auc": ("random_deletion_auc", "random map", -1),
    "insertion_auc": ("random_insertion_auc", "random map", +1),
}
_CHANCE_SCORES = {
    "pointing_hit": ("pointing_chance", "chance: share of patch centres within the tolerance of the mask", +1),
    "mass_in_mask": ("mask_share", "chance: mask area share", +1),
}
_SIGN_FLIP = "paired sign-flip permutation test of the mean difference (two-sided)"
_POISSON_BINOMIAL = "exact Poisson-binomial test of the hit count against per-image chance (two-sided)"


def chance_levels(masks: torch.Tensor, grid: tuple[int, int], *, tolerance_px: int = 15) -> pd.DataFrame:
    """Per-image chance levels of the mask scores: what a map unrelated to the object gets.

    Args:
        masks: ``(B, H, W)`` boolean object masks at input resolution.
        grid: the model's patch grid ``(gh, gw)``.
        tolerance_px: the pointing game's tolerance.

    Returns:
        DataFrame with ``mask_share`` (share of the image's pixels inside the mask: the expected
        mass in mask of a map that ignores the object) and ``pointing_chance`` (share of the
        patches whose centre pixel lies within ``tolerance_px`` of the mask: the hit rate of a map
        whose maximum falls on a patch drawn at random), NaN for an empty mask.
    """
    from scipy.ndimage import distance_transform_edt

    mk = masks.detach().cpu().bool().numpy()
    b, h, w = mk.shape
    gh, gw = grid
    rows = np.minimum(((np.arange(gh) + 0.5) * h / gh).astype(np.int64), h - 1)  # patch-centre pixels
    cols = np.minimum(((np.arange(gw) + 0.5) * w / gw).astype(np.int64), w - 1)
    share = np.full(b, np.nan)
    chance = np.full(b, np.nan)
    for i in range(b):
        if not mk[i].any():
            continue
        share[i] = float(mk[i].mean())
        dist = distance_transform_edt(~mk[i])
        chance[i] = float((dist[np.ix_(rows, cols)] <= tolerance_px).mean())
    return pd.DataFrame({"mask_share": share, "pointing_chance": chance})


def _numeric(s: pd.Series) -> np.ndarray:
    """A score column (float, bool, nullable boolean or object with None) as float64 with NaN."""
    return pd.to_numeric(s.astype(object).where(s.notna(), np.nan), errors="coerce").astype(float).to_numpy()


def _boot_interval(d: np.ndarray, *, n_boot: int, level: float, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(d)`` over images, widened to contain the estimate."""
    est = float(d.mean())
    if len(d) < 2 or np.ptp(d) == 0:
        return est, est
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(min(lo, est)), float(max(hi, est))  # a percentile interval of a mean can miss it only
    # by rounding or in a degenerate resample set; the estimate is always inside the reported one


def _sign_flip_p(d: np.ndarray, *, n_perm: int, seed: int) -> float:
    """Two-sided p-value of the mean paired difference under random sign flips (exact for small n)."""
    from scipy.stats import permutation_test

    if len(d) == 0:
        return float("nan")
    if not np.any(d) or len(d) < 2:  # one pair: both sign patterns are as extreme, the exact p is 1
        return 1.0
    res = permutation_test(
        (d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples", vectorized=True,
        n_resamples=n_perm, alternative="two-sided", random_state=seed,
    )
    return float(min(1.0, res.pvalue))


def _poisson_binomial_p(hits: np.ndarray, chance: np.ndarray) -> float:
    """Two-sided exact p-value of ``sum(hits)`` when each hit is Bernoulli(``chance[i]``)."""
    if len(hits) == 0:
        return float("nan")
    pmf = np.array([1.0])
    for p in np.clip(chance, 0.0, 1.0):
        pmf = np.convolve(pmf, [1.0 - p, p])
    k = round(float(hits.sum()))
    lower, upper = pmf[: k + 1].sum(), pmf[k:].sum()
    return float(min(1.0, 2 * min(lower, upper)))


def _fmt(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.3g}"


def _row_phrase(r: dict) -> str:
    name = r["score"].replace("_auc", " AUC").replace("_", " ")
    return (
        f"{name} {_fmt(r['value'])} vs {_fmt(r['random_value'])} (difference {_fmt(r['difference'])}, "
        f"{r['ci_level']:.0%} CI {_fmt(r['ci_low'])} to {_fmt(r['ci_high'])}, Holm p {_fmt(r['p_adj'])}, n {r['n']})"
    )


def faithfulness_verdicts(
    faith: pd.DataFrame,
    sanity: pd.DataFrame | None,
    *,
    alpha: float = 0.05,
    n_boot: int = 2000,
    n_perm: int = 9999,
    seed: int = 0,
    perturbation: str = "",
) -> pd.DataFrame:
    """Each method's scores tested against a random map on the same images, and one verdict per method.

    Deletion and insertion: the method's AUC and the random map's AUC on the same image form a pair;
    ``difference`` is the mean over images of (method - random) (deletion: negative is better;
    insertion: positive is better), with a percentile bootstrap interval over images (level
    ``1 - alpha``, always containing the estimate) and the two-sided p-value of a **paired sign-flip
    permutation test** of that mean (``scipy.stats.permutation_test``, ``permutation_type="samples"``;
    exact enumeration up to ``n_perm`` sign patterns, else Monte Carlo with the +1 correction). It
    was chosen over the Wilcoxon signed-rank test because it tests the very quantity reported and
    bootstrapped (the mean difference, not a pseudo-median), is exact under the null that matters
    here (the method's map is no better than a random one, so which of the two maps gave which AUC
    on an image is exchangeable: the difference's sign is a coin flip) and needs no rule for zero
    differences or ties, which are common when a probability saturates.

    Pointing game and mass in mask (when the run had masks and stored the chance columns
    ``pointing_chance`` and ``mask_share``, see :func:`chance_levels`): compared with their chance
    level per image. Mass in mask: the sign-flip test on (mass - mask area share). Pointing game:
    an exact Poisson-binomial test of the number of hits, each image's hit being Bernoulli(its
    chance) under the null (a 0/1 minus a probability is not symmetric, so no sign flip there).

    ``p_adj`` is Holm's adjustment over every test in the returned table (all methods and scores of
    the run). ``better`` / ``worse``: ``p_adj < alpha`` with the difference in the good / bad
    direction.

    The verdict (repeated on every row of a method; one row per method: ``drop_duplicates("method")``):

    * ``"fails the sanity check"``: the model-randomisation check (``sanity`` table) flagged the method.
    * ``"not distinguishable from random"`` when more than half of the method's maps are unusable
      (``map_problem`` non-empty: NaN/Inf or constant), whatever the rest scores.
    * ``"better than random"``: deletion or insertion significantly better after the correction and
      neither significantly worse.
    * ``"not distinguishable from random"`` otherwise (including significantly worse).

    ``reason`` says why in words, including how many maps were unusable and whether the sanity
    check was run. Unusable maps are left out of every test (``n`` counts the pairs used).

    Args:
        faith: the run's ``faithfulness`` table (one row per image and method).
        sanity: the run's ``sanity`` table, or None when the check was not run.
        alpha: family-wise error rate of the tests; intervals are at level ``1 - alpha``.
        n_boot: bootstrap resamples over images.
        n_perm: sign-flip resamples (exact when ``2**n <= n_perm``).
        seed: seeds the bootstrap and the Monte Carlo permutations.
        perturbation: the run's deletion baseline (``"blur"`` or ``"black"``), named in the
            ``perturbation`` column of the deletion rows (insertion always starts from a blur).

    Returns:
        DataFrame with :data:`VERDICT_COLUMNS`, rows in method order then deletion, insertion,
        pointing, mass.

    Example:
        >>> v = faithfulness_verdicts(run.table("faithfulness"), run.table("sanity"))  # doctest: +SKIP
        >>> v.drop_duplicates("method")[["method", "verdict", "reason"]]  # doctest: +SKIP
    """
    from audit.stats.multiple import holm

    level = 1.0 - alpha
    rng = np.random.default_rng(seed)
    flagged: dict[str, bool] = {}
    final_rho: dict[str, float] = {}
    if sanity is not None and len(sanity) and {"method", "flagged"} <= set(sanity.columns):
        for m, g in sanity.groupby("method", sort=False):
            flagged[str(m)] = bool(g["flagged"].fillna(False).astype(bool).any())
            if "spearman" in g and "step" in g:
                final_rho[str(m)] = float(g.sort_values("step")["spearman"].iloc[-1])
    rows: list[dict] = []
    info: dict[str, dict] = {}
    for k_m, (m, g) in enumerate(faith.groupby("method", sort=False)):
        m = str(m)
        problems = (g["map_problem"].fillna("").astype(str) if "map_problem" in g
                    else pd.Series([""] * len(g), index=g.index))
        ok = (problems == "").to_numpy()
        kinds = sorted({p.split(":")[0] for p in problems[~ok]})
        info[m] = {"n_maps": len(g), "n_unusable": int((~ok).sum()), "kinds": kinds}
        specs = [(s, ref, name, sign, "paired") for s, (ref, name, sign) in _PAIRED_SCORES.items()
                 if s in g and ref in g]
        specs += [(s, ref, name, sign, "chance") for s, (ref, name, sign) in _CHANCE_SCORES.items()
                  if s in g and ref in g and np.isfinite(_numeric(g[s])[ok]).any()]
        for k_s, (score, ref, name, sign, kind) in enumerate(specs):
            v, r = _numeric(g[score])[ok], _numeric(g[ref])[ok]
            keep = np.isfinite(v) & np.isfinite(r)
            v, r = v[keep], r[keep]
            d = v - r
            n = len(d)
            test_seed = seed + 1000 * k_m + k_s
            if score == "pointing_hit":
                p = _poisson_binomial_p(v, r)
                test = _POISSON_BINOMIAL
            else:
                p = _sign_flip_p(d, n_perm=n_perm, seed=test_seed)
                test = _SIGN_FLIP
            lo, hi = _boot_interval(d, n_boot=n_boot, level=level, rng=rng) if n else (np.nan, np.nan)
            rows.append({
                "method": m, "score": score, "baseline": name,
                "perturbation": (perturbation if score == "deletion_auc" else "blur" if score == "insertion_auc"
                                 else ""),
                "value": float(v.mean()) if n else np.nan, "random_value": float(r.mean()) if n else np.nan,
                "difference": float(d.mean()) if n else np.nan, "ci_low": lo, "ci_high": hi, "n": int(n),
                "p_value": p, "test": test, "_sign": sign, "ci_level": level,
            })
    p_adj = holm([r["p_value"] for r in rows]) if rows else np.array([])
    for r, q in zip(rows, p_adj):
        r["p_adj"] = float(q)
        sig = bool(np.isfinite(q) and q < alpha)
        r["better"] = bool(sig and r["difference"] * r["_sign"] > 0)
        r["worse"] = bool(sig and r["difference"] * r["_sign"] < 0)
    for m, inf in info.items():
        mine = [r for r in rows if r["method"] == m]
        verdict_rows = [r for r in mine if r["score"] in _PAIRED_SCORES]
        notes = []
        if inf["n_unusable"]:
            notes.append(f"{inf['n_unusable']} of {inf['n_maps']} maps unusable ({'; '.join(inf['kinds'])}), "
                         "left out of the tests")
        if m not in flagged:
            notes.append("sanity check not run" if sanity is None else "sanity check has no rows for this method")
        if flagged.get(m):
            rho = final_rho.get(m, float("nan"))
            verdict = FAILS_SANITY
            why = ("its maps stay similar when the model's blocks are re-initialised (model-randomisation "
                   f"check flagged; Spearman {_fmt(rho)} after the last block), so they do not depend on what "
                   "the model learned")
        elif inf["n_unusable"] * 2 > inf["n_maps"]:
            verdict = NOT_DISTINGUISHABLE
            why = f"most maps are unusable ({inf['n_unusable']} of {inf['n_maps']}: {'; '.join(inf['kinds'])})"
            notes = notes[1:]
        elif not any(r["n"] for r in verdict_rows):
            verdict = NOT_DISTINGUISHABLE
            why = "no deletion or insertion score to compare with the random map"
        elif any(r["better"] for r in verdict_rows) and not any(r["worse"] for r in verdict_rows):
            verdict = BETTER
            why = "; ".join("significantly better than the random map: " + _row_phrase(r)
                            for r in verdict_rows if r["better"])
        else:
            verdict = NOT_DISTINGUISHABLE
            worse = [r for r in verdict_rows if r["worse"]]
            if worse:
                why = "; ".join("significantly worse than the random map: " + _row_phrase(r) for r in worse)
            else:
                why = "no significant difference from the random map: " + "; ".join(
                    _row_phrase(r) for r in verdict_rows if r["n"])
        reason = why + ("" if not notes else "; " + "; ".join(notes))
        if not mine:  # no score at all: one row carries the verdict
            rows.append({"method": m, "score": "deletion_auc", "baseline": "random map", "perturbation": perturbation,
                         "value": np.nan, "random_value": np.nan, "difference": np.nan, "ci_low": np.nan,
                         "ci_high": np.nan, "n": 0, "p_value": np.nan, "p_adj": np.nan, "better": False,
                         "worse": False, "test": _SIGN_FLIP})
            mine = rows[-1:]
        for r in mine:
            r.update(verdict=verdict, reason=reason, n_maps=inf["n_maps"], n_unusable=inf["n_unusable"])
    out = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    out["n"] = out["n"].astype(np.int64)
    out[["n_maps", "n_unusable"]] = out[["n_maps", "n_unusable"]].astype(np.int64)
    out[["better", "worse"]] = out[["better", "worse"]].astype(bool)
    return out
