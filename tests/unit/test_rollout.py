"""Attention rollout and raw attention against values computed by hand.

Example used throughout: 3 tokens (token 0 = CLS, pooled; tokens 1, 2 = patches on a
(1, 2) grid), 2 layers, 2 heads. Only row 0 of the last layer's matrix matters for the
map, but the full products are written where they are needed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.errors import ExplainError
from audit.explain.attention import raw_attention, rollout
from audit.models.base import TokenLayout

LAY = TokenLayout(prefix_kinds=("cls",), pooled=0, grid=(1, 2))

# layer 1
L1H1 = [[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]]
L1H2 = [[0.3, 0.3, 0.4], [0.4, 0.2, 0.4], [0.3, 0.5, 0.2]]
# layer 2
L2H1 = [[0.6, 0.2, 0.2], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6]]
L2H2 = [[0.2, 0.6, 0.2], [0.5, 0.4, 0.1], [0.4, 0.4, 0.2]]


def _atts(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    a1 = torch.tensor([[L1H1, L1H2]], dtype=dtype)  # (1, 2, 3, 3)
    a2 = torch.tensor([[L2H1, L2H2]], dtype=dtype)
    return [a1, a2]


def test_rollout_mean_by_hand() -> None:
    # F1 = mean(heads) = [[.4, .275, .325], [.3, .4, .3], [.2, .3, .5]]; rows sum to 1, so
    # Â1 = .5 F1 + .5 I = [[.7, .1375, .1625], [.15, .7, .15], [.1, .15, .75]] (no renormalisation needed)
    # F2 row 0 = [.4, .4, .2] -> Â2 row 0 = [.7, .2, .1]
    # R row 0 = .7*[.7, .1375, .1625] + .2*[.15, .7, .15] + .1*[.1, .15, .75]
    #         = [.49+.03+.01, .09625+.14+.015, .11375+.03+.075] = [.53, .25125, .21875]
    out = rollout(_atts(), LAY, head_fusion="mean")
    assert out.shape == (1, 1, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, 0], torch.tensor([0.25125, 0.21875]), atol=1e-6, rtol=0)


def test_rollout_max_by_hand() -> None:
    # F1 = max(heads) = [[.5, .3, .4], [.4, .6, .4], [.3, .5, .8]]
    # Â1 rows before renorm: [.75, .15, .2] (sum 1.1), [.2, .8, .2] (1.2), [.15, .25, .9] (1.3)
    #   -> [15/22, 3/22, 4/22], [1/6, 4/6, 1/6], [3/26, 5/26, 18/26]
    # F2 row 0 = max([.6,.2,.2], [.2,.6,.2]) = [.6, .6, .2] -> [.8, .3, .1]/1.2 = [2/3, 1/4, 1/12]
    # R01 = 2/3*3/22 + 1/4*4/6 + 1/12*5/26 ; R02 = 2/3*4/22 + 1/4*1/6 + 1/12*18/26
    r01 = 2 / 3 * 3 / 22 + 1 / 4 * 4 / 6 + 1 / 12 * 5 / 26  # = 0.2736014
    r02 = 2 / 3 * 4 / 22 + 1 / 4 * 1 / 6 + 1 / 12 * 18 / 26  # = 0.2205711
    out = rollout(_atts(), LAY, head_fusion="max")
    torch.testing.assert_close(out[0, 0], torch.tensor([r01, r02]), atol=1e-6, rtol=0)
    assert out[0, 0, 0].item() == pytest.approx(0.2736014, abs=1e-6)


def test_rollout_min_by_hand() -> None:
    # F1 = min(heads) = [[.3, .25, .25], [.2, .2, .2], [.1, .1, .2]]
    # Â1 rows: [.65, .125, .125]/.9 = [13/18, 5/36, 5/36]; [.1, .6, .1]/.8 = [1/8, 6/8, 1/8];
    #          [.05, .05, .6]/.7 = [1/14, 1/14, 12/14]
    # F2 row 0 = min([.6,.2,.2], [.2,.6,.2]) = [.2, .2, .2] -> [.6, .1, .1]/.8 = [3/4, 1/8, 1/8]
    r01 = 3 / 4 * 5 / 36 + 1 / 8 * 6 / 8 + 1 / 8 * 1 / 14  # = 0.2068452
    r02 = 3 / 4 * 5 / 36 + 1 / 8 * 1 / 8 + 1 / 8 * 12 / 14  # = 0.2269345
    out = rollout(_atts(), LAY, head_fusion="min")
    torch.testing.assert_close(out[0, 0], torch.tensor([r01, r02]), atol=1e-6, rtol=0)


def test_rollout_discard_by_hand() -> None:
    # discard_ratio .25 -> floor(.25 * 9) = 2 lowest entries of F per layer (never (0, 0)).
    # F1 = [[.4, .275, .325], [.3, .4, .3], [.2, .3, .5]]: lowest .2 at (2,0), .275 at (0,1) -> 0
    # Â1 row 0 = [.7, 0, .1625]/.8625 = [56/69, 0, 13/69]; row 1 = [.15, .7, .15] (sum 1)
    # F2 = [[.4, .4, .2], [.4, .35, .25], [.3, .3, .4]]: lowest .2 at (0,2), .25 at (1,2) -> 0
    # Â2 row 0 = [.7, .2, 0]/.9 = [7/9, 2/9, 0]
    # R01 = 7/9*0 + 2/9*.7 ; R02 = 7/9*13/69 + 2/9*.15
    r01 = 2 / 9 * 0.7  # = 0.1555556
    r02 = 7 / 9 * 13 / 69 + 2 / 9 * 0.15  # = 0.1798712
    out = rollout(_atts(), LAY, head_fusion="mean", discard_ratio=0.25)
    torch.testing.assert_close(out[0, 0], torch.tensor([r01, r02]), atol=1e-6, rtol=0)


def test_discard_never_removes_pooled_to_pooled_and_is_per_image() -> None:
    # image 0: (0,0) = .05 is the smallest entry; k = floor(.12 * 9) = 1 must hit (1,0) = .1 instead.
    #   Â row 0 = .5*[.05, .5, .45] + .5*[1, 0, 0] = [.525, .25, .225] (sum 1) -> map [.25, .225]
    #   (had (0,0) been zeroed: [.5, .25, .225]/.975 -> [.2564, .2308])
    a0 = [[0.05, 0.5, 0.45], [0.1, 0.75, 0.15], [0.3, 0.3, 0.4]]
    # image 1: the lowest entry (excluding (0,0)) is .1 at (0,1) -> 0
    #   Â row 0 = [.8, 0, .15]/.95 -> map [0, .15/.95]
    #   (without discard, or with image 0's index (1,0), row 0 would be [.8, .05, .15] -> [.05, .15])
    a1 = [[0.6, 0.1, 0.3], [0.2, 0.5, 0.3], [0.25, 0.25, 0.5]]
    att = torch.tensor([[a0], [a1]])  # (2, 1, 3, 3)
    out = rollout([att], LAY, discard_ratio=0.12)
    torch.testing.assert_close(out[:, 0], torch.tensor([[0.25, 0.225], [0.0, 0.15 / 0.95]]), atol=1e-6, rtol=0)


def test_start_layer_and_mean_pooled_layout() -> None:
    # start_layer=1 uses layer 2 only: Â2 row 0 = [.7, .2, .1] -> map [.2, .1]
    out = rollout(_atts(), LAY, start_layer=1)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.2, 0.1]), atol=1e-6, rtol=0)
    # mean-pooled model (no prefix): F = [[.6, .4], [.3, .7]] -> Â = [[.8, .2], [.15, .85]]
    # map = mean of the patch rows = [(.8+.15)/2, (.2+.85)/2] = [.475, .525]
    lay = TokenLayout(prefix_kinds=(), pooled=None, grid=(1, 2))
    out = rollout([torch.tensor([[[[0.6, 0.4], [0.3, 0.7]]]])], lay)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.475, 0.525]), atol=1e-6, rtol=0)


def test_patch_tokens_follow_the_layout_with_registers() -> None:
    # tokens: cls, reg, patch, patch. A row 0 = [.1, .2, .3, .4] -> Â row 0 = [.55, .1, .15, .2]
    lay = TokenLayout(prefix_kinds=("cls", "reg"), pooled=0, grid=(1, 2))
    a = torch.eye(4)
    a[0] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    out = rollout([a.view(1, 1, 4, 4)], lay)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.15, 0.2]), atol=1e-6, rtol=0)


def test_raw_attention_by_hand() -> None:
    atts = _atts()
    # last layer, mean of heads: row 0 = [.4, .4, .2] -> patches [.4, .2]
    torch.testing.assert_close(raw_attention(atts, LAY)[0, 0], torch.tensor([0.4, 0.2]))
    torch.testing.assert_close(raw_attention(atts, LAY, head=1)[0, 0], torch.tensor([0.6, 0.2]))
    torch.testing.assert_close(raw_attention(atts, LAY, layer=0)[0, 0], torch.tensor([0.275, 0.325]))


def test_float16_input_accumulates_in_float32() -> None:
    out = rollout(_atts(torch.float16), LAY)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0, 0], torch.tensor([0.25125, 0.21875]), atol=2e-3, rtol=0)


def _reference(atts: list[np.ndarray], fusion: str, ratio: float, start: int) -> np.ndarray:
    """Plain-loop float64 reference (independent of the torch implementation), pooled = 0."""
    b, _, n, _ = atts[0].shape
    out = np.zeros((b, n - 1))
    for i in range(b):
        r = np.eye(n)
        for a in atts[start:]:
            f = {"mean": a[i].mean(0), "max": a[i].max(0), "min": a[i].min(0)}[fusion].copy()
            k = int(ratio * n * n)
            if k:
                cands = sorted((f[p, q], p, q) for p in range(n) for q in range(n) if (p, q) != (0, 0))
                for _, p, q in cands[:k]:
                    f[p, q] = 0.0
            ah = 0.5 * f + 0.5 * np.eye(n)
            for row in range(n):
                ah[row] /= ah[row].sum()
            r = ah @ r
        out[i] = r[0, 1:]
    return out


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.9])
def test_random_attention_matches_loop_reference(fusion: str, ratio: float) -> None:
    g = torch.Generator().manual_seed(1)
    atts = [torch.randn(2, 3, 5, 5, generator=g).softmax(-1) for _ in range(3)]  # grid (2, 2) + cls
    lay = TokenLayout(prefix_kinds=("cls",), pooled=0, grid=(2, 2))
    ref = _reference([a.double().numpy() for a in atts], fusion, ratio, start=1)
    out = rollout(atts, lay, head_fusion=fusion, discard_ratio=ratio, start_layer=1)
    np.testing.assert_allclose(out.reshape(2, 4).numpy(), ref, atol=1e-5)


def test_bad_arguments_are_explained() -> None:
    with pytest.raises(ExplainError, match="discard_ratio"):
        rollout(_atts(), LAY, discard_ratio=1.0)
    with pytest.raises(ExplainError, match="start_layer"):
        rollout(_atts(), LAY, start_layer=2)
    with pytest.raises(ExplainError, match="4 tokens but the token layout has 3"):
        rollout([torch.ones(1, 1, 4, 4) / 4], LAY)
    with pytest.raises(ExplainError, match="head_fusion"):
        rollout(_atts(), LAY, head_fusion="median")  # type: ignore[arg-type]
    with pytest.raises(ExplainError, match="empty"):
        rollout([], LAY)
