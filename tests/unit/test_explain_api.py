"""explain(): grid for any input size, prefix tokens excluded, the Explanation result type."""

from __future__ import annotations

import pytest
import torch

from audit.errors import UsageError
from audit.explain import ClassTarget, Explanation, explain, list_methods
from audit.models import load_model
from audit.models.base import TokenLayout
from tests.helpers_models import tiny_deit_distilled, tiny_timm_vit, tiny_vit_reg


@pytest.fixture(scope="module")
def dyn16():
    torch.manual_seed(0)
    return load_model(
        "timm:vit_tiny_patch16_224",
        pretrained=False,
        depth=1,
        embed_dim=32,
        num_heads=2,
        num_classes=3,
        dynamic_img_size=True,
    )


@pytest.mark.parametrize("method", ["gae", "rollout", "gradcam", "saliency", "occlusion", "ig"])
def test_non_native_size_gives_10x15_grid(dyn16, method: str) -> None:
    x = torch.randn(2, 3, 160, 240)
    params = (
        {"n_steps": 4} if method == "ig" else {"perturbations_per_eval": 50} if method == "occlusion" else {}
    )
    e = explain(dyn16, x, method=method, **params)
    assert e.grid_maps.shape == (2, 10, 15) and e.layout.grid == (10, 15)
    assert e.upsampled().shape == (2, 160, 240) and e.input_size == (160, 240)
    assert torch.isfinite(e.grid_maps).all() and e.grid_maps.abs().sum() > 0


@pytest.mark.parametrize(
    "factory,kinds",
    [(tiny_deit_distilled, ("cls", "dist")), (tiny_vit_reg, ("cls", "reg", "reg", "reg", "reg"))],
)
@pytest.mark.parametrize("method", ["rollout", "gae", "gradcam", "occlusion"])
def test_prefix_tokens_never_in_maps(factory, kinds, method: str) -> None:
    a = factory()
    e = explain(a, torch.randn(2, 3, 32, 32), method=method)
    assert e.layout.prefix_kinds == kinds
    assert e.grid_maps.shape == (2, 4, 4)


def test_rollout_map_is_the_pooled_row_over_patches_only() -> None:
    # rows of rollout sum to 1 over all tokens; the prefix share must be missing from the map
    a = tiny_vit_reg()
    e = explain(a, torch.randn(2, 3, 32, 32), method="rollout")
    sums = e.grid_maps.flatten(1).sum(1)
    assert (sums < 1 - 1e-4).all() and (sums > 0).all()
    assert e.target == {"kind": "none"}


def test_explanation_views_keep_raw_values() -> None:
    layout = TokenLayout(prefix_kinds=("cls",), pooled=0, grid=(2, 2))
    raw = torch.tensor([[[1.0, 3.0], [5.0, 7.0]]])
    e = Explanation(
        method="m",
        target={"kind": "none"},
        params={},
        fingerprint="fp",
        grid_maps=raw,
        input_size=(4, 4),
        layout=layout,
        timing_s=0.1,
    )
    up = e.upsampled()
    assert up.shape == (1, 4, 4)
    # bilinear, align_corners=False: the corner pixel equals its patch value, centre = mean of 4
    assert up[0, 0, 0] == 1.0 and up[0, 3, 3] == 7.0
    torch.testing.assert_close(up[0, 1:3, 1:3].mean(), torch.tensor(4.0))
    torch.testing.assert_close(e.upsampled("nearest")[0, :2, :2], torch.ones(2, 2))
    torch.testing.assert_close(e.normalized(), torch.tensor([[[0.0, 1 / 3], [2 / 3, 1.0]]]))
    torch.testing.assert_close(e.grid_maps, raw)  # display normalisation never touches the raw maps
    assert e.to_float16_grid().dtype == torch.float16
    with pytest.raises(ValueError, match="grid_maps must be"):
        Explanation(
            method="m",
            target={},
            params={},
            fingerprint="",
            grid_maps=torch.zeros(1, 3, 3),
            input_size=(4, 4),
            layout=layout,
            timing_s=0.0,
        )


def test_explain_metadata_determinism_and_display() -> None:
    a = tiny_timm_vit()
    x = torch.randn(3, 3, 32, 32)
    e = explain(
        a,
        x,
        method="smoothgrad",
        target=ClassTarget(2),
        nt_samples=3,
        seed=4,
        keep_images=True,
        keep_attention=True,
    )
    assert e.method == "smoothgrad" and e.fingerprint == a.fingerprint
    assert e.target == {"kind": "class", "index": [2, 2, 2], "names": ["bird", "bird", "bird"]}
    assert e.params == {"nt_samples": 3, "seed": 4} and e.timing_s > 0
    assert e.pixel_maps.shape == (3, 32, 32)
    assert e.attention.shape == (3, 2, 2, 4, 4) and e.attention.dtype == torch.float16
    again = explain(a, x, method="smoothgrad", target=ClassTarget(2), nt_samples=3, seed=4)
    torch.testing.assert_close(e.grid_maps, again.grid_maps, rtol=0, atol=0)
    assert e._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<img" in e._repr_html_() and "smoothgrad" in e._repr_html_()
    # default target on a classifier: the predicted class
    pred = a.logits(x).argmax(1).tolist()
    assert explain(a, x, method="saliency").target["index"] == pred


def test_explain_errors() -> None:
    a = tiny_timm_vit()
    with pytest.raises(UsageError, match="unknown explanation method 'nope'; known: .*gae"):
        explain(a, torch.randn(1, 3, 32, 32), method="nope")
    with pytest.raises(UsageError, match="does not accept input size 48x48"):
        explain(a, torch.randn(1, 3, 48, 48), method="gae")
    assert {
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
    } <= set(list_methods())
