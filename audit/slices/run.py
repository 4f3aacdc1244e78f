"""Slices of a finished run: read its predictions and embeddings, call :func:`discover_slices`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from audit.slices.core import discover_slices

if TYPE_CHECKING:  # pragma: no cover
    from audit.runs import Run

__all__ = ["slices_for_run"]


def slices_for_run(
    run: Run,
    *,
    text_embed: Callable[[list[str]], Any] | None = None,
    describe_embeddings: np.ndarray | None = None,
    describe_row_ids: np.ndarray | None = None,
    use_groups: bool = True,
    **options: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`discover_slices` on a run's ``predictions`` table and ``embeddings`` arrays.

    Args:
        run: an open run (or one being written) with the ``predictions`` table and the
            ``embeddings`` arrays (``image``, ``row_id``).
        text_embed: ``texts -> (T, D')``, the text tower matching ``describe_embeddings`` (for a
            CLIP run: its own text tower, and the run's image embeddings are used).
        describe_embeddings: (M, D') image embeddings in the text space, matched by
            ``describe_row_ids``; default: the run's own image embeddings.
        describe_row_ids: (M,) row ids of ``describe_embeddings``.
        use_groups: describe slices by their overlap with the run's group columns (never used to
            find them).
        **options: passed to :func:`discover_slices` (``min_group_size``, ``fdr``, ``seed``, ...).

    Returns:
        ``(slices, members)`` as :func:`discover_slices`.
    """
    pred = run.table("predictions")
    arr = run.arrays("embeddings")
    emb, rid = arr["image"], np.asarray(arr["row_id"]).astype(np.int64)
    desc = None
    if describe_embeddings is not None:
        d = np.asarray(describe_embeddings)
        if describe_row_ids is None:
            if d.shape[0] != rid.size:
                raise ValueError(f"describe_embeddings has {d.shape[0]} rows for {rid.size} embeddings; "
                                 "pass describe_row_ids")
            desc = d
        else:
            pos = pd.Series(np.arange(d.shape[0]), index=np.asarray(describe_row_ids).astype(np.int64))
            missing = ~np.isin(rid, pos.index.to_numpy())
            if missing.any():
                raise ValueError(f"describe_embeddings lacks {int(missing.sum())} of the run's rows")
            desc = d[pos.loc[rid].to_numpy()]
    groups = [g for g in run.group_columns if g in pred.columns] if use_groups else None
    return discover_slices(emb, pred, row_ids=rid, groups=groups or None, text_embed=text_embed,
                           describe_embeddings=desc, **options)
