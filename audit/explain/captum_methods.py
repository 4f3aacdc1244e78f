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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


# -- the table: one row per captum method -----------------------------------------------------
@dataclass(frozen=True)
class CaptumMethod:
    """One captum attribution method as vision-audit calls it.

    ``Method(forward).attribute(x, target=..., **params)`` with ``params`` = the row's defaults
    updated by the caller's; ``baseline`` adds ``baselines=make_baseline(baseline, blur_sigma)``;
    ``window="patch"`` adds one-patch ``sliding_window_shapes``/``strides``, ``"mask"`` the patch
    ``feature_mask``; ``noise_tunnel`` wraps the row named by ``base`` in captum's ``NoiseTunnel``,
    passing it those of its own parameters this row also takes.
    """

    name: str
    captum: str  # class in captum.attr
    params: Mapping[str, Any]  # attribute() keywords and their defaults
    reduce: Reduce  # default patch reduction (a noise tunnel uses its base's)
    doc: str
    baseline: bool = False  # takes baseline= / blur_sigma=, passed as baselines=
    expand_baseline: bool = False  # a baseline whose batch is neither 1 nor B is expanded to the input
    window: Literal["patch", "mask"] | None = None
    noise_tunnel: bool = False
    gradient: bool = True
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # closed choices of a parameter

    def accepts(self) -> tuple[str, ...]:
        """The parameter names a caller may give (besides ``target`` and ``reduce``)."""
        extra = ("baseline", "blur_sigma") if self.baseline else ()
        return (*self.params, *extra)


_IG_RULES = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")

CAPTUM_METHODS: tuple[CaptumMethod, ...] = (
    CaptumMethod("ig", "IntegratedGradients",
                 {"n_steps": 50, "method": "gausslegendre", "internal_batch_size": None}, "sum",
                 "Integrated Gradients, signed patch sums (completeness: the grid sums to f(x) - f(baseline))",
                 baseline=True, choices={"method": _IG_RULES}),
    CaptumMethod("gradient_shap", "GradientShap", {"n_samples": 16, "stdevs": 0.0}, "sum",
                 "GradientShap, signed patch sums (random: seeded by explain)", baseline=True, expand_baseline=True),
    CaptumMethod("saliency", "Saliency", {"abs": True}, "abs_sum", "Saliency (|gradient|), summed per patch"),
    CaptumMethod("input_x_gradient", "InputXGradient", {}, "sum", "Input x Gradient, signed patch sums"),
    CaptumMethod("smoothgrad", "NoiseTunnel",
                 {"base": "saliency", "nt_type": "smoothgrad", "nt_samples": 16, "stdevs": 0.15,
                  "nt_samples_batch_size": None, "n_steps": 50, "baseline": "black", "internal_batch_size": None},
                 "abs_sum", "NoiseTunnel (SmoothGrad) around base= saliency, input_x_gradient or ig "
                 "(stdevs in normalised input units)", noise_tunnel=True,
                 choices={"base": ("saliency", "input_x_gradient", "ig"),
                          "nt_type": ("smoothgrad", "smoothgrad_sq", "vargrad")}),
    CaptumMethod("occlusion", "Occlusion", {"perturbations_per_eval": 1}, "mean",
                 "patch occlusion: per patch, the score drop when it is replaced by the baseline",
                 baseline=True, window="patch", gradient=False),
    CaptumMethod("feature_ablation", "FeatureAblation", {"perturbations_per_eval": 1}, "mean",
                 "patch ablation (FeatureAblation with one feature per patch): per-patch score drop",
                 baseline=True, window="mask", gradient=False),
)
_BY_NAME = {row.name: row for row in CAPTUM_METHODS}


def _params(row: CaptumMethod, given: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(row.accepts()))
    if unknown:
        raise ExplainError(
            f"method {row.name!r} has no parameter(s) {unknown}; its parameters: {', '.join(row.accepts())}"
        )
    out = {**row.params, **({"baseline": "black", "blur_sigma": None} if row.baseline else {}), **given}
    for key, allowed in row.choices.items():
        if out[key] not in allowed:
            raise ExplainError(
                f"{row.name} {key} {out[key]!r} is not supported; use " + ", ".join(repr(a) for a in allowed)
            )
    return out


def attribute(
    name: str, adapter: Adapter, images: torch.Tensor, *, target: Target | None = None, **params: Any
) -> torch.Tensor:
    """captum attributions ``(B, 3, H, W)`` of the table's method ``name`` (see :class:`CaptumMethod`)."""
    import captum.attr

    row = _BY_NAME[name]
    p = _params(row, params)
    fwd, tgt, x = _setup(adapter, images, target, name)
    kw: dict[str, Any] = {"target": tgt}
    if row.noise_tunnel:
        inner = _BY_NAME[p.pop("base")]
        method: Any = captum.attr.NoiseTunnel(getattr(captum.attr, inner.captum)(fwd))
        if inner.baseline:
            kw["baselines"] = make_baseline(adapter, x, p["baseline"])
        kw.update({k: p[k] for k in inner.params if k in p})
        kw.update({k: p[k] for k in ("nt_type", "nt_samples", "stdevs", "nt_samples_batch_size")})
        return method.attribute(x, **kw)
    method = getattr(captum.attr, row.captum)(fwd)
    if row.baseline:
        base_t = make_baseline(adapter, x, p.pop("baseline"), blur_sigma=p.pop("blur_sigma"))
        if row.expand_baseline and base_t.shape[0] not in (x.shape[0], 1):
            base_t = base_t.expand_as(x)
        kw["baselines"] = base_t
    size = tuple(x.shape[-2:])
    if row.window == "patch":
        ph, pw = patch_size(adapter.token_layout(size), size)
        kw["sliding_window_shapes"] = kw["strides"] = (3, ph, pw)
    elif row.window == "mask":
        kw["feature_mask"] = patch_feature_mask(adapter.token_layout(size), size, x.device)
    return method.attribute(x, **kw, **p)


def _attribution_fn(row: CaptumMethod) -> Callable[..., torch.Tensor]:
    def fn(adapter: Adapter, images: torch.Tensor, *, target: Target | None = None, **params: Any) -> torch.Tensor:
        return attribute(row.name, adapter, images, target=target, **params)

    fn.__name__ = fn.__qualname__ = f"{row.name}_attr"
    defaults = ", ".join(f"{k}={v!r}" for k, v in {**row.params, **(
        {"baseline": "black", "blur_sigma": None} if row.baseline else {})}.items())
    fn.__doc__ = f"captum ``{row.captum}`` attributions ``(B, 3, H, W)``: {row.doc}. Parameters: {defaults or 'none'}."
    return fn


def _method_fn(row: CaptumMethod) -> Callable[..., torch.Tensor]:
    def fn(
        adapter: Adapter, images: torch.Tensor, *, target: Target | None = None, reduce: Reduce | None = None,
        **params: Any,
    ) -> torch.Tensor:
        if reduce is None:
            inner = _BY_NAME.get(params.get("base", row.params.get("base", "")), row)
            reduce = inner.reduce if row.noise_tunnel else row.reduce
        attr = attribute(row.name, adapter, images, target=target, **params)
        return _finish(attr, images, adapter, reduce)

    fn.__name__ = fn.__qualname__ = f"{row.name}_method"
    fn.__doc__ = f"{row.doc[0].upper()}{row.doc[1:]}; ``(B, gh, gw)``. Parameters: see :func:`{row.name}_attr`."
    return fn


# -- registry entries: (B, gh, gw), one per row ------------------------------------------------
ATTRIBUTIONS: dict[str, Callable[..., torch.Tensor]] = {}
MAP_METHODS: dict[str, Callable[..., torch.Tensor]] = {}
for _row in CAPTUM_METHODS:
    ATTRIBUTIONS[_row.name] = _attribution_fn(_row)
    MAP_METHODS[_row.name] = METHODS.register(
        _row.name, _method_fn(_row), gradient=_row.gradient, description=_row.doc, captum=_row.captum
    )

ig_attr = ATTRIBUTIONS["ig"]
gradient_shap_attr = ATTRIBUTIONS["gradient_shap"]
saliency_attr = ATTRIBUTIONS["saliency"]
input_x_gradient_attr = ATTRIBUTIONS["input_x_gradient"]
smoothgrad_attr = ATTRIBUTIONS["smoothgrad"]
occlusion_attr = ATTRIBUTIONS["occlusion"]
feature_ablation_attr = ATTRIBUTIONS["feature_ablation"]
ig_method = MAP_METHODS["ig"]
