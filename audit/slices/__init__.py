"""Error slices nobody labelled: discovery in embedding space, confirmation on held-out rows, names.

Pure functions over arrays and DataFrames (no model loading, no Streamlit). The entry point is
:func:`discover_slices`; :func:`slices_for_run` applies it to a finished run's stored tables.
The method and the columns are documented in docs/RUN_FORMAT.md ("Error slices").

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> emb = rng.normal(size=(400, 8))
    >>> pred = pd.DataFrame({"label": rng.choice(["a", "b"], 400), "correct": rng.random(400) > 0.1})
    >>> slices, members = discover_slices(emb, pred)
    >>> list(members.columns)
    ['row_id', 'slice_id', 'score', 'half', 'rank']
"""

from __future__ import annotations

from audit.slices.core import MEMBER_COLUMNS, SLICE_COLUMNS, discover_slices, split_halves
from audit.slices.describe import OVERLAP_COLUMNS, group_overlap, rank_texts, slice_group_overlap
from audit.slices.run import slices_for_run
from audit.slices.vocabulary import DEFAULT_VOCABULARY, Vocabulary, load_vocabulary

__all__ = [
    "DEFAULT_VOCABULARY",
    "MEMBER_COLUMNS",
    "OVERLAP_COLUMNS",
    "SLICE_COLUMNS",
    "Vocabulary",
    "discover_slices",
    "group_overlap",
    "load_vocabulary",
    "rank_texts",
    "slice_group_overlap",
    "slices_for_run",
    "split_halves",
]
