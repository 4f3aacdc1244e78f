"""Contract: every registered explanation method runs on every adapter kind.

For each (method, adapter): maps are (B, gh, gw) on the patch grid, finite, not all zero,
identical under the same seed; the model is left with no hooks, unchanged weights and no
parameter gradients. Attention methods on adapters without attention maps (Swin, ConvNeXt) are
refused with a UsageError saying why and which methods apply.
"""

from __future__ import annotations

import pytest
import torch

from audit.capture import assert_no_hooks
from audit.errors import UsageError
from audit.explain import PromptTarget, explain
from audit.registry import METHODS
from tests.helpers_models import all_adapter_factories

FACTORIES = all_adapter_factories()
METHOD_NAMES = [m for m in METHODS.names() if not m.startswith("test_")]
#: cheaper settings for the sampling methods (the defaults are exercised in the unit tests)
FAST = {
    "ig": {"n_steps": 8},
    "gradient_shap": {"n_samples": 4},
    "smoothgrad": {"nt_samples": 3},
    "occlusion": {"perturbations_per_eval": 8},
    "feature_ablation": {"perturbations_per_eval": 8},
}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = FACTORIES[name](tmp_path_factory.mktemp(name))
        return cache[name]

    return get


def test_every_method_is_registered() -> None:
    expected = {
        "attention",
        "rollout",
        "gae",
        "gradcam",
        "layer_gradcam",
        "ig",
        "gradient_shap",
        "saliency",
        "input_x_gradient",
        "smoothgrad",
        "occlusion",
        "feature_ablation",
    }
    assert expected <= set(METHOD_NAMES)


@pytest.mark.parametrize("adapter_name", list(FACTORIES))
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_method_contract(adapters, adapter_name: str, method: str) -> None:
    a = adapters(adapter_name)
    size = tuple(a.preprocess.size)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    target = PromptTarget("a photo of a cat") if a.kind == "clip" else None
    fp = a.fingerprint
    weights = {k: v.clone() for k, v in a.model.state_dict().items()}
    if METHODS.meta(method)["needs_attention"] and not a.attention_maps:
        # windowed attention (Swin) / CNNs: refused with why and which methods apply (exit 2)
        with pytest.raises(UsageError, match=r"does not apply .*: .*(windows|convolutional).*use gradcam"):
            explain(a, x, method=method, target=target, seed=3)
        assert_no_hooks(a.model)
        return
    e1 = explain(a, x, method=method, target=target, seed=3, **FAST.get(method, {}))
    e2 = explain(a, x, method=method, target=target, seed=3, **FAST.get(method, {}))
    gh, gw = a.token_layout(size).grid
    assert e1.grid_maps.shape == (2, gh, gw) and e1.grid_maps.dtype == torch.float32
    assert torch.isfinite(e1.grid_maps).all()
    assert e1.grid_maps.abs().sum() > 0, "an all-zero map"
    torch.testing.assert_close(e1.grid_maps, e2.grid_maps, rtol=1e-6, atol=1e-7)
    assert e1.upsampled().shape == (2, *size)
    assert e1.fingerprint == fp
    assert_no_hooks(a.model)
    assert all(p.grad is None for p in a.model.parameters()), "a method left parameter gradients"
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, weights[k]), f"{method} changed weight {k}"
