"""Naming slices: concept words by cosine difference, typical images, overlap with labelled groups.

Example:
    >>> import numpy as np
    >>> img = np.eye(3)[[0, 0, 1, 1, 2, 2]].astype(float)  # (6, 3) image embeddings
    >>> words = {"zero": [1.0, 0, 0], "one": [0, 1.0, 0], "two": [0, 0, 1.0]}
    >>> embed = lambda texts: np.array([words[t] for t in texts])
    >>> rank_texts(img, np.array([1, 1, 0, 0, 0, 0], bool), ["zero", "one", "two"], embed)["text"].tolist()[0]
    'zero'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from audit.slices.confirm import Candidate

__all__ = ["OVERLAP_COLUMNS", "group_overlap", "rank_texts", "slice_group_overlap"]

#: columns of :func:`slice_group_overlap`
OVERLAP_COLUMNS = ["slice_id", "attribute", "group", "n", "share_in_slice", "share_overall", "lift"]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def _text_matrix(texts: Sequence[str], text_embed: Callable[[list[str]], Any], dim: int) -> np.ndarray:
    t = np.asarray(text_embed(list(texts)), dtype=np.float64)
    if t.ndim != 2 or t.shape[0] != len(texts):
        raise ValueError(f"text_embed returned shape {t.shape} for {len(texts)} texts; expected ({len(texts)}, D)")
    if t.shape[1] != dim:
        raise ValueError(f"text_embed gives {t.shape[1]}-d embeddings but the image embeddings used to describe "
                         f"slices are {dim}-d; pass describe_embeddings from the same (e.g. CLIP) model")
    return _unit(t)


def _cos_diff(img_unit: np.ndarray, mask: np.ndarray, ref: np.ndarray, text_unit: np.ndarray) -> np.ndarray:
    """(T,) cos(text, mean slice image) - cos(text, mean rest image); ``ref`` marks the rest."""
    mu_s = _unit(img_unit[mask].mean(axis=0))
    mu_r = _unit(img_unit[ref].mean(axis=0)) if ref.any() else np.zeros_like(mu_s)
    return text_unit @ mu_s - text_unit @ mu_r


def rank_texts(image_embeddings: np.ndarray, members: np.ndarray, texts: Sequence[str],
               text_embed: Callable[[list[str]], Any], *, rest: np.ndarray | None = None) -> pd.DataFrame:
    """Rank texts by how much closer they are to a slice's mean image than to the rest's.

    score(t) = cos(t, mean of the slice's unit image embeddings) - cos(t, mean of the rest's).

    Args:
        image_embeddings: (N, D) image embeddings in the text embedder's space.
        members: (N,) bool, the slice.
        texts: the texts to rank.
        text_embed: ``texts -> (T, D)``.
        rest: (N,) bool, what the slice is compared with (default: every non-member).

    Returns:
        DataFrame ``text, score`` sorted by score, highest first.
    """
    img = _unit(image_embeddings)
    m = np.asarray(members, dtype=bool)
    ref = ~m if rest is None else np.asarray(rest, dtype=bool)
    if not m.any():
        raise ValueError("rank_texts: the slice has no members")
    s = _cos_diff(img, m, ref, _text_matrix(texts, text_embed, img.shape[1]))
    out = pd.DataFrame({"text": list(texts), "score": s})
    return out.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def group_overlap(members: np.ndarray, groups: pd.DataFrame, *, scope: np.ndarray | None = None) -> pd.DataFrame:
    """How a slice overlaps each labelled group: the slice's share in the group and the group's share.

    Args:
        members: (N,) bool, the slice.
        groups: (N, A) group columns.
        scope: (N,) bool, the rows the slice was found among (default all): ``share_overall`` is
            the group's share of these.

    Returns:
        DataFrame ``attribute, group, n, share_in_slice, share_overall, lift`` (n: members in the
        group; lift = share_in_slice / share_overall), sorted by attribute then share_in_slice.
    """
    m = np.asarray(members, dtype=bool)
    sc = np.ones(m.size, dtype=bool) if scope is None else np.asarray(scope, dtype=bool)
    rows = []
    for attr in groups.columns:
        g = groups[attr].astype(object).where(groups[attr].notna(), "(missing)").astype(str).to_numpy()
        vals, inv = np.unique(g, return_inverse=True)
        in_slice = np.bincount(inv[m], minlength=len(vals))
        in_scope = np.bincount(inv[sc], minlength=len(vals))
        for j, v in enumerate(vals):
            share = in_slice[j] / max(1, m.sum())
            overall = in_scope[j] / max(1, sc.sum())
            rows.append({"attribute": str(attr), "group": str(v), "n": int(in_slice[j]),
                         "share_in_slice": float(share), "share_overall": float(overall),
                         "lift": float(share / overall) if overall > 0 else float("nan")})
    df = pd.DataFrame(rows, columns=OVERLAP_COLUMNS[1:])
    return df.sort_values(["attribute", "share_in_slice"], ascending=[True, False], kind="stable").reset_index(drop=True)


def _overlap_text(ov: pd.DataFrame) -> str:
    """'82% background=dotted (33% overall); ...': per attribute its most over-represented group."""
    parts = []
    for attr, d in ov.groupby("attribute", sort=False):
        r = d.sort_values(["lift", "share_in_slice"], ascending=False, kind="stable").iloc[0]
        parts.append(f"{r['share_in_slice']:.0%} {attr}={r['group']} ({r['share_overall']:.0%} overall)")
    return "; ".join(parts)


def slice_group_overlap(slices: pd.DataFrame, members: pd.DataFrame, predictions: pd.DataFrame, *,
                        group_cols: Sequence[str]) -> pd.DataFrame:
    """Long table of every slice's overlap with every labelled group (for reports and the dashboard).

    Args:
        slices: the ``slices`` table (for each slice's scope).
        members: the ``slice_members`` table.
        predictions: the run's predictions (``row_id``, ``label``, the group columns).
        group_cols: the group columns.

    Returns:
        DataFrame with columns :data:`OVERLAP_COLUMNS`; ``share_overall`` is the group's share in
        the slice's scope (the class for ``class:<name>`` scopes).
    """
    pred = predictions.reset_index(drop=True)
    rid = pred["row_id"].to_numpy() if "row_id" in pred.columns else np.arange(len(pred))
    labelled = pred["correct"].notna().to_numpy() if "correct" in pred.columns else np.ones(len(pred), bool)
    labels = pred["label"].astype(str).to_numpy() if "label" in pred.columns else np.full(len(pred), "")
    out = []
    for _, s in slices.iterrows():
        m = np.isin(rid, members.loc[members["slice_id"] == s["slice_id"], "row_id"].to_numpy())
        scope = labelled.copy()
        if str(s["scope"]).startswith("class:"):
            scope &= labels == str(s["scope"])[len("class:"):]
        ov = group_overlap(m, pred[list(group_cols)], scope=scope)
        ov.insert(0, "slice_id", int(s["slice_id"]))
        out.append(ov)
    if not out:
        return pd.DataFrame(columns=OVERLAP_COLUMNS)
    return pd.concat(out, ignore_index=True)[OVERLAP_COLUMNS]


def typed_tables(rows: list[dict], member_frames: list[pd.DataFrame], notes: list[str]) -> tuple[pd.DataFrame,
                                                                                                  pd.DataFrame]:
    """The two output tables with fixed columns and dtypes (also when empty)."""
    from audit.slices.confirm import MEMBER_COLUMNS, SLICE_COLUMNS

    s = pd.DataFrame(rows, columns=SLICE_COLUMNS)
    ints = ["slice_id", "n_discover", "n_confirm", "n_rest", "errors", "rest_errors", "n_members"]
    floats = ["discover_error_rate", "discover_rest_error_rate", "discover_p", "error_rate", "rest_error_rate",
              "difference", "ci_low", "ci_high", "p_value", "p_adj", "threshold"]
    s = s.astype({**{c: "int64" for c in ints}, **{c: "float64" for c in floats},
                  "confirmed": "bool", "small": "bool"})
    for c in ("scope", "status", "components", "top_words", "overlap", "typical_row_ids", "description", "note"):
        s[c] = s[c].astype(object).where(s[c].notna(), "").astype(str)
    m = (pd.concat(member_frames, ignore_index=True) if member_frames
         else pd.DataFrame({c: [] for c in MEMBER_COLUMNS}))
    m = m[MEMBER_COLUMNS].astype({"row_id": "int64", "slice_id": "int64", "score": "float64", "rank": "int64"})
    m["half"] = m["half"].astype(str)
    s.attrs["notes"] = list(notes)
    return s, m


def _scope_phrase(scope: str) -> str:
    return "all classes" if scope == "overall" else f"class {scope[len('class:'):]}"


def describe(cands: list[Candidate], *, rid: np.ndarray, half: np.ndarray, desc_emb: np.ndarray,
             groups: pd.DataFrame | None, text_embed: Callable[[list[str]], Any] | None, vocabulary: Any,
             n_words: int, n_typical: int, notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build the tables for tested candidates (already ordered)."""
    texts: list[str] = []
    concepts: list[str] = []
    text_unit = None
    img = None
    if text_embed is not None:
        from audit.slices.vocabulary import Vocabulary, load_vocabulary

        if vocabulary is None:
            vocab = load_vocabulary()
        elif isinstance(vocabulary, Vocabulary):
            vocab = vocabulary
        elif isinstance(vocabulary, (str, bytes)) or hasattr(vocabulary, "__fspath__"):
            vocab = load_vocabulary(vocabulary)
        else:
            vocab = load_vocabulary(*vocabulary)
        texts, concepts = vocab.texts(), list(vocab.concepts)
        img = _unit(desc_emb)
        text_unit = _text_matrix(texts, text_embed, img.shape[1])
    rows: list[dict] = []
    frames: list[pd.DataFrame] = []
    n = rid.size
    for sid, c in enumerate(cands, start=1):
        inside = c.score >= c.threshold
        mem_idx = c.scope_rows[inside]
        order = np.argsort(-c.score[inside], kind="stable")
        mem_sorted = mem_idx[order]
        frames.append(pd.DataFrame({"row_id": rid[mem_sorted], "slice_id": sid,
                                    "score": np.exp(c.score[inside][order]),
                                    "half": half[mem_sorted], "rank": np.arange(1, mem_sorted.size + 1)}))
        m_all = np.zeros(n, dtype=bool)
        m_all[mem_idx] = True
        scope_mask = np.zeros(n, dtype=bool)
        scope_mask[c.scope_rows] = True
        top_words = ""
        if text_unit is not None and img is not None and m_all.any():
            s = _cos_diff(img, m_all, scope_mask & ~m_all, text_unit)
            best = np.argsort(-s, kind="stable")[:n_words]
            top_words = "; ".join(f"{concepts[j]} ({s[j]:+.3f})" for j in best)
        overlap = ""
        if groups is not None and groups.shape[1] and m_all.any():
            overlap = _overlap_text(group_overlap(m_all, groups, scope=scope_mask))
        words = [w.rsplit(" (", 1)[0] for w in top_words.split("; ")[:3]] if top_words else []
        desc = _scope_phrase(c.scope)
        if words:
            desc += ": images like " + ", ".join(f"'{w}'" for w in words)
        if overlap:
            desc += ("; " if words else ": ") + overlap
        if not words and not overlap:
            desc += f": unnamed slice (mixture components {' '.join(str(int(k)) for k in c.components)})"
        st = c.stats
        rows.append({
            "slice_id": sid, "scope": c.scope, "status": st["status"], "confirmed": st["confirmed"],
            "small": st["small"], "n_discover": c.n_discover, "discover_error_rate": c.discover_rate,
            "discover_rest_error_rate": c.discover_rest_rate, "discover_p": c.discover_p,
            "n_confirm": st["n_confirm"], "n_rest": st["n_rest"], "errors": st["errors"],
            "rest_errors": st["rest_errors"], "error_rate": st["error_rate"], "rest_error_rate": st["rest_error_rate"],
            "difference": st["difference"], "ci_low": st["ci_low"], "ci_high": st["ci_high"],
            "p_value": st["p_value"], "p_adj": st["p_adj"], "n_members": int(mem_idx.size),
            "components": " ".join(str(int(k)) for k in c.components), "threshold": float(np.exp(c.threshold)), "top_words": top_words, "overlap": overlap,
            "typical_row_ids": " ".join(str(int(r)) for r in rid[mem_sorted[:n_typical]]),
            "description": desc, "note": st["note"],
        })
    return typed_tables(rows, frames, notes)
