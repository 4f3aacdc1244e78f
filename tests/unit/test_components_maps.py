"""A head's spatial map is its pooled token's captured attention over the patch grid, averaged per group."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.capture import capture
from audit.components.maps import MAP_COLUMNS, head_maps
from tests.helpers_models import tiny_timm_vit, tiny_vit_avgpool, tiny_vit_reg


@pytest.mark.parametrize("build", [tiny_timm_vit, tiny_vit_reg, tiny_vit_avgpool])
def test_maps_equal_the_mean_captured_attention_row_of_the_pooled_token(build) -> None:
    adapter = build()
    torch.manual_seed(0)
    xa, xb = torch.randn(5, 3, 32, 32), torch.randn(3, 3, 32, 32)
    view = adapter.residual_view()
    maps = head_maps(adapter, view, {"a": [xa[:2], xa[2:]], "b": [xb]}, [("L1.H0", 1, 0), ("L0.H1", 0, 1)], finding="f")
    assert list(maps.columns) == MAP_COLUMNS
    lay = adapter.token_layout()
    for group, x in (("a", xa), ("b", xb)):
        with torch.no_grad(), capture(adapter) as cap:
            adapter.logits(x)
        for name, layer, head in (("L1.H0", 1, 0), ("L0.H1", 0, 1)):
            want = lay.pooled_row(cap.attentions[layer][:, head]).mean(0)  # (N,)
            m = maps[(maps["group"] == group) & (maps["component"] == name)].sort_values(["row", "col"])
            assert len(m) == lay.n_patches and (m["n_images"] == len(x)).all()
            np.testing.assert_allclose(m["value"].to_numpy(), lay.patch_tokens(want[None], dim=1)[0].numpy(), atol=1e-6)
            assert m["prefix_share"].iloc[0] == pytest.approx(float(want[: lay.n_prefix].sum()), abs=1e-6)


def test_no_images_give_an_empty_table() -> None:
    adapter = tiny_timm_vit()
    maps = head_maps(adapter, adapter.residual_view(), {"a": []}, [("L1.H0", 1, 0)], finding="f")
    assert maps.empty and list(maps.columns) == MAP_COLUMNS
