"""The roles of heads in words: TextSpan's greedy text selection (Gandelsman et al., ICLR 2024).

For one component, its direct contributions over the audit set ``(N, D)`` (in CLIP's joint
image-text space) are centred; among the text embeddings of a vocabulary, the text whose
direction explains the most variance of the contributions is chosen, that direction is projected
out of the contributions and of every remaining text, and the step repeats. Each chosen text
carries the share of the component's variance it explained. The vocabulary is
:func:`audit.slices.vocabulary.load_vocabulary` (the shipped visual concepts, plus user YAML files),
the same one that names error slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from audit.errors import UsageError

__all__ = ["ROLE_COLUMNS", "component_roles", "roles_text", "textspan"]

ROLE_COLUMNS = ["component", "rank", "text", "variance_share"]


def textspan(contributions: np.ndarray, text_emb: np.ndarray, *, n_texts: int = 3) -> list[tuple[int, float]]:
    """Greedy TextSpan: ``[(text index, share of the component's variance explained), ...]``.

    Args:
        contributions: ``(N, D)`` direct contributions of one component.
        text_emb: ``(M, D)`` text embeddings of the vocabulary.
        n_texts: how many texts to pick (at most ``M`` and ``D``).
    """
    X = np.asarray(contributions, dtype=np.float64)
    T = np.asarray(text_emb, dtype=np.float64).copy()
    if X.ndim != 2 or T.ndim != 2 or X.shape[1] != T.shape[1]:
        raise UsageError(f"textspan: contributions {X.shape} and text embeddings {T.shape} must be (N, D) and (M, D)")
    X = X - X.mean(axis=0, keepdims=True)
    total = float((X ** 2).sum())
    if total <= 0:
        return []
    out: list[tuple[int, float]] = []
    free = np.ones(len(T), dtype=bool)
    for _ in range(min(n_texts, len(T), X.shape[1])):
        norms = np.linalg.norm(T, axis=1)
        ok = free & (norms > 1e-9)
        if not ok.any():
            break
        u = T / np.where(norms > 1e-9, norms, 1.0)[:, None]
        explained = ((X @ u.T) ** 2).sum(axis=0)  # (M,)
        explained[~ok] = -1.0
        j = int(np.argmax(explained))
        out.append((j, float(explained[j] / total)))
        free[j] = False
        d = u[j]
        X = X - np.outer(X @ d, d)
        T = T - np.outer(T @ d, d)
    return out


def component_roles(contributions: np.ndarray, names: Sequence[str], which: Sequence[int], text_emb: np.ndarray,
                    texts: Sequence[str], *, n_texts: int = 3) -> pd.DataFrame:
    """Roles of the components ``which`` (indices into ``contributions (N, K, D)``): :data:`ROLE_COLUMNS`."""
    rows = []
    for c in which:
        for r, (j, share) in enumerate(textspan(contributions[:, c], text_emb, n_texts=n_texts), start=1):
            rows.append((names[c], r, texts[j], share))
    return pd.DataFrame(rows, columns=ROLE_COLUMNS)


def roles_text(roles: pd.DataFrame, component: str) -> str:
    """``'textures, stripes, dots'``: a component's chosen texts in order ("" when it has none)."""
    r = roles[roles["component"] == component].sort_values("rank")
    return ", ".join(r["text"])
