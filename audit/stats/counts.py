"""Counts and resampling over them: the engine under group_performance and disparity_tests.

Every confusion-matrix metric of :mod:`audit.stats.metrics` is a function of a group's K x K
confusion matrix, so the within-group nonparametric bootstrap is a Multinomial(n_g, cell
shares) draw of that matrix (:func:`audit.stats.resampling.multinomial_bootstrap`), and the
group-label permutation null is a multivariate hypergeometric draw of each group's cells from
the pooled cells (:func:`audit.stats.resampling.hypergeometric_permutation`). A million rows
cost what a thousand do.

A calibration metric (ECE) resamples rows, confidence together with correctness, in the
bootstrap (rows drawn with replacement within the group) and in the permutation null (group
labels permuted over rows). ECE = sum_b |S_b| / n with S_b the sum over bin b of
(correct - confidence), so a resample is one weighted bincount over (replicate, group, bin)
cells, in chunks that bound the memory. Above :data:`ECE_EXACT_ROW_DRAWS` rows x resamples,
the (bin, correct) cell counts are still drawn exactly and each cell's confidence sum is a
normal draw with the moments of sampling its rows with (bootstrap) or without (permutation,
finite-population corrected) replacement (see :mod:`audit.stats.performance`).

Here: input checks and preparation (:func:`prepare`), group codes, the metric keys
(metric, class) a table has, a metric's value / denominator / score parts for a key
(:func:`metric_value`, :func:`metric_denom`, :func:`score_parts`) and the :class:`Engine`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from audit.errors import UsageError
from audit.stats.metrics import bin_index, div, metric_def, metric_names, nanmean, ovr_counts
from audit.stats.resampling import hypergeometric_permutation, multinomial_bootstrap

__all__ = [
    "ALL",
    "ECE_EXACT_ROW_DRAWS",
    "MACRO",
    "MAX_CLASSES_JOINT",
    "SEP",
    "Classes",
    "Engine",
    "Key",
    "Prepared",
    "attributes",
    "check_columns",
    "cls_name",
    "group_codes",
    "is_calibration",
    "keys_for",
    "metric_denom",
    "metric_value",
    "prepare",
    "score_parts",
]

ALL, MACRO = "__all__", "__macro__"
SEP = "×"
MAX_CLASSES_JOINT = 64  # above this the K x K joint bootstrap is too large; see Engine
#: ECE resampling draws rows exactly (confidence and correctness together) while rows x
#: resamples stays at or below this; above it, the cell approximation is used (module docstring).
ECE_EXACT_ROW_DRAWS = 50_000_000
_CHUNK = 1 << 20  # elements per vectorised chunk: bounds the memory of every resampling step

Classes = Literal["ovr+macro", "ovr", "macro", "none"]
Key = tuple[str, "int | str"]  # (metric, class index | MACRO | ALL)


# --------------------------------------------------------------------------- a metric for a key


def metric_value(cm: np.ndarray, metric: str, cls_i: int | str) -> np.ndarray:
    """Metric value from (..., K, K) confusion matrices for one class index, MACRO or ALL: (...,)."""
    d = metric_def(metric)
    if cls_i == ALL:
        return d.overall.value(cm)
    v = d.one_vs_rest.value(ovr_counts(cm))  # (..., K)
    if cls_i == MACRO:
        return nanmean(v, axis=-1)
    return v[..., cls_i]


def metric_denom(cm: np.ndarray, metric: str, cls_i: int | str) -> np.ndarray:
    """What the minimum group size counts (macro: the smallest class's), (...,)."""
    d = metric_def(metric)
    if cls_i == ALL:
        return d.overall.denominator(cm)
    den = d.one_vs_rest.denominator(ovr_counts(cm))
    if cls_i == MACRO:
        return den.min(axis=-1)
    return den[..., cls_i]


def score_parts(cm: np.ndarray, metric: str, ck: int | str) -> tuple[np.ndarray, np.ndarray] | None:
    """(successes, trials), each (..., J): the J rates whose mean is the metric (None for calibration)."""
    d = metric_def(metric)
    if d.calibration:
        return None
    if ck == ALL:
        return d.overall.score_parts(cm)
    x, n = d.one_vs_rest.score_parts(ovr_counts(cm))  # (..., K, J)
    if ck == MACRO:
        return x.reshape(*x.shape[:-2], -1), n.reshape(*n.shape[:-2], -1)
    return x[..., ck, :], n[..., ck, :]


def is_calibration(key: Key) -> bool:
    """Whether the key's metric resamples rows (ECE) rather than the confusion matrix."""
    return metric_def(key[0]).calibration

# --------------------------------------------------------------------------- input handling


def check_columns(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UsageError(
            f"{what}: column(s) {missing} not found in the predictions table; "
            f"available columns: {list(df.columns)}. Pass the right names (e.g. group_cols=[...])."
        )


def attributes(group_cols: Sequence[str], intersections: bool) -> list[tuple[str, ...]]:
    cols = list(group_cols)
    out: list[tuple[str, ...]] = [(c,) for c in cols]
    if intersections:
        for r in range(2, len(cols) + 1):
            out.extend(itertools.combinations(cols, r))
    return out


def group_codes(df: pd.DataFrame, cols: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """Integer group code per row and the group names (values joined with '×'), sorted."""
    codes = np.zeros(len(df), dtype=np.int64)
    level_names: list[np.ndarray] = []
    for c in cols:
        cc, uniq = pd.factorize(df[c], use_na_sentinel=True)
        names_c = [str(v) for v in uniq] + ["<missing>"]
        cc = np.where(cc < 0, len(uniq), cc)  # missing values form their own group
        order = np.argsort(names_c, kind="stable")  # sort groups by name
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        codes = codes * len(names_c) + rank[cc]
        level_names.append(np.asarray(names_c, dtype=object)[order])
    present, inv = np.unique(codes, return_inverse=True)
    names = []
    for code in present:
        parts = []
        rem = int(code)
        for lv in reversed(level_names):
            parts.append(str(lv[rem % len(lv)]))
            rem //= len(lv)
        names.append(SEP.join(reversed(parts)))
    return inv.astype(np.int64), names


@dataclass
class Prepared:
    """The predictions coded for counting (rows without a label or prediction dropped)."""

    df: pd.DataFrame
    y: np.ndarray  # (n,) int class index of the label
    yhat: np.ndarray  # (n,) int class index of the prediction
    score: np.ndarray | None  # (n,) confidence of the prediction
    classes: list[str]
    cls_keys: list[int | str]  # class indices, plus MACRO / ALL
    n_dropped: int


def prepare(
    predictions: pd.DataFrame,
    *,
    group_cols: Sequence[str],
    label_col: str,
    pred_col: str,
    score_col: str | None,
    metrics: Sequence[str],
    classes: Classes,
    pos_label: str | None,
) -> Prepared:
    """Check the input and code labels, predictions and classes as integers."""
    if not isinstance(predictions, pd.DataFrame):
        raise UsageError(f"predictions must be a pandas DataFrame, got {type(predictions).__name__}")
    if not group_cols:
        raise UsageError("group_cols is empty: name at least one group column (e.g. group_cols=['background'])")
    known = metric_names()
    bad = [m for m in metrics if m not in known]
    if bad:
        raise UsageError(f"unknown metric(s) {bad}; known: {list(known)}")
    wants_score = any(metric_def(m).calibration for m in metrics)
    need = [*group_cols, label_col, pred_col]
    if wants_score and score_col is not None:
        need.append(score_col)
    check_columns(predictions, need, "group_performance")
    df = predictions
    keep = df[label_col].notna() & df[pred_col].notna()
    n_dropped = int((~keep).sum())
    df = df.loc[keep]
    if len(df) == 0:
        raise UsageError(
            f"no labelled rows: column {label_col!r} is empty/null in every row; "
            "group performance needs ground-truth labels"
        )
    # hash-based factorize of the raw columns, then map the few uniques (sorting 1e6 strings is slow)
    lab_codes, lab_uniq = pd.factorize(df[label_col])
    prd_codes, prd_uniq = pd.factorize(df[pred_col])
    lab_names = [str(v) for v in lab_uniq]
    prd_names = [str(v) for v in prd_uniq]
    cls_names = sorted(set(lab_names) | set(prd_names))
    index = {c: i for i, c in enumerate(cls_names)}
    y = np.array([index[c] for c in lab_names], dtype=np.int64)[lab_codes]
    yhat = np.array([index[c] for c in prd_names], dtype=np.int64)[prd_codes]
    score = None
    if wants_score and score_col is not None:
        score = df[score_col].to_numpy(np.float64)
        if np.isnan(score).any() or (score < 0).any() or (score > 1).any():
            i = int(np.flatnonzero(np.isnan(score) | (score < 0) | (score > 1))[0])
            raise UsageError(
                f"column {score_col!r} must hold probabilities in [0, 1]; row {df.index[i]!r} has {score[i]!r}"
            )
    keys: list[int | str] = []
    if pos_label is not None:
        if str(pos_label) not in index:
            raise UsageError(f"pos_label {pos_label!r} is not among the classes {cls_names}")
        keys = [index[str(pos_label)]]
    else:
        if classes in ("ovr+macro", "ovr"):
            keys.extend(range(len(cls_names)))
        if classes in ("ovr+macro", "macro"):
            keys.append(MACRO)
    keys.append(ALL)
    return Prepared(df.reset_index(drop=True), y, yhat, score, cls_names, keys, n_dropped)


def keys_for(metrics: Sequence[str], cls_keys: list[int | str]) -> list[Key]:
    """The (metric, class) keys of a table: each metric on the rows it has (its scopes)."""
    out = []
    for ck in cls_keys:
        for m in metrics:
            scopes = metric_def(m).scopes
            if ck == ALL and "__all__" in scopes or ck != ALL and "one_vs_rest" in scopes:
                out.append((m, ck))
    return out


# --------------------------------------------------------------------------- the engine


class Engine:
    """Counts for one attribute (per-group confusion matrices, ECE rows and cells) and resampling on them.

    ECE is carried as S (..., n_bins): the sum over a bin's rows of (correct - confidence), so
    that ECE = sum_b |S_b| / n. Resampling rows resamples S exactly.
    """

    def __init__(self, prep: Prepared, codes: np.ndarray, n_groups: int, ece_bins: int) -> None:
        K = len(prep.classes)
        if K > MAX_CLASSES_JOINT:
            raise UsageError(
                f"{K} classes: count-based intervals resample the K x K confusion matrix and support at most "
                f"{MAX_CLASSES_JOINT} classes; pass pos_label=... for a one-class audit or map rare classes "
                "to 'other' before calling group_performance"
            )
        self.K, self.G, self.ece_bins = K, n_groups, ece_bins
        flat = (codes * K + prep.y) * K + prep.yhat
        self.cm = np.bincount(flat, minlength=n_groups * K * K).reshape(n_groups, K, K)  # (G, K, K)
        self.n_rows = self.cm.sum(axis=(1, 2))
        self.has_ece = prep.score is not None
        if self.has_ece:
            nb = ece_bins
            b = bin_index(prep.score, nb)
            corr = prep.y == prep.yhat
            cell = (codes * nb + b) * 2 + corr
            size = n_groups * nb * 2
            self.ece_counts = np.bincount(cell, minlength=size).reshape(n_groups, nb, 2)
            self._ece_sum = np.bincount(cell, weights=prep.score, minlength=size).reshape(n_groups, nb, 2)
            self._ece_sumsq = np.bincount(cell, weights=prep.score ** 2, minlength=size).reshape(n_groups, nb, 2)
            self.ece_mean = np.nan_to_num(div(self._ece_sum, self.ece_counts))  # (G, bins, 2)
            self.ece_S = self.ece_counts[..., 1] - self._ece_sum.sum(axis=-1)  # (G, bins)
            order = np.argsort(codes, kind="stable")  # rows grouped by group, for exact row resampling
            self._row_bin = b[order]
            self._row_d = (corr.astype(np.float64) - prep.score)[order]
            self._start = np.concatenate([[0], np.cumsum(self.n_rows)])
            edges = np.arange(nb + 1) / nb
            self._cell_lo = np.repeat(edges[:-1], 2).reshape(nb, 2)  # confidence range of each cell
            self._cell_hi = np.repeat(edges[1:], 2).reshape(nb, 2)

    # ---- values

    def value(self, key: tuple[str, int | str], cm: np.ndarray | None = None, S: np.ndarray | None = None,
              n: np.ndarray | None = None) -> np.ndarray:
        """Metric ``key`` from confusion matrices ``cm`` (..., K, K), or for ECE from S (..., bins) and sizes n."""
        metric, ck = key
        if metric_def(metric).calibration:
            return div(np.abs(S).sum(axis=-1), n)
        return metric_value(cm, metric, ck)

    def denom(self, metric: str, ck: int | str) -> np.ndarray:
        if metric_def(metric).calibration:
            return self.n_rows
        return metric_denom(self.cm, metric, ck)

    def rest(self, key: tuple[str, int | str]) -> tuple[np.ndarray, np.ndarray, tuple | None]:
        """Value, denominator and score parts of "every other row of the attribute", per group: (G,) each."""
        if is_calibration(key):
            n_rest = self.n_rows.sum() - self.n_rows
            return self.value(key, S=self.ece_S.sum(axis=0)[None] - self.ece_S, n=n_rest), n_rest, None
        cm_rest = self.cm.sum(axis=0)[None] - self.cm
        return (self.value(key, cm=cm_rest), np.asarray(metric_denom(cm_rest, *key), dtype=np.float64),
                score_parts(cm_rest, *key))

    def score_parts(self, key: tuple[str, int | str]) -> tuple[np.ndarray, np.ndarray] | None:
        return score_parts(self.cm, *key)

    # ---- bootstrap

    def bootstrap(self, keys, *, n_boot: int, rng: np.random.Generator, rest: bool = False) -> tuple[dict, dict | None]:
        """(B, G) replicate values per key, every group resampled independently.

        With ``rest`` also (B, G) replicates of each group's complement within the attribute
        (the sum of the other groups' replicates: a stratified bootstrap of the rest).
        """
        B, G, K = int(n_boot), self.G, self.K
        cm_keys = [k for k in keys if not is_calibration(k)]
        ece_keys = [k for k in keys if is_calibration(k)] if self.has_ece else []
        kids = np.random.SeedSequence(int(rng.integers(2**63))).spawn(2 * G)
        vals = {k: np.full((B, G), np.nan) for k in keys}
        rest_vals = {k: np.full((B, G), np.nan) for k in keys} if rest else None
        if cm_keys:
            cm_flat = self.cm.reshape(G, -1)
            total = np.zeros((B, K * K), dtype=np.int64) if rest else None
            for g in range(G):
                if self.n_rows[g] == 0:
                    continue
                rep = multinomial_bootstrap(cm_flat[g], n_boot=B, seed=np.random.default_rng(kids[g]))
                if total is not None:
                    total += rep
                rep = rep.reshape(B, K, K)
                for k in cm_keys:
                    vals[k][:, g] = self.value(k, cm=rep)
            if rest_vals is not None:
                for g in range(G):  # the same draws again (same seeds): rest = total - own
                    own = (multinomial_bootstrap(cm_flat[g], n_boot=B, seed=np.random.default_rng(kids[g]))
                           if self.n_rows[g] else 0)
                    rep = (total - own).reshape(B, K, K)
                    for k in cm_keys:
                        rest_vals[k][:, g] = self.value(k, cm=rep)
        if ece_keys:
            S = np.stack([self._ece_boot(g, B, np.random.default_rng(kids[G + g])) for g in range(G)], axis=1)
            for k in ece_keys:
                vals[k] = self.value(k, S=S, n=self.n_rows[None, :])
                if rest_vals is not None:
                    rest_vals[k] = self.value(k, S=S.sum(axis=1, keepdims=True) - S,
                                              n=(self.n_rows.sum() - self.n_rows)[None, :])
        return vals, rest_vals

    def _ece_boot(self, g: int, B: int, gen: np.random.Generator) -> np.ndarray:
        """(B, bins) S of B row bootstraps of group g."""
        nb = self.ece_bins
        s, e = int(self._start[g]), int(self._start[g + 1])
        n = e - s
        if n == 0:
            return np.zeros((B, nb))
        if n * B <= ECE_EXACT_ROW_DRAWS:
            bins, d = self._row_bin[s:e], self._row_d[s:e]
            out = np.empty((B, nb))
            step = max(1, _CHUNK // n)
            for a in range(0, B, step):
                m = min(step, B - a)
                idx = gen.integers(0, n, size=(m, n))
                key = bins[idx] + nb * np.arange(m)[:, None]
                out[a:a + m] = np.bincount(key.ravel(), weights=d[idx].ravel(), minlength=m * nb).reshape(m, nb)
            return out
        # cell approximation: exact multinomial (bin, correct) counts, normal confidence sums
        cnt = multinomial_bootstrap(self.ece_counts[g].ravel(), n_boot=B, seed=gen).reshape(B, nb, 2)
        c = self.ece_counts[g]
        var = np.maximum(np.nan_to_num(div(self._ece_sumsq[g], c)) - self.ece_mean[g] ** 2, 0.0)
        conf = cnt * self.ece_mean[g] + np.sqrt(cnt * var) * gen.standard_normal(cnt.shape)
        conf = np.clip(conf, cnt * self._cell_lo, cnt * self._cell_hi)
        return cnt[..., 1] - conf.sum(axis=-1)

    # ---- permutations

    def permute(self, keys, groups: np.ndarray, *, n_perm: int, rng: np.random.Generator,
                rest: bool = False) -> tuple[dict, dict | None]:
        """(P, len(groups)) values per key after permuting group labels among the rows of ``groups``.

        With ``rest`` also (P, len(groups)) values of each group's complement among those rows.
        Confusion-matrix metrics are drawn on counts (multivariate hypergeometric); ECE permutes
        rows (confidence with correctness), or uses the cell approximation for very many rows.
        """
        groups = np.asarray(groups, dtype=np.int64)
        k, K, P = len(groups), self.K, int(n_perm)
        cm_keys = [key for key in keys if not is_calibration(key)]
        ece_keys = [key for key in keys if is_calibration(key)] if self.has_ece else []
        vals = {key: np.empty((P, k)) for key in keys}
        rest_vals = {key: np.empty((P, k)) for key in keys} if rest else None
        if cm_keys:
            cm_flat = self.cm[groups].reshape(k, -1)
            pool = cm_flat.sum(axis=0)
            step = max(1, 4 * _CHUNK // (k * K * K))
            for a in range(0, P, step):
                m = min(step, P - a)
                rep = hypergeometric_permutation(cm_flat, n_perm=m, seed=rng)  # (m, k, K*K)
                for key in cm_keys:
                    vals[key][a:a + m] = self.value(key, cm=rep.reshape(m, k, K, K))
                    if rest_vals is not None:
                        rest_vals[key][a:a + m] = self.value(key, cm=(pool - rep).reshape(m, k, K, K))
        if ece_keys:
            n = self.n_rows[groups]
            step = max(1, 4 * _CHUNK // (k * 2 * self.ece_bins))
            for a in range(0, P, step):
                m = min(step, P - a)
                S = self._ece_perm(groups, m, rng)  # (m, k, bins)
                for key in ece_keys:
                    vals[key][a:a + m] = self.value(key, S=S, n=n)
                    if rest_vals is not None:
                        rest_vals[key][a:a + m] = self.value(key, S=self.ece_S[groups].sum(axis=0) - S, n=n.sum() - n)
        return vals, rest_vals

    def _ece_perm(self, groups: np.ndarray, P: int, rng: np.random.Generator) -> np.ndarray:
        """(P, k, bins) S of each group after permuting labels among the rows of ``groups``."""
        nb, k = self.ece_bins, len(groups)
        sizes = self.n_rows[groups]
        n = int(sizes.sum())
        if n * P <= ECE_EXACT_ROW_DRAWS:
            sl = [slice(int(self._start[g]), int(self._start[g + 1])) for g in groups]
            bins = np.concatenate([self._row_bin[s] for s in sl])
            d = np.concatenate([self._row_d[s] for s in sl])
            lab = np.repeat(np.arange(k), sizes)
            out = np.empty((P, k, nb))
            step = max(1, _CHUNK // max(n, 1))
            for a in range(0, P, step):
                m = min(step, P - a)
                pl = rng.permuted(np.broadcast_to(lab, (m, n)), axis=1)  # (m, n) permuted labels
                key = (pl + k * np.arange(m)[:, None]) * nb + bins[None, :]
                out[a:a + m] = np.bincount(key.ravel(), weights=np.broadcast_to(d, (m, n)).ravel(),
                                           minlength=m * k * nb).reshape(m, k, nb)
            return out
        # cell approximation: exact hypergeometric (bin, correct) counts; each group's confidence
        # sum in a cell is a normal draw with the moments of sampling without replacement from
        # what the previous groups left of the pooled cell
        cells = self.ece_counts[groups].reshape(k, -1)  # (k, 2 bins)
        cnt = hypergeometric_permutation(cells, n_perm=P, seed=rng).astype(np.float64)  # (P, k, C)
        N = np.broadcast_to(cells.sum(axis=0).astype(np.float64), (P, cells.shape[1])).copy()
        R = np.broadcast_to(self._ece_sum[groups].reshape(k, -1).sum(axis=0), N.shape).copy()
        tot_n = cells.sum(axis=0)
        mean = div(self._ece_sum[groups].reshape(k, -1).sum(axis=0), tot_n)
        var = np.maximum(np.nan_to_num(div(self._ece_sumsq[groups].reshape(k, -1).sum(axis=0), tot_n)
                                        - np.nan_to_num(mean) ** 2), 0.0)
        lo, hi = self._cell_lo.ravel(), self._cell_hi.ravel()
        conf = np.empty_like(cnt)
        for j in range(k - 1):
            m = cnt[:, j, :]
            fpc = (N - m) / np.maximum(N - 1, 1)
            x = m * np.nan_to_num(div(R, N))
            x = x + np.sqrt(np.maximum(m * var * fpc, 0.0)) * rng.standard_normal(m.shape)
            x = np.clip(x, m * lo, m * hi)
            x = np.clip(x, R - (N - m) * hi, R - (N - m) * lo)
            conf[:, j, :] = x
            R -= x
            N -= m
        conf[:, k - 1, :] = R
        cnt = cnt.reshape(P, k, nb, 2)
        return cnt[..., 1] - conf.reshape(P, k, nb, 2).sum(axis=-1)


def cls_name(prep: Prepared, ck: int | str) -> str:
    return prep.classes[ck] if isinstance(ck, int) else ck
