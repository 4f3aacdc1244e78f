"""Mean-ablation effects of heads and MLPs on a finding, and the test against random heads.

A finding is a number computed from the model's outputs over the audit set (an association
effect size d, a harmful-label rate gap, an accuracy gap between two groups). With the
decomposition ``output = rest + sum_c contribution_c`` (:mod:`.decompose`), mean-ablating
component ``c`` replaces its contribution by its mean over the audit set:
``output - (contribution_c - mean_c)``. This is the *direct* effect (TextSpan's mean-ablation):
later blocks are not re-run.

* Effect of ``c``: ``sign(before) * (before - after_c)``: how much of the finding ``c`` carries
  (positive: ablating it moves the finding towards 0). 95% percentile bootstrap interval over images
  (the component means held at their audit-set values).
* Random test: the top-k heads are chosen on one random half of the images (selection) and the
  reduction ``|before| - |after|`` of ablating them together is measured on the other half (test),
  so that choosing the best heads does not by itself beat random ones. It is compared with ablating
  k heads drawn at random from the same layers, on the same test half: all k-sets when there are at
  most ``n_random`` of them (exact p = share of sets reducing at least as much, the chosen set
  included), otherwise ``n_random`` draws with ``p = (1 + #{random >= observed}) / (1 + n_random)``.
  Holm's correction over every (finding, k) row. With H heads no p is below ``1 / C(H, k)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit.errors import UsageError
from audit.stats.multiple import holm
from audit.stats.resampling import as_rng, percentile_ci
from audit.stats.rules import ALPHA

__all__ = ["ABLATION_COLUMNS", "EFFECT_COLUMNS", "FindingSpec", "accuracy_gap_finding", "association_finding",
           "component_effects", "harmful_gap_finding", "prediction_share_finding",
           "random_head_test"]

EFFECT_COLUMNS = ["finding", "component", "layer", "head", "n", "before", "after", "effect", "ci_low", "ci_high",
                  "rank"]
ABLATION_COLUMNS = ["finding", "k", "components", "n_test", "before", "after", "change", "reduction",
                    "random_mean", "random_q95", "n_random", "exact", "random_p", "p_adj", "significant",
                    "accuracy_before", "accuracy_after"]

Evaluate = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class FindingSpec:
    """A finding as a function of the outputs: ``evaluate(outputs (n, D), rows (n,)) -> float``.

    ``rows`` are the indices of ``outputs``' rows in the audit set (to look up groups and labels).
    """

    name: str
    kind: str
    evaluate: Evaluate


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


def association_finding(name: str, groups: np.ndarray, x_group: str, y_group: str, A: np.ndarray,
                        B: np.ndarray) -> FindingSpec:
    """Image-EAT effect size d of image groups X / Y against text sets A / B (:func:`audit.stats.weat`)."""
    from audit.stats.association import weat

    g = np.asarray(groups).astype(str)
    for v in (x_group, y_group):
        if not (g == str(v)).any():
            raise UsageError(f"components finding {name!r}: group {v!r} has no images")

    def evaluate(out: np.ndarray, rows: np.ndarray) -> float:
        gr = g[rows]
        X, Y = out[gr == str(x_group)], out[gr == str(y_group)]
        if len(X) < 2 or len(Y) < 2:
            return float("nan")
        return float(weat(X, Y, A, B, n_perm=1, exact_limit=0)["effect_size"])  # d only: the test is elsewhere

    return FindingSpec(name=name, kind="association", evaluate=evaluate)


def _two_group_rate(name: str, groups: np.ndarray, group_a: str, group_b: str,
                    hit: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Evaluate:
    g = np.asarray(groups).astype(str)
    for v in (group_a, group_b):
        if not (g == str(v)).any():
            raise UsageError(f"components finding {name!r}: group {v!r} has no images")

    def evaluate(out: np.ndarray, rows: np.ndarray) -> float:
        h = hit(out, rows).astype(float)
        gr = g[rows]
        a, b = h[gr == str(group_a)], h[gr == str(group_b)]
        return float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")

    return evaluate


def accuracy_gap_finding(name: str, groups: np.ndarray, labels: np.ndarray, to_logits: Callable[[np.ndarray], np.ndarray],
                         group_a: str, group_b: str) -> FindingSpec:
    """Accuracy of group A minus group B, predictions = argmax of ``to_logits(outputs)``."""
    y = np.asarray(labels)

    def hit(out: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return to_logits(out).argmax(axis=1) == y[rows]

    return FindingSpec(name=name, kind="accuracy_gap", evaluate=_two_group_rate(name, groups, group_a, group_b, hit))


def prediction_share_finding(name: str, groups: np.ndarray, to_logits: Callable[[np.ndarray], np.ndarray], cls: int,
                             group_a: str, group_b: str) -> FindingSpec:
    """Share of group A's images predicted as class ``cls`` minus group B's (a prediction-share gap)."""

    def hit(out: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return to_logits(out).argmax(axis=1) == int(cls)

    return FindingSpec(name=name, kind="prediction_share",
                       evaluate=_two_group_rate(name, groups, group_a, group_b, hit))


def harmful_gap_finding(name: str, groups: np.ndarray, label_emb: np.ndarray, harmful: np.ndarray, group_a: str,
                        group_b: str) -> FindingSpec:
    """Harmful-label rate of group A minus group B (zero-shot argmax over a label set's texts)."""
    T = _unit(np.asarray(label_emb, dtype=np.float64))
    bad = np.asarray(harmful, dtype=bool)

    def hit(out: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return bad[np.argmax(_unit(out) @ T.T, axis=1)]

    return FindingSpec(name=name, kind="harmful_gap", evaluate=_two_group_rate(name, groups, group_a, group_b, hit))


def _deltas(contributions: np.ndarray) -> np.ndarray:
    """``contribution - mean over images``: what mean-ablation subtracts, ``(N, K, D)``."""
    return contributions - contributions.mean(axis=0, keepdims=True)


def component_effects(contributions: np.ndarray, rest: np.ndarray, finding: FindingSpec, *, names: Sequence[str],
                      layers: Sequence[int], heads: Sequence[int], n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Effect of mean-ablating each component on ``finding``, with a bootstrap interval over images.

    Args:
        contributions: ``(N, K, D)`` from :func:`~audit.components.decompose.decompose_batches`.
        rest: ``(N, D)``.
        finding: what is measured.
        names, layers, heads: per component (``head = -1`` for an MLP).
        n_boot: bootstrap resamples of the images.

    Returns:
        DataFrame with :data:`EFFECT_COLUMNS`, ranked by effect (1 = carries most of the finding).
    """
    C = np.asarray(contributions, dtype=np.float64)
    n, k, _ = C.shape
    out = np.asarray(rest, dtype=np.float64) + C.sum(axis=1)
    delta = _deltas(C)
    rows = np.arange(n)
    before = finding.evaluate(out, rows)
    if not np.isfinite(before):
        raise UsageError(f"components: finding {finding.name!r} cannot be computed on the audit set")
    s = 1.0 if before >= 0 else -1.0
    after = np.array([finding.evaluate(out - delta[:, c], rows) for c in range(k)])
    effect = s * (before - after)
    rng = as_rng(seed)
    boot = np.full((n_boot, k), np.nan)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        out_b = out[idx]  # once per resample, not once per component
        bef = finding.evaluate(out_b, idx)
        for c in range(k):
            boot[b, c] = s * (bef - finding.evaluate(out_b - delta[idx, c], idx))
    lo, hi = percentile_ci(boot, alpha=ALPHA)
    df = pd.DataFrame({"finding": finding.name, "component": list(names), "layer": list(layers), "head": list(heads),
                       "n": n, "before": before, "after": after, "effect": effect, "ci_low": lo, "ci_high": hi})
    df["rank"] = df["effect"].rank(ascending=False, method="first").astype(int)
    return df.sort_values("rank", ignore_index=True)[EFFECT_COLUMNS]


def random_head_test(contributions: np.ndarray, rest: np.ndarray, finding: FindingSpec, *, names: Sequence[str],
                     heads: Sequence[int], ks: Sequence[int] = (1, 2, 4, 8), n_random: int = 200, seed: int = 0,
                     accuracy: Callable[[np.ndarray, np.ndarray], float] | None = None) -> pd.DataFrame:
    """Top-k heads (chosen on a selection half) against k random heads of the same layers (test half).

    Args:
        contributions, rest, finding, names, heads: as in :func:`component_effects` (MLPs are not drawn).
        ks: set sizes; those not below the number of heads are skipped.
        n_random: random k-sets (all sets are enumerated when there are at most this many).
        accuracy: ``accuracy(outputs, rows) -> float`` (overall or zero-shot accuracy), for the cost.

    Returns:
        DataFrame with :data:`ABLATION_COLUMNS` (``p_adj``: Holm over this table's rows; combine tables
        with :func:`adjust`).
    """
    C = np.asarray(contributions, dtype=np.float64)
    n = C.shape[0]
    out = np.asarray(rest, dtype=np.float64) + C.sum(axis=1)
    delta = _deltas(C)
    head_idx = np.flatnonzero(np.asarray(heads) >= 0)
    rng = as_rng(seed)
    perm = rng.permutation(n)
    sel, test = np.sort(perm[: n // 2]), np.sort(perm[n // 2:])
    before_sel = finding.evaluate(out[sel], sel)
    s = 1.0 if before_sel >= 0 else -1.0
    eff_sel = np.array([s * (before_sel - finding.evaluate(out[sel] - delta[sel, c], sel)) for c in head_idx])
    order = head_idx[np.argsort(-eff_sel, kind="stable")]
    out_test, delta_test = out[test], delta[test]  # indexed once: after_of runs for every random set
    before = finding.evaluate(out_test, test)

    def after_of(subset: np.ndarray) -> float:
        return finding.evaluate(out_test - delta_test[:, subset].sum(axis=1), test)

    rows = []
    for k in ks:
        if k >= len(head_idx) or k < 1:
            continue
        top = order[:k]
        after = after_of(top)
        red = abs(before) - abs(after)
        n_sets = math.comb(len(head_idx), k)
        if n_sets <= n_random:
            sets = [np.asarray(c) for c in itertools.combinations(head_idx, k)]
            exact = True
        else:
            sets = [rng.choice(head_idx, size=k, replace=False) for _ in range(n_random)]
            exact = False
        rand = np.array([abs(before) - abs(after_of(c)) for c in sets])
        tol = 1e-12 * max(1.0, abs(red))
        ge = int((rand >= red - tol).sum())
        p = ge / len(sets) if exact else (1 + ge) / (1 + len(sets))
        acc_b = accuracy(out_test, test) if accuracy else np.nan
        acc_a = accuracy(out_test - delta_test[:, top].sum(axis=1), test) if accuracy else np.nan
        rows.append({"finding": finding.name, "k": int(k), "components": ", ".join(names[i] for i in top),
                     "n_test": len(test), "before": before, "after": after, "change": after - before,
                     "reduction": red, "random_mean": float(rand.mean()),
                     "random_q95": float(np.quantile(rand, 0.95)), "n_random": len(sets), "exact": exact,
                     "random_p": float(p), "p_adj": np.nan, "significant": False,
                     "accuracy_before": float(acc_b), "accuracy_after": float(acc_a)})
    return adjust(pd.DataFrame(rows, columns=ABLATION_COLUMNS))


def adjust(table: pd.DataFrame, *, alpha: float = ALPHA) -> pd.DataFrame:
    """Holm-adjust ``random_p`` over all rows (every finding and k): ``p_adj``, ``significant``."""
    t = table.copy()
    if len(t):
        t["p_adj"] = holm(t["random_p"].to_numpy(dtype=float))
        t["significant"] = (t["p_adj"] < alpha) & (t["reduction"] > 0)
    return t
