"""Scoped capture of post-softmax attention (and its gradient) from a loaded model.

Usage::

    with capture(adapter, grads=True) as cap:
        score = adapter.logits(x)[:, 3].sum()
        score.backward()
    cap.attentions  # list of (B, H, N, N), one per block
    cap.grads       # list of dA = d score / dA, same shapes

How it works: :meth:`Adapter.attention_patches` returns, per block, a module and an
eager replacement ``forward`` that computes the same output with the softmax on the
autograd path and hands the probabilities to ``record``. This module installs each
replacement as an instance attribute ``module.forward`` (and runs the patch's
``setup``, e.g. switching timm's ``fused_attn`` off), and restores everything in a
``finally`` block, also when the body raises. No forward/backward module hooks are
used; gradients are taken with tensor hooks on the recorded attention tensors, which
die with the autograd graph.

If the model runs more than once inside the context (e.g. several batches), block
``l``'s maps are concatenated along the batch dimension in call order.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from audit.errors import CaptureError
from audit.models.base import Adapter, Tower

__all__ = ["AttentionCapture", "assert_no_hooks", "capture"]

# models that currently have a capture installed (nested capture on one model is refused)
_ACTIVE: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_MISSING = object()


class AttentionCapture:
    """What :func:`capture` yields: attention maps (and gradients) per block."""

    def __init__(self, n_blocks: int, *, tower: str, grads: bool, spec: str) -> None:
        self.n_blocks = n_blocks
        self.tower = tower
        self.want_grads = grads
        self.spec = spec
        self._maps: list[list[torch.Tensor]] = [[] for _ in range(n_blocks)]  # each (B, H, N, N)
        self._grads: list[list[torch.Tensor | None]] = [[] for _ in range(n_blocks)]

    # -- recording ---------------------------------------------------------------
    def _record(self, block: int, attn: torch.Tensor) -> None:
        if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
            raise CaptureError(
                f"{self.spec}: block {block} of the {self.tower} tower produced attention of shape "
                f"{tuple(attn.shape)}, expected (B, heads, N, N)"
            )
        self._maps[block].append(attn.detach())
        if self.want_grads:
            slot = len(self._grads[block])
            self._grads[block].append(None)
            if attn.requires_grad:
                def _store(g: torch.Tensor, block: int = block, slot: int = slot) -> None:
                    prev = self._grads[block][slot]
                    self._grads[block][slot] = g.detach() if prev is None else prev + g.detach()

                attn.register_hook(_store)

    def _check_complete(self) -> None:
        counts = [len(m) for m in self._maps]
        if min(counts) == max(counts) and counts[0] > 0:
            return
        if max(counts) == 0:
            raise CaptureError(
                f"{self.spec}: no attention was captured from the {self.tower} tower; run the model "
                "inside the `with capture(...)` block"
            )
        missing = [i for i, c in enumerate(counts) if c < max(counts)]
        raise CaptureError(
            f"{self.spec}: captured attention for {sum(c == max(counts) for c in counts)} of "
            f"{self.n_blocks} {self.tower} blocks (missing: blocks {missing}); the adapter's "
            "attention_patches() does not cover every block, or the model skipped blocks"
        )

    # -- results -------------------------------------------------------------------
    @staticmethod
    def _cat(parts: list[torch.Tensor], what: str, block: int) -> torch.Tensor:
        if len(parts) == 1:
            return parts[0]
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise CaptureError(
                f"block {block}: the model ran {len(parts)} times inside one capture with different "
                f"token counts {sorted(shapes)}; capture each input size separately ({what})"
            )
        return torch.cat(parts, dim=0)

    @property
    def attentions(self) -> list[torch.Tensor]:
        """Post-softmax attention per block, each ``(B, H, N, N)`` (detached)."""
        self._check_complete()
        return [self._cat(m, "attentions", i) for i, m in enumerate(self._maps)]

    @property
    def grads(self) -> list[torch.Tensor]:
        """``d y / d A`` per block, each ``(B, H, N, N)``; available after ``backward()``."""
        if not self.want_grads:
            raise CaptureError("gradients were not requested; use capture(adapter, grads=True)")
        self._check_complete()
        out = []
        for i, gs in enumerate(self._grads):
            if any(g is None for g in gs):
                raise CaptureError(
                    f"{self.spec}: no gradient reached the attention of {self.tower} block {i}; call "
                    "backward() on a score computed inside the capture, with gradients enabled "
                    "(not under torch.no_grad())"
                )
            out.append(self._cat(gs, "grads", i))  # type: ignore[arg-type]
        return out

    def __len__(self) -> int:
        return self.n_blocks


def _n_blocks(adapter: Adapter, tower: Tower) -> int:
    if tower == "vision":
        return len(adapter.vision_blocks())
    if tower == "text":
        return len(adapter.text_blocks())
    raise CaptureError(f"unknown tower {tower!r}; use 'vision' or 'text'")


@contextmanager
def capture(adapter: Adapter, *, tower: Tower = "vision", grads: bool = False) -> Iterator[AttentionCapture]:
    """Capture post-softmax attention of every block of ``tower`` while the body runs.

    Args:
        adapter: a loaded model adapter.
        tower: ``"vision"`` or ``"text"`` (CLIP only).
        grads: also record ``dA`` via tensor hooks (call ``backward()`` inside or after the body).

    Yields:
        An :class:`AttentionCapture`; read ``.attentions`` / ``.grads`` after the body.

    Raises:
        CaptureError: on leaving the context, when fewer blocks were captured than the
            tower has (never a partial list); or when a capture is already active on the model.
    """
    model = adapter.model
    if model in _ACTIVE:
        raise CaptureError(f"{adapter.spec}: a capture is already active on this model; nested captures are not supported")
    n_blocks = _n_blocks(adapter, tower)
    patches = adapter.attention_patches(tower)
    cap = AttentionCapture(n_blocks, tower=tower, grads=grads, spec=str(adapter.spec))

    installed: list[tuple[nn.Module, Any]] = []  # (module, previous instance-level forward or _MISSING)
    torn: list[tuple[Any, Any]] = []  # (teardown, state)
    _ACTIVE.add(model)
    try:
        for i, patch in enumerate(patches):
            if patch.setup is not None:
                state = patch.setup()
                if patch.teardown is not None:
                    torn.append((patch.teardown, state))
            prev = patch.module.__dict__.get("forward", _MISSING)
            installed.append((patch.module, prev))
            record = functools.partial(cap._record, i) if i < n_blocks else _too_many(cap, i)
            patch.module.forward = functools.partial(patch.forward, record=record)
        yield cap
    finally:
        for module, prev in reversed(installed):
            if prev is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.forward = prev
        for teardown, state in reversed(torn):
            teardown(state)
        _ACTIVE.discard(model)
    cap._check_complete()


def _too_many(cap: AttentionCapture, i: int):
    def _raise(attn: torch.Tensor) -> None:
        raise CaptureError(f"{cap.spec}: attention patch {i} has no block ({cap.n_blocks} {cap.tower} blocks)")

    return _raise


def assert_no_hooks(model: nn.Module) -> None:
    """Assert that ``model`` carries no module hooks and no replaced ``forward`` (for tests).

    Raises:
        AssertionError: naming the first module that still has a hook or patched forward.
    """
    from torch.nn.modules import module as _m

    for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks"):
        assert not getattr(_m, name, {}), f"global module hook left: {name}"
    for name, mod in model.named_modules():
        where = name or "<root>"
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(mod, attr, {}), f"{where}: {attr} left"
        assert "forward" not in mod.__dict__, f"{where}: forward still patched"
    assert model not in _ACTIVE, "model is still marked as captured"
