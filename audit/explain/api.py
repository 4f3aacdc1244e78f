"""``explain``: one entry point for every registered explanation method.

Example:
    >>> from audit.models import load_model
    >>> from audit.explain import explain, ClassTarget
    >>> adapter = load_model("timm:vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
    ...                      embed_dim=32, depth=2, num_heads=2, num_classes=3)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> exp = explain(adapter, x, method="gae", target=ClassTarget(None))
    >>> tuple(exp.grid_maps.shape), tuple(exp.upsampled().shape)
    ((2, 4, 4), (2, 32, 32))
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from audit.errors import ExplainError, UsageError
from audit.explain.targets import Target, default_target
from audit.explain.types import Explanation, collect_extras
from audit.registry import ADAPTERS, METHODS

if TYPE_CHECKING:
    from audit.models.base import Adapter


def list_methods(*, family: str | None = None, attention_maps: bool = True) -> list[str]:
    """Names of every registered explanation method, or of those that apply to model ``family``.

    A method applies to a family unless its registration names other ``families``, or it
    ``needs_attention`` and the family's registration does not expose ``attention``.
    ``attention_maps=False`` also leaves out the attention methods (an architecture group of the
    family without attention maps, e.g. timm Swin / ConvNeXt: ``Adapter.attention_maps``).

    Example:
        >>> "rollout" in list_methods(family="timm")
        True
    """
    names = METHODS.names()
    if not attention_maps:
        names = [m for m in names if not METHODS.meta(m).get("needs_attention")]
    if family is None:
        return names
    return [m for m in names if method_applies(m, family)]


def method_applies(method: str, family: str) -> bool:
    """Whether ``method`` applies to model family ``family`` (see :func:`list_methods`)."""
    meta = METHODS.meta(method)
    families = meta.get("families")
    if families is not None and family not in families:
        return False
    return not (meta.get("needs_attention") and not ADAPTERS.meta(family).get("attention"))


def refusal(method: str, adapter: Adapter) -> str | None:
    """Why ``method`` does not apply to the loaded ``adapter`` (None when it applies).

    Attention methods need ``adapter.attention_maps`` (False for Swin's windowed attention and for
    CNNs); the text is the adapter's ``attention_refusal``.
    """
    meta = METHODS.meta(method)
    if meta.get("needs_attention") and not getattr(adapter, "attention_maps", True):
        why = getattr(adapter, "attention_refusal", "") or "the model has no attention maps"
        return f"method {method!r} does not apply to {adapter.spec}: {why}"
    return None


def method_metadata() -> list[dict[str, Any]]:
    """One dict per registered method: ``name`` and its metadata (``target_free``,
    ``needs_attention``, ``gradient``, ``families`` (None: every family), ``description``; the
    description defaults to the first line of the function's docstring)."""
    out = []
    for name in METHODS.names():
        meta = METHODS.meta(name)
        if not meta.get("description"):
            doc = (getattr(METHODS.get(name), "__doc__", None) or "").strip()
            meta["description"] = doc.splitlines()[0] if doc else ""
        out.append({"name": name, **meta})
    return out


def explain(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    method: str,
    target: Target | None = None,
    seed: int = 0,
    keep_images: bool = False,
    keep_attention: bool = False,
    artifacts: bool = False,
    **params: Any,
) -> Explanation:
    """Explain ``images`` (B, 3, H, W), normalised with ``adapter.preprocess``, with one method.

    Args:
        adapter: a loaded model adapter.
        images: ``(B, 3, H, W)`` normalised images; any size the model supports
            (e.g. 160x240 on a dynamic-size patch-16 model gives a 10x15 grid).
        method: a name in :data:`audit.registry.METHODS` (see :func:`list_methods`).
        target: what to explain; default: the predicted class for classifiers. CLIP adapters need
            a :class:`PromptTarget`, :class:`ZeroShotTarget` or :class:`EmbeddingDirectionTarget`
            for gradient methods (attention methods ignore the target).
        seed: seeds torch's and numpy's RNG for the call (global states are restored afterwards), so
            random methods (GradientShap, SmoothGrad) are deterministic.
        keep_images: also keep the denormalised images in the result (for display).
        keep_attention: also keep the per-layer attention of the pooled row,
            ``(B, L, heads, gh, gw)`` float16 (one extra captured forward pass).
        artifacts: for attention methods (rollout, GAE, raw attention), also detect high-norm artefact
            tokens per image (:func:`audit.explain.artifacts.find_artifacts`, one extra no-grad forward)
            into ``Explanation.artifacts``; ignored for other methods.
        **params: method parameters (e.g. ``n_steps=32``, ``start_layer=1``, ``baseline="blur"``).

    Returns:
        An :class:`Explanation` with raw float32 maps on the patch grid. A map with NaN/Inf
        (e.g. an fp16 overflow in the gradients) or a constant map is kept as computed and named
        per image in ``Explanation.problems`` (``valid`` is False there); it is never drawn.

    Raises:
        UsageError: unknown method name (the message lists the known ones), unsupported input size, or
            an attention method on a model without attention maps (:func:`refusal` says why).
        ExplainError: the method cannot run with this model/target/parameters.
    """
    fn = METHODS.get(method)
    refused = refusal(method, adapter)
    if refused:
        raise UsageError(refused)
    uses_target = not METHODS.meta(method)["target_free"]
    if images.dim() != 4 or images.shape[1] != 3:
        raise ExplainError(f"images must be (B, 3, H, W) normalised tensors; got shape {tuple(images.shape)}")
    size = (int(images.shape[-2]), int(images.shape[-1]))
    if not adapter.supports_input_size(size):
        raise UsageError(
            f"{adapter.spec} does not accept input size {size[0]}x{size[1]} (its size is "
            f"{tuple(adapter.preprocess.size)}); resize the images or load the model with dynamic image size"
        )
    layout = adapter.token_layout(size)
    images = images.to(adapter.device)
    target = default_target(adapter, target) if uses_target else None
    np_state = np.random.get_state()  # captum's GradientShap / NoiseTunnel also draw from numpy
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            if target is not None:
                target = target.resolve(adapter, images)
            with collect_extras() as extras:
                t0 = time.perf_counter()
                maps = fn(adapter, images, target=target, **params)  # (B, gh, gw)
                timing = time.perf_counter() - t0
        finally:
            np.random.set_state(np_state)
    if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != (images.shape[0], *layout.grid):
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ExplainError(
            f"method {method!r} returned {got}; registered methods must return (B, gh, gw) = "
            f"{(images.shape[0], *layout.grid)}"
        )
    used = {**params, **extras.get("params", {}), "seed": seed}
    attention = _pooled_attention(adapter, images) if keep_attention else None
    found = None
    if artifacts and METHODS.meta(method).get("needs_attention"):
        from audit.explain.artifacts import find_artifacts

        found = find_artifacts(adapter, images).images
    return Explanation(
        method=method,
        target=target.describe() if target is not None else {"kind": "none"},
        params=_jsonable(used),
        fingerprint=adapter.fingerprint,
        grid_maps=maps.detach().float().cpu(),
        input_size=size,
        layout=layout,
        timing_s=timing,
        pixel_maps=extras.get("pixel_maps"),
        text_relevance=extras.get("text_relevance"),
        images=adapter.preprocess.denormalize(images.detach()).clamp(0, 1).cpu() if keep_images else None,
        attention=attention,
        artifacts=found,
    )


def _pooled_attention(adapter: Adapter, images: torch.Tensor) -> torch.Tensor:
    """``(B, L, heads, gh, gw)`` float16: each block's attention from the pooled row to the patches."""
    from audit.capture import capture

    layout = adapter.token_layout(tuple(images.shape[-2:]))
    with torch.no_grad(), capture(adapter, tower="vision") as cap:
        adapter.encode_image(images)
    rows = []
    for a in cap.attentions:  # (B, H, N, N)
        b, h, n, _ = a.shape
        row = layout.pooled_row(a.reshape(b * h, n, n))  # (B*H, N)
        rows.append(layout.to_grid(layout.patch_tokens(row, dim=-1)).reshape(b, h, *layout.grid))
    return torch.stack(rows, dim=1).to(torch.float16).cpu()


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            out[k] = {"tensor": list(v.shape)}
        elif isinstance(v, (str, int, float, bool, type(None), list, tuple, dict)):
            out[k] = v
        else:
            out[k] = repr(v)
    return out
