"""Where a head looks: its pooled token's attention over the patch grid, averaged per group.

The decomposition keeps the pooled token only (that is all the direct effect needs), so a head's
spatial map is taken from one more captured forward over a sample of each compared group's images
(:func:`audit.capture.capture`): the post-softmax attention row of the pooled token (the mean of
the patch rows for a mean-pooled model) to every patch token, for that head, averaged over the
images. Prefix tokens (CLS, registers) are left out of the grid and their share is reported as
``prefix_share`` so a map that looks empty because the head reads a register says so.

Table ``component_maps`` (long format): ``finding, component, layer, head, group, n_images, row,
col, value, prefix_share``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["MAP_COLUMNS", "head_maps"]

MAP_COLUMNS = ["finding", "component", "layer", "head", "group", "n_images", "row", "col", "value", "prefix_share"]


@torch.no_grad()
def head_maps(adapter, view, images: Mapping[str, Iterable[torch.Tensor]], heads: Sequence[tuple[str, int, int]], *,
              finding: str) -> pd.DataFrame:
    """Mean pooled-token attention of each head in ``heads`` over each group's images.

    Args:
        adapter: the loaded adapter (its vision tower is captured).
        view: its :class:`~audit.models.residual.ResidualView` (the forward that is run).
        images: group name -> batches of preprocessed images.
        heads: ``(component name, layer, head)`` for the heads to map.
        finding: written to the ``finding`` column.

    Returns:
        DataFrame with :data:`MAP_COLUMNS`, one row per (head, group, patch).
    """
    from audit.capture import capture

    lay = adapter.token_layout()
    gh, gw = lay.grid
    rows = []
    for group, batches in images.items():
        total = {name: torch.zeros(lay.n_tokens) for name, _, _ in heads}
        n = 0
        for x in batches:
            with capture(adapter) as cap:
                view.forward(x)
            att = cap.attentions
            for name, layer, head in heads:
                a = lay.pooled_row(att[layer][:, head].float())  # (B, N)
                total[name] += a.sum(dim=0).cpu()
            n += int(x.shape[0])
        if n == 0:
            continue
        for name, layer, head in heads:
            mean = total[name] / n
            patches = lay.patch_tokens(mean[None], dim=1)[0]
            grid = patches.reshape(gh, gw).numpy()
            prefix = float(1.0 - patches.sum()) if lay.n_prefix else 0.0
            r, c = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
            rows.append(pd.DataFrame({"finding": finding, "component": name, "layer": layer, "head": head,
                                      "group": group, "n_images": n, "row": r.ravel(), "col": c.ravel(),
                                      "value": grid.ravel(), "prefix_share": prefix}))
    if not rows:
        return pd.DataFrame(columns=MAP_COLUMNS)
    return pd.concat(rows, ignore_index=True)[MAP_COLUMNS]
