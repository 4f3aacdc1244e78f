"""Thin wrappers around captum attribution methods, with patch-aligned masks and baselines.

Each wrapper calls captum exactly as documented (``Method(forward_func).attribute(inputs, ...)``)
with the target's forward (``Target.class_forward``: class logits plus per-image indices, or a
per-image scalar score). Pixel attributions ``(B, 3, H, W)`` are kept in the Explanation as
``pixel_maps`` (B, H, W) = sum over channels, and reduced to the patch grid:

* ``reduce="sum"`` (default for IG, GradientShap, InputXGradient, SmoothGrad): signed sum over
  the patch's pixels and channels. For IG this keeps completeness: the grid sums to
  ``f(x) - f(baseline)`` (up to the integration error).
* ``reduce="abs_sum"``: sum of ``|attr|`` (Saliency's default; its attributions are already ``|∇|``).
* ``reduce="mean"`` (default for Occlusion and FeatureAblation): mean over the patch; with
  patch-aligned windows every pixel of a patch holds the same value, the score change when that
  patch is replaced by the baseline.

Baselines (``baseline=``): ``"black"`` = zeros in pixel space, i.e. ``normalize(0)``;
``"mean"`` = zeros after normalisation (the dataset mean); ``"blur"`` = the input blurred with a
gaussian; or a tensor broadcastable to the input.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from audit.errors import ExplainError
from audit.explain.targets import Target, prepare_target
from audit.explain.types import record_extra
from audit.registry import METHODS

if TYPE_CHECKING:
    from audit.models.base import Adapter, TokenLayout

BaselineKind = Literal["black", "mean", "blur"]
Reduce = Literal["sum", "abs_sum", "mean"]


# -- shared helpers (also used by faithfulness) ------------------------------------------------
def patch_size(layout: TokenLayout, input_size: tuple[int, int]) -> tuple[int, int]:
    """Pixel size ``(ph, pw)`` of one patch for ``input_size``; the grid must tile the image exactly."""
    (h, w), (gh, gw) = input_size, layout.grid
    if h % gh or w % gw:
        raise ExplainError(
            f"input {h}x{w} is not tiled exactly by the {gh}x{gw} patch grid; "
            "resize the images to a multiple of the patch size"
        )
    return h // gh, w // gw


def gaussian_blur(x: torch.Tensor, *, sigma: float | None = None) -> torch.Tensor:
    """Gaussian-blurred ``x`` (B, 3, H, W); default ``sigma = max(1, min(H, W) / 32)``.

    Blurring commutes with the per-channel affine normalisation, so blurring normalised images
    equals normalising blurred pixels.
    """
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    h, w = x.shape[-2:]
    s = float(sigma) if sigma is not None else max(1.0, min(h, w) / 32.0)
    k = 2 * math.ceil(3 * s) + 1
    k = min(k, 2 * ((min(h, w) - 1) // 2) + 1)  # reflect padding needs k // 2 < size
    return tv_blur(x, kernel_size=[k, k], sigma=[s, s])


def make_baseline(
    adapter: Adapter,
    images: torch.Tensor,
    baseline: BaselineKind | torch.Tensor,
    *,
    blur_sigma: float | None = None,
) -> torch.Tensor:
    """Baseline tensor for ``images`` (B, 3, H, W): ``(1, 3, H, W)`` for black/mean, ``(B, 3, H, W)`` for blur."""
    if isinstance(baseline, torch.Tensor):
        try:
            torch.broadcast_shapes(baseline.shape, images.shape)
        except RuntimeError:
            raise ExplainError(
                f"baseline tensor of shape {tuple(baseline.shape)} does not broadcast to the images "
                f"{tuple(images.shape)}"
            ) from None
        return baseline.to(images.device, images.dtype)
    h, w = images.shape[-2:]
    if baseline == "black":
        zeros = torch.zeros(1, 3, h, w, dtype=images.dtype, device=images.device)
        return adapter.preprocess.normalize(zeros)
    if baseline == "mean":
        return torch.zeros(1, 3, h, w, dtype=images.dtype, device=images.device)
    if baseline == "blur":
        return gaussian_blur(images.detach(), sigma=blur_sigma)
    raise ExplainError(f"unknown baseline {baseline!r}; use 'black', 'mean', 'blur' or a tensor")


def pixels_to_grid(attr: torch.Tensor, layout: TokenLayout, *, reduce: Reduce) -> torch.Tensor:
    """``(B, 3, H, W)`` attributions -> ``(B, gh, gw)`` per patch (see module docstring)."""
    b, _, h, w = attr.shape
    gh, gw = layout.grid
    a = attr.detach().float()
    if reduce == "abs_sum":
        a = a.abs()
    elif reduce not in ("sum", "mean"):
        raise ExplainError(f"unknown reduce {reduce!r}; use 'sum', 'abs_sum' or 'mean'")
    a = a.sum(dim=1, keepdim=True)  # (B, 1, H, W)
    if h % gh == 0 and w % gw == 0:
        ph, pw = h // gh, w // gw
        g = a.reshape(b, gh, ph, gw, pw).sum(dim=(2, 4))  # (B, gh, gw)
        count = 3 * ph * pw
    else:  # grids that do not tile exactly (dynamic padding): area-weighted pooling
        g = F.adaptive_avg_pool2d(a, (gh, gw))[:, 0] * (h * w / (gh * gw))
        count = 3 * h * w / (gh * gw)
    return g / count if reduce == "mean" else g


def patch_feature_mask(layout: TokenLayout, input_size: tuple[int, int], device: Any = None) -> torch.Tensor:
    """``(1, 1, H, W)`` long mask numbering the model's patches row-major (captum feature_mask)."""
    ph, pw = patch_size(layout, input_size)
    gh, gw = layout.grid
    ids = torch.arange(gh * gw, device=device).reshape(gh, gw)
    return ids.repeat_interleave(ph, 0).repeat_interleave(pw, 1)[None, None]


def _finish(attr: torch.Tensor, images: torch.Tensor, adapter: Adapter, reduce: Reduce) -> torch.Tensor:
    layout = adapter.token_layout(tuple(images.shape[-2:]))
    record_extra("pixel_maps", attr.detach().float().sum(dim=1))  # (B, H, W)
    return pixels_to_grid(attr, layout, reduce=reduce)


def _setup(adapter: Adapter, images: torch.Tensor, target: Target | None, name: str):
    target = prepare_target(adapter, target, images, name)
    fwd, tgt = target.class_forward(adapter)
    return fwd, tgt, images.detach().clone().requires_grad_(True)


# -- raw attribution calls (return captum's (B, 3, H, W) attributions) --------------------------
def ig_attr(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    target: Target | None = None,
    baseline: BaselineKind | torch.Tensor = "black",
    n_steps: int = 50,
    method: Literal[
        "riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"
    ] = "gausslegendre",
    internal_batch_size: int | None = None,
    blur_sigma: float | None = None,
) -> torch.Tensor:
    """captum ``IntegratedGradients`` attributions ``(B, 3, H, W)``."""
    from captum.attr import IntegratedGradients

    fwd, tgt, x = _setup(adapter, images, target, "ig")
    base = make_baseline(adapter, x, baseline, blur_sigma=blur_sigma)
    return IntegratedGradients(fwd).attribute(
        x, baselines=base, target=tgt, n_steps=n_steps, method=method, internal_batch_size=internal_batch_size
    )


def gradient_shap_attr(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    target: Target | None = None,
    baseline: BaselineKind | torch.Tensor = "black",
    n_samples: int = 16,
    stdevs: float = 0.0,
    blur_sigma: float | None = None,
) -> torch.Tensor:
    """captum ``GradientShap`` attributions ``(B, 3, H, W)`` (random: seed it, ``explain`` does)."""
    from captum.attr import GradientShap

    fwd, tgt, x = _setup(adapter, images, target, "gradient_shap")
    base = make_baseline(adapter, x, baseline, blur_sigma=blur_sigma)
    if base.shape[0] != x.shape[0] and base.shape[0] != 1:
        base = base.expand_as(x)
    return GradientShap(fwd).attribute(x, baselines=base, n_samples=n_samples, stdevs=stdevs, target=tgt)


def saliency_attr(
    adapter: Adapter, images: torch.Tensor, *, target: Target | None = None, abs: bool = True
) -> torch.Tensor:
    """captum ``Saliency`` attributions ``(B, 3, H, W)``."""
    from captum.attr import Saliency

    fwd, tgt, x = _setup(adapter, images, target, "saliency")
    return Saliency(fwd).attribute(x, target=tgt, abs=abs)


def input_x_gradient_attr(
    adapter: Adapter, images: torch.Tensor, *, target: Target | None = None
) -> torch.Tensor:
    """captum ``InputXGradient`` attributions ``(B, 3, H, W)``."""
    from captum.attr import InputXGradient

    fwd, tgt, x = _setup(adapter, images, target, "input_x_gradient")
    return InputXGradient(fwd).attribute(x, target=tgt)


SmoothBase = Literal["saliency", "input_x_gradient", "ig"]


def smoothgrad_attr(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    target: Target | None = None,
    base: SmoothBase = "saliency",
    nt_type: Literal["smoothgrad", "smoothgrad_sq", "vargrad"] = "smoothgrad",
    nt_samples: int = 16,
    stdevs: float = 0.15,
    nt_samples_batch_size: int | None = None,
    n_steps: int = 50,
    baseline: BaselineKind | torch.Tensor = "black",
    internal_batch_size: int | None = None,
) -> torch.Tensor:
    """captum ``NoiseTunnel`` around ``base`` (``stdevs`` in normalised input units), ``(B, 3, H, W)``."""
    from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

    fwd, tgt, x = _setup(adapter, images, target, "smoothgrad")
    extra: dict[str, Any] = {}
    if base == "saliency":
        inner: Any = Saliency(fwd)
    elif base == "input_x_gradient":
        inner = InputXGradient(fwd)
    elif base == "ig":
        inner = IntegratedGradients(fwd)
        extra = {
            "baselines": make_baseline(adapter, x, baseline),
            "n_steps": n_steps,
            "internal_batch_size": internal_batch_size,
        }
    else:
        raise ExplainError(
            f"smoothgrad base {base!r} is not supported; use 'saliency', 'input_x_gradient' or 'ig'"
        )
    return NoiseTunnel(inner).attribute(
        x,
        nt_type=nt_type,
        nt_samples=nt_samples,
        stdevs=stdevs,
        nt_samples_batch_size=nt_samples_batch_size,
        target=tgt,
        **extra,
    )


def occlusion_attr(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    target: Target | None = None,
    baseline: BaselineKind | torch.Tensor = "black",
    perturbations_per_eval: int = 1,
    blur_sigma: float | None = None,
) -> torch.Tensor:
    """captum ``Occlusion`` with window = stride = one patch (aligned with the model's tokens)."""
    from captum.attr import Occlusion

    fwd, tgt, x = _setup(adapter, images, target, "occlusion")
    ph, pw = patch_size(adapter.token_layout(tuple(x.shape[-2:])), tuple(x.shape[-2:]))
    base = make_baseline(adapter, x, baseline, blur_sigma=blur_sigma)
    return Occlusion(fwd).attribute(
        x,
        sliding_window_shapes=(3, ph, pw),
        strides=(3, ph, pw),
        baselines=base,
        target=tgt,
        perturbations_per_eval=perturbations_per_eval,
    )


def feature_ablation_attr(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    target: Target | None = None,
    baseline: BaselineKind | torch.Tensor = "black",
    perturbations_per_eval: int = 1,
    blur_sigma: float | None = None,
) -> torch.Tensor:
    """captum ``FeatureAblation`` with one feature per model patch (``patch_feature_mask``)."""
    from captum.attr import FeatureAblation

    fwd, tgt, x = _setup(adapter, images, target, "feature_ablation")
    mask = patch_feature_mask(adapter.token_layout(tuple(x.shape[-2:])), tuple(x.shape[-2:]), x.device)
    base = make_baseline(adapter, x, baseline, blur_sigma=blur_sigma)
    return FeatureAblation(fwd).attribute(
        x, baselines=base, target=tgt, feature_mask=mask, perturbations_per_eval=perturbations_per_eval
    )


# -- registry entries: (B, gh, gw) ---------------------------------------------------------------
@METHODS.register("ig")
def ig_method(
    adapter: Adapter, images: torch.Tensor, *, target: Target | None = None, reduce: Reduce = "sum", **kw: Any
) -> torch.Tensor:
    """Integrated Gradients, signed patch sums. Parameters: see :func:`ig_attr`."""
    return _finish(ig_attr(adapter, images, target=target, **kw), images, adapter, reduce)


@METHODS.register("gradient_shap")
def gradient_shap_method(
    adapter: Adapter, images: torch.Tensor, *, target: Target | None = None, reduce: Reduce = "sum", **kw: Any
) -> torch.Tensor:
    """GradientShap, signed patch sums. Parameters: see :func:`gradient_shap_attr`."""
    return _finish(gradient_shap_attr(adapter, images, target=target, **kw), images, adapter, reduce)


@METHODS.register("saliency")
def saliency_method(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    target: Target | None = None,
    reduce: Reduce = "abs_sum",
    **kw: Any,
) -> torch.Tensor:
    """Saliency (|gradient|), summed per patch. Parameters: see :func:`saliency_attr`."""
    return _finish(saliency_attr(adapter, images, target=target, **kw), images, adapter, reduce)


@METHODS.register("input_x_gradient")
def input_x_gradient_method(
    adapter: Adapter, images: torch.Tensor, *, target: Target | None = None, reduce: Reduce = "sum", **kw: Any
) -> torch.Tensor:
    """Input x Gradient, signed patch sums."""
    return _finish(input_x_gradient_attr(adapter, images, target=target, **kw), images, adapter, reduce)


@METHODS.register("smoothgrad")
def smoothgrad_method(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    target: Target | None = None,
    reduce: Reduce | None = None,
    **kw: Any,
) -> torch.Tensor:
    """NoiseTunnel around ``base`` (default saliency); reduce defaults to abs_sum for saliency, else sum."""
    if reduce is None:
        reduce = "abs_sum" if kw.get("base", "saliency") == "saliency" else "sum"
    return _finish(smoothgrad_attr(adapter, images, target=target, **kw), images, adapter, reduce)


@METHODS.register("occlusion")
def occlusion_method(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    target: Target | None = None,
    reduce: Reduce = "mean",
    **kw: Any,
) -> torch.Tensor:
    """Patch occlusion: per patch, the score drop when it is replaced by the baseline."""
    return _finish(occlusion_attr(adapter, images, target=target, **kw), images, adapter, reduce)


@METHODS.register("feature_ablation")
def feature_ablation_method(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    target: Target | None = None,
    reduce: Reduce = "mean",
    **kw: Any,
) -> torch.Tensor:
    """Patch ablation (captum FeatureAblation with the patch mask): per-patch score drop."""
    return _finish(feature_ablation_attr(adapter, images, target=target, **kw), images, adapter, reduce)
