"""Head/MLP decomposition of the pooled output: reconstruction, hooks removed, unsupported models refused."""

from __future__ import annotations

import pytest
import torch

from audit.components.decompose import decompose, decompose_batches, resolve_layers
from audit.errors import UsageError
from tests.helpers_models import (
    tiny_deit_distilled,
    tiny_hf_clip,
    tiny_hf_vit,
    tiny_open_clip,
    tiny_timm_vit,
    tiny_vit_avgpool,
    tiny_vit_reg,
    tiny_zeroshot,
)

FACTORIES = {
    "timm_vit": lambda tmp: tiny_timm_vit(),
    "vit_reg": lambda tmp: tiny_vit_reg(),
    "vit_avgpool": lambda tmp: tiny_vit_avgpool(),
    "open_clip": lambda tmp: tiny_open_clip(),
    "zeroshot": lambda tmp: tiny_zeroshot(),
    "hf_vit": tiny_hf_vit,
    "hf_clip": tiny_hf_clip,
}


def _reference(adapter, kind: str, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (adapter.logits(x) if kind == "logits" else adapter.encode_image(x)).float()


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("layers", [None, 1, 2])
def test_contributions_plus_rest_reconstruct_the_plain_output(name: str, layers, tmp_path) -> None:
    adapter = FACTORIES[name](tmp_path)
    x = torch.randn(5, 3, *adapter.preprocess.size)
    d = decompose(adapter, x, layers=layers)
    n_blocks = len(adapter.vision_blocks())
    n_heads = d.heads.count(0)
    assert n_heads == resolve_layers(n_blocks, layers)
    assert d.contributions.shape[:2] == (5, len(d.names))
    ref = _reference(adapter, d.kind, x)  # a separate plain forward, without hooks
    rel = ((d.reconstruction - ref).norm(dim=-1) / ref.norm(dim=-1)).max()
    assert rel < 1e-4, f"{name}: relative reconstruction error {rel:.2e}"
    # the rest alone is not the output: the components carry a real part of it
    assert ((d.rest - ref).norm(dim=-1) / ref.norm(dim=-1)).min() > 1e-3


def test_zeroing_a_heads_projection_zeroes_its_contribution_only() -> None:
    adapter = tiny_timm_vit()
    blk = adapter.model.blocks[-1]
    d_head = blk.attn.proj.weight.shape[1] // blk.attn.num_heads
    with torch.no_grad():
        blk.attn.proj.weight[:, :d_head] = 0.0
    x = torch.randn(3, 3, *adapter.preprocess.size)
    d = decompose(adapter, x, layers=1)
    i0, i1 = d.names.index("L1.H0"), d.names.index("L1.H1")
    assert d.contributions[:, i0].abs().max() == 0
    assert d.contributions[:, i1].abs().max() > 0


def test_hooks_and_patched_forwards_are_removed_also_after_an_error() -> None:
    adapter = tiny_open_clip()
    mhas = [b.attn for b in adapter.vision_blocks()]
    x = torch.randn(2, 3, *adapter.preprocess.size)
    decompose(adapter, x)
    assert all("forward" not in m.__dict__ for m in mhas)
    with pytest.raises(RuntimeError):
        decompose(adapter, torch.randn(2, 5, *adapter.preprocess.size))  # wrong channel count
    assert all("forward" not in m.__dict__ for m in mhas)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in adapter.model.modules())


def test_batches_concatenate_and_layers_are_checked() -> None:
    adapter = tiny_timm_vit()
    xs = [torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)]
    d = decompose_batches(adapter, xs)
    assert d.contributions.shape[0] == 5
    with pytest.raises(UsageError, match="components.layers"):
        decompose(adapter, xs[0], layers=7)


def test_unsupported_models_get_a_clear_error() -> None:
    with pytest.raises(UsageError, match="distilled"):
        tiny_deit_distilled().residual_view()


def test_bench_explain_has_the_decompose_case(capsys) -> None:
    from audit.bench import run

    argv = ["--model", "vit_tiny_patch16_224", "--size", "32", "--batch", "2", "--repeats", "1", "--threads", "1",
            "--methods", "decompose"]
    assert run("explain", argv) == 0
    out = capsys.readouterr().out
    assert "head/MLP decomposition" in out and "plain forward" in out
    assert out.count("pass") + out.count("miss") == 1
