"""Error slices: found in embedding space, confirmed on held-out rows, named in words.

Method
------
1. **Split.** Rows with a known ``correct`` value are split into a discovery half and a
   confirmation half, stratified by (class, correct) and seeded (:func:`split_halves`). Everything
   below is fitted on the discovery half; the confirmation half's errors are looked at once, to test.
2. **Features.** Image embeddings are L2-normalised (cosine geometry), reduced by PCA (fitted on
   the discovery half) to ``pca_dim`` dimensions and scaled to unit mean variance per dimension.
3. **Error-aware mixture** (Domino's idea, Eyuboglu et al. 2022). Per scope (``overall``: every
   row; ``class:<name>``: the rows of one class, for classes with enough rows and errors) a
   diagonal-covariance Gaussian mixture (scikit-learn ``GaussianMixture``, k-means start, at most
   ``n_components`` and one per ``rows_per_component`` discovery rows) is fitted to
   ``[PCA embedding, error indicator x error_weight, class one-hot x class_weight]`` (the class
   columns only in the overall scope). Weights are *copies*: a diagonal Gaussian's log-likelihood
   is a sum over columns and identical columns get identical means and variances, so k copies
   multiply that term's log-likelihood by exactly k - Domino's up-weighting of the error and label
   terms, with a stock Gaussian mixture. The 0/1 columns have height sqrt(CONTRAST x reg_covar),
   so a row costs at most CONTRAST / 2 = 5 nats per copy in a component of the other kind (a
   Bernoulli term with p ~ 0.7%), and much less in a mixed one: the error term pulls component
   boundaries towards where errors gather without dominating the embedding.
4. **Places, not twins.** The error term also splits one place in embedding space into an
   error-rich and an error-poor "twin" component. A slice has to be recognisable without knowing
   which rows are errors, so components are grouped by the Bhattacharyya distance of their
   error-free parts (embedding and class columns; complete linkage, cut at ``merge_distance``):
   each group is a candidate place, with the group's error rate.
5. **Membership rule** (fixed on the discovery half). A row's score for a place is its posterior
   p(place | embedding, class) under the mixture with the error columns marginalised out (for a
   diagonal Gaussian: dropped). The rule is score >= threshold: the place's core (posterior >=
   ``core_posterior``) when it holds at least ``target_size(min_group_size)`` discovery rows, else
   the core grown to that many discovery rows in order of the score (a slice with fewer cannot
   reach ``min_group_size`` confirmation rows). Places that err more than the rest of their scope
   with discovery Fisher p < ``discover_alpha`` and at least ``min_errors`` errors are candidates;
   a candidate whose discovery errors overlap a stronger one's (Jaccard >= ``dedupejaccard``) is
   dropped; at most ``max_slices`` go on.
6. **Confirmation** (the other half only). Each rule assigns the confirmation rows of its scope;
   the slice's error rate is compared with the rest of the scope: n, difference, a 1 - ``alpha``
   interval (binomial bootstrap of both groups' counts, hulled with their Wilson intervals and
   combined by MOVER, :func:`audit.stats.difference_interval`: it always contains the
   difference), the one-sided exact Fisher p (slice worse than the rest), Benjamini-Hochberg over
   the confirmable candidates; ``confirmed`` = p_adj <= ``fdr``. A slice or rest with fewer than
   ``min_group_size`` confirmation rows is reported but not confirmable (p NaN).
7. **Description** (:mod:`audit.slices.describe`). Members are every row (both halves) that the
   rule admits; typical images are the members with the highest score; with a text embedder the
   vocabulary is ranked by cos(text, mean slice image) - cos(text, mean rest image); with group
   columns the overlap text names each column's most over-represented group.

Why the p-values are valid: the rule is a function of (embedding, class) fixed before the
confirmation half's errors are seen; when errors are independent of the embedding (given the
class) membership is independent of those errors, so Fisher's exact test is exact (conservative),
and BH bounds the chance of any confirmed slice by ``fdr`` (simulated in tests/unit/test_slices.py).

Assumptions and limits: rows are independent; a slice is a *place* in embedding space (given the
class) that a Gaussian mixture can carve out - errors that gather along a weak direction inside
one cluster are found only as the larger place that holds them (e.g. the whole class); it needs
about 2 x ``min_group_size`` rows in all to be confirmable; the discovery-half figures
(``discover_*``) are optimistic by construction and are not evidence. Group labels are never an
input to discovery or confirmation; they only describe slices.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from audit.slices.confirm import (
    MEMBER_COLUMNS,
    SLICE_COLUMNS,
    Candidate,
    difference_ci,
    fisher_greater,
    jaccard,
    split_halves,
    target_size,
)

__all__ = [
    "MEMBER_COLUMNS",
    "SLICE_COLUMNS",
    "discover_slices",
    "split_halves",
]

TextEmbed = Callable[[list[str]], np.ndarray]


@dataclass
class _Marginal:
    """The fitted mixture with its error columns marginalised out."""

    log_w: np.ndarray  # (K,)
    mu: np.ndarray  # (K, d)
    var: np.ndarray  # (K, d)
    class_table: np.ndarray | None  # (C, K) log-likelihood of each class's one-hot columns
    p_err: np.ndarray  # (K,) the component's mean error indicator
    converged: bool = True
    extra_mu: np.ndarray | None = None  # (K, C * class_weight) the class columns (for twin distances)
    extra_var: np.ndarray | None = None

    def regions(self, max_distance: float) -> list[np.ndarray]:
        """Components grouped into places: complete linkage on the Bhattacharyya distance of their
        error-free parts (embedding and class columns), cut at ``max_distance``."""
        k = self.mu.shape[0]
        if k == 1 or max_distance <= 0:
            return [np.array([i]) for i in range(k)]
        mu, var = self.mu, self.var
        if self.extra_mu is not None and self.extra_var is not None:
            mu, var = np.hstack([mu, self.extra_mu]), np.hstack([var, self.extra_var])
        v = 0.5 * (var[:, None, :] + var[None, :, :])  # (K, K, F)
        db = (0.125 * ((mu[:, None, :] - mu[None, :, :]) ** 2 / v).sum(-1)
              + 0.5 * (np.log(v) - 0.5 * (np.log(var)[:, None, :] + np.log(var)[None, :, :])).sum(-1))
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import squareform

        db = np.maximum(0.5 * (db + db.T), 0.0)
        np.fill_diagonal(db, 0.0)
        lab = fcluster(linkage(squareform(db, checks=False), method="complete"), t=max_distance,
                       criterion="distance")
        return [np.flatnonzero(lab == g) for g in np.unique(lab)]

    def log_posterior(self, z: np.ndarray, cls: np.ndarray | None) -> np.ndarray:
        """(n, K) log p(k | z, class)."""
        prec = 1.0 / self.var  # (K, d)
        ll = -0.5 * ((z * z) @ prec.T - 2.0 * z @ (self.mu * prec).T
                     + np.sum(self.mu * self.mu * prec + np.log(2 * np.pi * self.var), axis=1))
        ll = ll + self.log_w
        if self.class_table is not None and cls is not None:
            ll = ll + self.class_table[cls]
        m = ll.max(axis=1, keepdims=True)
        return ll - (m + np.log(np.exp(ll - m).sum(axis=1, keepdims=True)))


#: squared height of the 0/1 columns over reg_covar: a row costs at most CONTRAST / 2 nats per copy in
#: a component of the other kind (a component whose variance there is the floor reg_covar)
CONTRAST = 10.0


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """(n,) log sum exp over the columns of (n, m)."""
    m = a.max(axis=1)
    return m + np.log(np.exp(a - m[:, None]).sum(axis=1))


def _gauss_ll(x: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """(n, K) summed diagonal Gaussian log-density of rows x (n, F) under (K, F) means / variances."""
    prec = 1.0 / var
    return -0.5 * ((x * x) @ prec.T - 2.0 * x @ (mu * prec).T
                   + np.sum(mu * mu * prec + np.log(2 * np.pi * var), axis=1))


def _fit_mixture(z: np.ndarray, err: np.ndarray, cls: np.ndarray | None, n_classes: int, *, n_components: int,
                 error_weight: int, class_weight: int, reg_covar: float, max_iter: int,
                 seed: int) -> _Marginal:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    d = z.shape[1]
    h = math.sqrt(CONTRAST * reg_covar)  # the height of the 0/1 columns
    cols = [z, np.repeat(h * err.astype(z.dtype)[:, None], error_weight, axis=1)]
    use_cls = cls is not None and class_weight > 0 and n_classes > 1
    if use_cls:
        onehot = np.zeros((z.shape[0], n_classes), dtype=z.dtype)
        onehot[np.arange(z.shape[0]), cls] = h
        cols.append(np.repeat(onehot, class_weight, axis=1))
    x = np.concatenate(cols, axis=1)
    gmm = GaussianMixture(n_components=n_components, covariance_type="diag", reg_covar=reg_covar,
                          max_iter=max_iter, tol=1e-3, init_params="kmeans", random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(x)
    resp = gmm.predict_proba(x)  # (n, K)
    p_err = (resp.T @ err.astype(np.float64)) / np.maximum(resp.sum(axis=0), 1e-12)
    mu = gmm.means_.astype(np.float64)
    var = gmm.covariances_.astype(np.float64)
    table = None
    lo = d + error_weight
    if use_cls:
        eye = np.repeat(h * np.eye(n_classes), class_weight, axis=1)  # (C, C * class_weight)
        table = _gauss_ll(eye, mu[:, lo:], var[:, lo:])  # (C, K)
    return _Marginal(np.log(np.maximum(gmm.weights_, 1e-300)), mu[:, :d], var[:, :d], table,
                     p_err, bool(gmm.converged_),
                     mu[:, lo:] if use_cls else None, var[:, lo:] if use_cls else None)


LOG_FLOOR = math.log(1e-300)


def _choose_threshold(log_score: np.ndarray, err: np.ndarray, *, core: float,
                      target: int) -> tuple[float, float, int, float, float] | None:
    """The rule of one candidate on the discovery rows: (log threshold, p, n, rate, rest_rate) or None.

    The candidate's core (posterior >= ``core``) when it holds at least ``target`` rows; else the
    ``target`` rows with the highest log posterior (ties included; never below
    :data:`LOG_FLOOR`): the core grown to its nearest rows, only as far as needed to be
    confirmable. None when the slice is empty, everything, or does not err more than the rest.
    """
    n_all, e_all = err.size, int(err.sum())
    t = math.log(core)
    if int((log_score >= t).sum()) < target:
        kth = np.partition(log_score, n_all - target)[n_all - target] if target < n_all else log_score.min()
        t = max(float(kth), LOG_FLOOR)
    m = log_score >= t
    n = int(m.sum())
    if n == 0 or n == n_all:
        return None
    a = int(err[m].sum())
    rate, rest = a / n, (e_all - a) / (n_all - n)
    if rate <= rest:
        return None
    return t, fisher_greater(a, n, e_all - a, n_all - n), n, rate, rest


# --------------------------------------------------------------------------- main entry
def discover_slices(
    embeddings: np.ndarray,
    predictions: pd.DataFrame,
    *,
    groups: pd.DataFrame | Sequence[str] | None = None,
    text_embed: TextEmbed | None = None,
    vocabulary: Any = None,
    describe_embeddings: np.ndarray | None = None,
    row_ids: np.ndarray | None = None,
    min_group_size: int = 50,
    fdr: float = 0.05,
    n_components: int = 16,
    rows_per_component: int = 32,
    pca_dim: int = 32,
    error_weight: int = 4,
    class_weight: int = 4,
    reg_covar: float = 1e-3,
    max_iter: int = 100,
    per_class: bool = True,
    max_class_features: int = 64,
    core_posterior: float = 0.5,
    merge_distance: float = 1.0,
    discover_alpha: float = 0.05,
    min_errors: int = 5,
    dedupejaccard: float = 0.6,
    max_slices: int = 25,
    n_words: int = 5,
    n_typical: int = 8,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Find subgroups where the model errs more, confirm them on held-out rows, and name them.

    See the module docstring for the method. Group labels (``groups``) are used only to describe
    the slices, never to find or test them.

    Args:
        embeddings: (N, D) image embeddings, one row per row of ``predictions`` (same order, or
            matched through ``row_ids``).
        predictions: the run's predictions table: ``correct`` (bool; rows where it is missing are
            left out), ``label`` (the class; optional, without it there is only the overall
            scope) and ``row_id`` (optional; default the position).
        groups: labelled group columns for the overlap text: a DataFrame aligned with
            ``predictions`` (by position), or names of columns of ``predictions``.
        text_embed: callable ``texts -> (T, D')`` embedding texts in the space of
            ``describe_embeddings``; None: slices are not named in words.
        vocabulary: what to name slices with: None (the shipped default), a
            :class:`~audit.slices.vocabulary.Vocabulary`, a vocabulary file path / ``"default"``,
            or a list of those (merged, see :func:`~audit.slices.vocabulary.load_vocabulary`).
        describe_embeddings: (N, D') image embeddings in the text embedder's space (e.g. CLIP
            image embeddings when ``embeddings`` are a ViT classifier's features); default
            ``embeddings``.
        row_ids: (N,) row ids of ``embeddings`` (as stored next to them); when given,
            ``predictions`` is matched to them through its ``row_id`` column.
        min_group_size: a slice (or its rest) with fewer confirmation-half rows is not
            confirmable; the rule aims for ``target_size(min_group_size)`` discovery rows.
        fdr: Benjamini-Hochberg level over the confirmable candidates.
        n_components: mixture components per scope, at most (fewer when the scope has fewer than
            ``n_components * rows_per_component`` discovery rows; at least 2).
        rows_per_component: discovery rows per mixture component.
        pca_dim: PCA dimensions of the embedding (at most D and the discovery rows - 1).
        error_weight: copies of the error column (its log-likelihood weight; 0: a plain mixture
            that ignores the errors, for comparison).
        class_weight: copies of the class one-hot columns in the overall scope.
        reg_covar: variance floor of every mixture column (the PCA embedding is scaled to unit
            mean variance).
        max_iter: EM iterations per mixture (a mixture that stops short is noted).
        per_class: also search each class (``scope = "class:<name>"``) that has at least
            2 x ``min_group_size`` confirmation rows and ``min_errors`` discovery errors.
        max_class_features: the overall mixture gets class columns only up to this many classes.
        core_posterior: the posterior of a slice's core.
        merge_distance: components closer than this (Bhattacharyya distance of their error-free
            parts, complete linkage) are one place; 0: every component on its own.
        discover_alpha: a place is a candidate when its discovery-half Fisher p is below this.
        min_errors: a candidate needs this many errors among its discovery members (and the data
            this many errors in all).
        dedupejaccard: a candidate whose discovery errors overlap a stronger candidate's this much
            (Jaccard) is dropped.
        max_slices: at most this many candidates (the strongest on the discovery half) are tested.
        n_words: concepts in ``top_words``.
        n_typical: typical images (row ids) per slice.
        n_boot: bootstrap replicates of the difference interval.
        alpha: 1 - level of the difference interval.
        seed: seed of the split, PCA, mixtures and bootstrap.

    Returns:
        ``(slices, members)`` with columns :data:`SLICE_COLUMNS` and :data:`MEMBER_COLUMNS`
        (docs/RUN_FORMAT.md ("Error slices")); ``slices.attrs["notes"]`` lists what was skipped and why. Slices are
        ordered confirmed first (by p_adj), then testable ones by p, then small ones;
        ``slice_id`` counts from 1 in that order.

    Raises:
        ValueError: shapes do not match, ``correct`` is missing, or an option is out of range.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> emb = rng.normal(size=(400, 8))
        >>> pred = pd.DataFrame({"label": rng.choice(["a", "b"], 400), "correct": rng.random(400) > 0.1})
        >>> slices, members = discover_slices(emb, pred, per_class=False)
        >>> bool(slices["confirmed"].any())
        False
    """
    emb = np.asarray(embeddings)
    with _threads(emb.size):
        return _discover(emb, predictions, groups=groups, text_embed=text_embed, vocabulary=vocabulary,
                         describe_embeddings=describe_embeddings, row_ids=row_ids,
                         min_group_size=min_group_size, fdr=fdr, n_components=n_components,
                         rows_per_component=rows_per_component, pca_dim=pca_dim, error_weight=error_weight,
                         class_weight=class_weight, reg_covar=reg_covar, max_iter=max_iter, per_class=per_class,
                         max_class_features=max_class_features, core_posterior=core_posterior, merge_distance=merge_distance,
                         discover_alpha=discover_alpha, min_errors=min_errors, dedupejaccard=dedupejaccard,
                         max_slices=max_slices, n_words=n_words, n_typical=n_typical, n_boot=n_boot, alpha=alpha,
                         seed=seed)


#: below this many embedding values the work runs on one BLAS thread (thread start-up costs more
#: than it saves on small matrices, and on a busy machine much more)
SMALL_PROBLEM = 4_000_000


@contextlib.contextmanager
def _threads(size: int) -> Iterator[None]:
    if size >= SMALL_PROBLEM:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=1):
        yield


def _discover(emb: np.ndarray, predictions: pd.DataFrame, *, groups: pd.DataFrame | Sequence[str] | None,
              text_embed: TextEmbed | None, vocabulary: Any, describe_embeddings: np.ndarray | None,
              row_ids: np.ndarray | None, min_group_size: int, fdr: float, n_components: int,
              rows_per_component: int | None, pca_dim: int, error_weight: int, class_weight: int,
              reg_covar: float, max_iter: int, per_class: bool, max_class_features: int, core_posterior: float, merge_distance: float,
              discover_alpha: float, min_errors: int, dedupejaccard: float, max_slices: int, n_words: int,
              n_typical: int, n_boot: int, alpha: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    notes: list[str] = []
    if emb.ndim != 2:
        raise ValueError(f"discover_slices: embeddings must be (N, D), got shape {emb.shape}")
    pred = predictions.reset_index(drop=True)
    if row_ids is not None:
        rid = np.asarray(row_ids).astype(np.int64).ravel()
        if rid.size != emb.shape[0]:
            raise ValueError(f"discover_slices: {rid.size} row_ids for {emb.shape[0]} embeddings")
        if "row_id" not in pred.columns:
            raise ValueError("discover_slices: row_ids given but predictions has no 'row_id' column")
        pos = pd.Series(np.arange(len(pred)), index=pred["row_id"].astype(np.int64).to_numpy())
        if not pos.index.is_unique:
            raise ValueError("discover_slices: predictions has duplicate row ids")
        missing = ~np.isin(rid, pos.index.to_numpy())
        if missing.any():
            raise ValueError(f"discover_slices: {int(missing.sum())} embedding row ids are not in predictions "
                             f"(first: {rid[missing][:5].tolist()})")
        take = pos.loc[rid].to_numpy()
        pred = pred.iloc[take].reset_index(drop=True)
        group_df = _group_frame(groups, predictions.reset_index(drop=True), len(predictions))
        group_df = None if group_df is None else group_df.iloc[take].reset_index(drop=True)
    else:
        if len(pred) != emb.shape[0]:
            raise ValueError(f"discover_slices: {emb.shape[0]} embeddings for {len(pred)} prediction rows; "
                             "pass row_ids to match them by row id")
        rid = pred["row_id"].astype(np.int64).to_numpy() if "row_id" in pred.columns else np.arange(len(pred))
        group_df = _group_frame(groups, pred, len(pred))
    desc = None if describe_embeddings is None else np.asarray(describe_embeddings)
    if desc is not None and desc.shape[0] != emb.shape[0]:
        raise ValueError(f"discover_slices: describe_embeddings has {desc.shape[0]} rows, embeddings {emb.shape[0]}")
    if "correct" not in pred.columns:
        raise ValueError("discover_slices: predictions has no 'correct' column; slices need labelled rows "
                         "(a run without labels has no errors to find)")
    if not 0 < fdr < 1 or not 0 < alpha < 1:
        raise ValueError(f"discover_slices: fdr and alpha must be in (0, 1), got {fdr}, {alpha}")
    if min_group_size < 1 or n_components < 1 or error_weight < 0 or pca_dim < 1:
        raise ValueError("discover_slices: min_group_size, n_components and pca_dim must be >= 1, error_weight >= 0")

    correct = pred["correct"].astype("boolean")
    finite = np.isfinite(emb).all(axis=1)
    usable = (correct.notna().to_numpy() & finite)
    if (~finite).any():
        notes.append(f"{int((~finite).sum())} rows with non-finite embeddings left out")
    if correct.isna().any():
        notes.append(f"{int(correct.isna().sum())} rows without a label left out")
    idx = np.flatnonzero(usable)
    if idx.size < 4 * min_group_size:
        notes.append(f"only {idx.size} labelled rows; slices need at least 4 x min_group_size = {4 * min_group_size}")
        return _empty_tables(notes)
    err = ~correct.to_numpy(dtype=bool, na_value=True)[idx]
    if "label" in pred.columns:
        labels = pred["label"].astype(str).to_numpy()[idx]
    else:
        labels = np.full(idx.size, "", dtype=object)
        notes.append("no 'label' column: only the overall scope is searched")
    class_names, cls = np.unique(labels, return_inverse=True)
    n_classes = len(class_names)
    if err.sum() < min_errors:
        notes.append(f"{int(err.sum())} errors; slices need at least {min_errors}")
        return _empty_tables(notes)

    ss = np.random.SeedSequence(seed)
    s_split, s_pca, s_mix, s_boot = ss.spawn(4)
    disc = split_halves(cls, err, seed=s_split)
    z = _features(emb[idx], disc, pca_dim=pca_dim, seed=int(s_pca.generate_state(1)[0]))

    scopes: list[tuple[str, np.ndarray, bool]] = [("overall", np.arange(idx.size), n_classes <= max_class_features)]
    if n_classes > max_class_features:
        notes.append(f"{n_classes} classes: the overall mixture has no class columns (max_class_features="
                     f"{max_class_features})")
    if per_class and n_classes > 1:
        skipped = 0
        for c, name in enumerate(class_names):
            rows = np.flatnonzero(cls == c)
            n_conf = int((~disc[rows]).sum())
            n_err = int(err[rows][disc[rows]].sum())
            if n_conf < 2 * min_group_size or n_err < min_errors:
                skipped += 1
                continue
            scopes.append((f"class:{name}", rows, False))
        if skipped:
            notes.append(f"{skipped} of {n_classes} classes not searched on their own (fewer than "
                         f"2 x min_group_size = {2 * min_group_size} confirmation rows or {min_errors} "
                         "discovery errors)")
    mix_seeds = s_mix.generate_state(len(scopes))
    target = target_size(min_group_size)

    candidates: list[Candidate] = []
    for (scope, rows, with_cls), mseed in zip(scopes, mix_seeds):
        rd = rows[disc[rows]]
        k = int(max(2, min(n_components, rd.size // max(1, rows_per_component))))
        model = _fit_mixture(z[rd], err[rd], cls[rd] if with_cls else None, n_classes, n_components=k,
                             error_weight=error_weight, class_weight=class_weight, reg_covar=reg_covar,
                             max_iter=max_iter, seed=int(mseed))
        if not model.converged:
            notes.append(f"{scope}: the mixture did not converge in {max_iter} iterations")
        logpost = model.log_posterior(z[rows], cls[rows] if with_cls else None)  # (n_scope, K)
        d_mask = disc[rows]
        base = err[rd].mean()
        w = np.exp(model.log_w)
        for region in model.regions(merge_distance):
            if float(np.sum(w[region] * model.p_err[region]) / np.sum(w[region])) <= base:
                continue
            sc = _logsumexp(logpost[:, region])
            best = _choose_threshold(sc[d_mask], err[rd], core=core_posterior, target=target)
            if best is None:
                continue
            t, p, n, rate, rest = best
            members = rows[d_mask][sc[d_mask] >= t]
            if int(err[members].sum()) < min_errors or not p < discover_alpha:
                continue
            candidates.append(Candidate(scope, region, t, rows, sc, members, members[err[members]], n, rate, rest,
                                         p))
    candidates.sort(key=lambda c: (c.discover_p, -c.n_discover))
    kept: list[Candidate] = []
    for c in candidates:
        if any(jaccard(c.disc_errors, o.disc_errors) >= dedupejaccard for o in kept):
            continue
        kept.append(c)
    if len(kept) > max_slices:
        notes.append(f"{len(kept)} candidates; the {max_slices} strongest on the discovery half were tested")
        kept = kept[:max_slices]
    if not kept:
        notes.append("no candidate slice on the discovery half")
        return _empty_tables(notes)

    rng = np.random.default_rng(s_boot)
    for c in kept:
        conf = ~disc[c.scope_rows]
        inside = c.score >= c.threshold
        e = err[c.scope_rows]
        n_a, n_b = int((conf & inside).sum()), int((conf & ~inside).sum())
        a, b = int(e[conf & inside].sum()), int(e[conf & ~inside].sum())
        st: dict[str, Any] = {"n_confirm": n_a, "n_rest": n_b, "errors": a, "rest_errors": b}
        st["error_rate"] = a / n_a if n_a else float("nan")
        st["rest_error_rate"] = b / n_b if n_b else float("nan")
        st["difference"] = st["error_rate"] - st["rest_error_rate"]
        if n_a and n_b:
            st["ci_low"], st["ci_high"] = difference_ci(a, n_a, b, n_b, n_boot=n_boot, alpha=alpha, rng=rng)
        else:
            st["ci_low"] = st["ci_high"] = float("nan")
        st["small"] = n_a < min_group_size or n_b < min_group_size
        st["p_value"] = float("nan") if st["small"] else fisher_greater(a, n_a, b, n_b)
        if st["small"]:
            st["note"] = (f"not confirmable: {n_a} slice / {n_b} rest rows in the confirmation half "
                          f"(min_group_size={min_group_size})")
        else:
            st["note"] = ""
        c.stats = st
    from audit.stats import bh

    p_adj = bh(np.array([c.stats["p_value"] for c in kept], dtype=np.float64))
    for c, q in zip(kept, p_adj):
        c.stats["p_adj"] = float(q)
        c.stats["confirmed"] = bool(np.isfinite(q) and q <= fdr)
        c.stats["status"] = ("confirmed" if c.stats["confirmed"] else
                             "too small" if c.stats["small"] else "not confirmed")

    def order(c: Candidate) -> tuple:
        s = c.stats
        return (not s["confirmed"], s["small"], s["p_adj"] if np.isfinite(s["p_adj"]) else 2.0,
                c.discover_p)

    kept.sort(key=order)
    from audit.slices.describe import describe

    return describe(kept, rid=rid[idx], half=np.where(disc, "discover", "confirm"),
                    desc_emb=(desc if desc is not None else emb)[idx],
                    groups=None if group_df is None else group_df.iloc[idx].reset_index(drop=True),
                    text_embed=text_embed, vocabulary=vocabulary, n_words=n_words, n_typical=n_typical,
                    notes=notes)


def _features(x: np.ndarray, disc: np.ndarray, *, pca_dim: int, seed: int) -> np.ndarray:
    """L2-normalise, PCA (fitted on the discovery half), scale to unit mean variance: (n, d) float64."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norm > 0, norm, 1.0)
    d = int(min(pca_dim, x.shape[1], int(disc.sum()) - 1))
    pca = PCA(n_components=d, svd_solver="randomized" if d < 0.8 * min(x.shape) else "full", random_state=seed)
    pca.fit(x[disc])
    z = pca.transform(x).astype(np.float64)
    scale = math.sqrt(float(np.mean(pca.explained_variance_)) or 1.0)
    return z / scale


def _group_frame(groups: pd.DataFrame | Sequence[str] | None, pred: pd.DataFrame, n: int) -> pd.DataFrame | None:
    if groups is None:
        return None
    if isinstance(groups, pd.DataFrame):
        if len(groups) != n:
            raise ValueError(f"discover_slices: groups has {len(groups)} rows, predictions {n}")
        return groups.reset_index(drop=True)
    cols = [str(g) for g in groups]
    missing = [c for c in cols if c not in pred.columns]
    if missing:
        raise ValueError(f"discover_slices: group columns {missing} are not in predictions ({list(pred.columns)})")
    return pred[cols].reset_index(drop=True) if cols else None


def _empty_tables(notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    from audit.slices.describe import typed_tables

    return typed_tables([], [], notes)
