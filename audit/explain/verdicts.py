"""Verdicts against a random map: is a method's map worth showing?

:func:`faithfulness_verdicts` tests each method's per-image faithfulness scores (the
``faithfulness`` table of a run) against the random map on the same images, and the mask scores
against chance, and gives one plain verdict per method: "better than random", "not
distinguishable from random" or "fails the sanity check" (DESIGN.md: a method's map is only worth
showing with its verdict against a random map).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

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
