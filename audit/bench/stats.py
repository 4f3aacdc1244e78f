"""``vision-audit bench stats``: timing of the statistics layer at audit scale.

Part 1: ``--rows`` predictions (default 1,000,000) in 8 groups, binary task, 1,000 bootstrap
resamples and 1,000 permutations: group_performance + disparity_tests (goal <= 20 s on 2 cores).
Part 2: ``--emb-rows`` x ``--dim`` embeddings (default 200,000 x 512) in 4 groups: centroids and
dispersion (bootstrap + permutation), a linear probe, and an image-EAT association test
(goal <= 60 s).
Part 3 (``slices``): ``--slice-rows`` x ``--dim`` embeddings (default 100,000 x 512) of 10 classes
with one planted error slice: :func:`audit.slices.discover_slices` (discovery + confirmation, no
naming) against a baseline measured in the same process, one scikit-learn ``GaussianMixture`` fit
(16 diagonal components) on the same PCA-reduced discovery half; prints both, the ratio, and the
absolute seconds against the goal (<= 60 s on 2 cores).
``--only PART`` runs one part (performance | embeddings | slices).
Prints measured seconds and pass/miss; exit code 0 either way (a benchmark reports, it does not
gate), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

GOAL_PERF_S = 20.0
GOAL_EMB_S = 60.0
GOAL_SLICES_S = 60.0


def _predictions(n: int, rng: np.random.Generator) -> pd.DataFrame:
    groups = np.array([f"g{i}" for i in range(8)])
    g = rng.integers(0, 8, n)
    label = rng.integers(0, 2, n)
    p_correct = 0.80 + 0.01 * g  # a small planted gap
    correct = rng.random(n) < p_correct
    pred = np.where(correct, label, 1 - label)
    score = np.clip(rng.normal(0.8, 0.1, n), 0.5, 1.0)
    return pd.DataFrame({
        "label": pd.Categorical.from_codes(label, ["neg", "pos"]).astype(str),
        "pred": pd.Categorical.from_codes(pred, ["neg", "pos"]).astype(str),
        "score": score, "group": groups[g], "site": np.array(["a", "b"])[rng.integers(0, 2, n)],
    })


def _part1(rows: int, n_boot: int, n_perm: int, seed: int) -> float:
    from audit.stats.performance import disparity_tests, group_performance

    df = _predictions(rows, np.random.default_rng(seed))
    t0 = time.perf_counter()
    gp = group_performance(df, group_cols=["group"], pos_label="pos", n_boot=n_boot, seed=seed)
    t1 = time.perf_counter()
    dt = disparity_tests(df, group_cols=["group"], pos_label="pos", n_boot=n_boot, n_perm=n_perm, seed=seed)
    t2 = time.perf_counter()
    print(f"  group_performance: {t1 - t0:6.2f} s ({len(gp)} rows)")
    print(f"  disparity_tests:   {t2 - t1:6.2f} s ({len(dt)} tests)")
    return t2 - t0


def _part2(rows: int, dim: int, n_boot: int, n_perm: int, probe_perm: int, seed: int) -> float:
    from audit.stats.association import AssociationTest, association_table
    from audit.stats.embeddings import embedding_group_stats, linear_probe

    rng = np.random.default_rng(seed)
    g = rng.integers(0, 4, rows)
    shift = rng.normal(size=(4, dim)).astype(np.float32) * 0.05
    emb = rng.normal(size=(rows, dim)).astype(np.float32) + 1.0 + shift[g]
    groups = pd.DataFrame({"group": np.array(["a", "b", "c", "d"])[g]})
    text = {"pleasant": rng.normal(size=(25, dim)).astype(np.float32),
            "unpleasant": rng.normal(size=(25, dim)).astype(np.float32)}
    t0 = time.perf_counter()
    eg, ed = embedding_group_stats(emb, groups, group_cols=["group"], n_boot=n_boot, n_perm=n_perm, seed=seed)
    t1 = time.perf_counter()
    lp = linear_probe(emb, groups, attribute="group", n_perm=probe_perm, seed=seed)
    t2 = time.perf_counter()
    at = association_table(emb, groups, text, tests=[AssociationTest("image-EAT a-b", "pleasant", "unpleasant", "a",
                                                                     "b", attribute="group")],
                           n_perm=n_perm, seed=seed)
    t3 = time.perf_counter()
    print(f"  embedding_group_stats: {t1 - t0:6.2f} s ({len(eg)} groups, {len(ed)} pairs)")
    print(f"  linear_probe:          {t2 - t1:6.2f} s ({lp['note'].iloc[0]})")
    print(f"  association_table:     {t3 - t2:6.2f} s (n_x={at['n_x'].iloc[0]}, n_y={at['n_y'].iloc[0]})")
    return t3 - t0


def _slice_data(rows: int, dim: int, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """10 classes as clusters with 5 sub-clusters each; 8% errors, 38% in one sub-cluster of class c0."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 10, rows)
    sub = rng.integers(0, 5, rows)
    centre = rng.normal(size=(10, dim)).astype(np.float32) * 3
    offset = rng.normal(size=(10, 5, dim)).astype(np.float32) * 1.5
    emb = centre[cls] + offset[cls, sub] + rng.normal(size=(rows, dim)).astype(np.float32)
    p_err = np.where((cls == 0) & (sub == 0), 0.38, 0.08)
    pred = pd.DataFrame({"row_id": np.arange(rows), "label": np.array([f"c{i}" for i in range(10)])[cls],
                         "correct": rng.random(rows) >= p_err})
    return emb.astype(np.float32), pred


def _part3(rows: int, dim: int, seed: int) -> float:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    from audit.slices import discover_slices
    from audit.slices.core import _features, split_halves

    emb, pred = _slice_data(rows, dim, seed)
    err = ~pred["correct"].to_numpy()
    # the baseline: one plain GaussianMixture on the same PCA-reduced discovery half
    disc = split_halves(pred["label"].to_numpy(), err, seed=seed)
    t0 = time.perf_counter()
    z = _features(emb, disc, pca_dim=32, seed=seed)
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        GaussianMixture(n_components=16, covariance_type="diag", reg_covar=1e-3, random_state=seed).fit(z[disc])
    t2 = time.perf_counter()
    slices, _ = discover_slices(emb, pred, seed=seed)
    t3 = time.perf_counter()
    base, ours = t2 - t1, t3 - t2
    conf = slices[slices["confirmed"]]
    print(f"  PCA to {z.shape[1]} dims (discovery half): {t1 - t0:6.2f} s")
    print(f"  baseline: one GaussianMixture fit:  {base:6.2f} s (16 diagonal components, {int(disc.sum()):,} rows)")
    print(f"  discover_slices:                    {ours:6.2f} s ({len(slices)} candidates tested, {len(conf)} confirmed)")
    print(f"  ratio discover_slices / one GaussianMixture fit: {ours / base:.1f}")
    return ours


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    ap = argparse.ArgumentParser(prog="vision-audit bench stats", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="prediction rows (default 1,000,000)")
    ap.add_argument("--emb-rows", type=int, default=200_000, help="embedding rows (default 200,000)")
    ap.add_argument("--dim", type=int, default=512, help="embedding width (default 512)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--n-perm", type=int, default=1000)
    ap.add_argument("--probe-perm", type=int, default=200, help="linear-probe label permutations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-embeddings", action="store_true")
    ap.add_argument("--slice-rows", type=int, default=100_000, help="rows of the slices part (default 100,000)")
    ap.add_argument("--only", choices=["performance", "embeddings", "slices"], default=None,
                    help="run only this part")
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if a.rows < 100 or a.emb_rows < 100 or a.slice_rows < 1000:
        print("bench stats: --rows and --emb-rows must be at least 100, --slice-rows at least 1,000")
        return 2
    print(f"bench stats (cpu count {os.cpu_count()}, numpy {np.__version__})")
    if a.only in (None, "performance"):
        print(f"part 1: {a.rows:,} rows x 8 groups, {a.n_boot} resamples, {a.n_perm} permutations")
        t = _part1(a.rows, a.n_boot, a.n_perm, a.seed)
        scale = "" if a.rows == 1_000_000 else " (scaled run; the goal is for 1,000,000 rows)"
        print(f"  total {t:.2f} s; goal <= {GOAL_PERF_S:.0f} s: {'pass' if t <= GOAL_PERF_S else 'miss'}{scale}")
    if a.only == "embeddings" or (a.only is None and not a.skip_embeddings):
        print(f"part 2: {a.emb_rows:,} x {a.dim} embeddings, 4 groups")
        t = _part2(a.emb_rows, a.dim, a.n_boot, a.n_perm, a.probe_perm, a.seed)
        scale = "" if (a.emb_rows, a.dim) == (200_000, 512) else " (scaled run; the goal is for 200,000 x 512)"
        print(f"  total {t:.2f} s; goal <= {GOAL_EMB_S:.0f} s: {'pass' if t <= GOAL_EMB_S else 'miss'}{scale}")
    if a.only in (None, "slices"):
        print(f"part 3 (slices): {a.slice_rows:,} x {a.dim} embeddings, 10 classes, one planted error slice")
        t = _part3(a.slice_rows, a.dim, a.seed)
        scale = "" if (a.slice_rows, a.dim) == (100_000, 512) else " (scaled run; the goal is for 100,000 x 512)"
        print(f"  discovery + confirmation {t:.2f} s; goal <= {GOAL_SLICES_S:.0f} s: "
              f"{'pass' if t <= GOAL_SLICES_S else 'miss'}{scale}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
