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
* :func:`audit.explain.verdicts.faithfulness_verdicts` tests these scores against the random map
  (and the mask scores against chance) and gives each method its verdict.
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
