"""The Adapter interface: the only place that knows a model family.

No code outside ``audit/models/`` may assume "CLS at index 0", a 14x14 grid or a
module path. Everything an algorithm needs to know about a model's tokens comes
from :class:`TokenLayout`; everything it needs to run the model comes from the
:class:`Adapter` methods.

Tensor conventions: images are float tensors ``(B, 3, H, W)`` already
normalised with the adapter's :class:`Preprocess` (use ``adapter.preprocess``).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from audit.models.preprocess import (  # re-exported: the Adapter interface names its preprocessing
    FAMILY_SOURCES,
    PREPROCESS_KEYS,
    Preprocess,
    PreprocessSource,
    ToNormalizedTensor,
    guess_warning,
    guessed_keys,
    normalize_preprocess,
    pop_preprocess_options,
    resolve_preprocess,
    with_guess_warning,
)

TokenKind = Literal["cls", "dist", "reg", "patch"]
Tower = Literal["vision", "text"]
ModelKind = Literal["classifier", "clip"]

__all__ = [
    "FAMILY_SOURCES", "PREPROCESS_KEYS", "Adapter", "AttentionPatch", "ModelKind", "ModelSpec", "Preprocess",
    "PreprocessSource", "ToNormalizedTensor", "TokenKind", "TokenLayout", "Tower", "guess_warning", "guessed_keys",
    "normalize_preprocess", "pop_preprocess_options", "resolve_preprocess", "weights_hash", "with_guess_warning",
]


@dataclass(frozen=True)
class TokenLayout:
    """Where each token of a vision tower sits, for one input size.

    Attributes:
        prefix_kinds: kinds of the tokens before the patches, in order, e.g.
            ``("cls",)``, ``("cls", "dist")``, ``("cls", "reg", "reg", "reg", "reg")``, ``()``.
        pooled: index of the token whose output is pooled for the prediction, or
            ``None`` when the model mean-pools the patch tokens.
        grid: patch grid ``(gh, gw)`` for the actual input size (never sqrt(N)).
        prefix_after_patches: True for the (rare) layouts that put prefix tokens after the patches.

    Example:
        >>> lay = TokenLayout(prefix_kinds=("cls",), pooled=0, grid=(10, 15))
        >>> lay.n_tokens, lay.patch_slice
        (151, slice(1, 151, None))
    """

    prefix_kinds: tuple[str, ...]
    pooled: int | None
    grid: tuple[int, int]
    prefix_after_patches: bool = False

    @property
    def n_prefix(self) -> int:
        return len(self.prefix_kinds)

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.n_patches

    @property
    def patch_slice(self) -> slice:
        if self.prefix_after_patches:
            return slice(0, self.n_patches)
        return slice(self.n_prefix, self.n_tokens)

    def patch_tokens(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Select the patch tokens of ``x`` along ``dim``."""
        return x.narrow(dim % x.dim(), self.patch_slice.start, self.n_patches)

    def to_grid(self, flat: torch.Tensor) -> torch.Tensor:
        """``(B, n_patches)`` or ``(B, n_patches, C)`` -> ``(B, gh, gw)`` or ``(B, C, gh, gw)``."""
        gh, gw = self.grid
        if flat.dim() == 2:
            return flat.reshape(flat.shape[0], gh, gw)
        if flat.dim() == 3:
            b, p, c = flat.shape
            return flat.reshape(b, gh, gw, c).permute(0, 3, 1, 2)
        raise ValueError(f"expected (B, P) or (B, P, C), got {tuple(flat.shape)}")

    def pooled_row(self, a: torch.Tensor) -> torch.Tensor:
        """Row of the pooled token in a token-by-token matrix ``(B, N, N)`` -> ``(B, N)``.

        For mean-pooled models the mean of the patch rows is used.
        """
        if self.pooled is None:
            return self.patch_tokens(a, dim=-2).mean(dim=-2)
        return a[:, self.pooled, :]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix_kinds": list(self.prefix_kinds),
            "pooled": self.pooled,
            "grid": list(self.grid),
            "prefix_after_patches": self.prefix_after_patches,
        }


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``family:name`` plus an optional local checkpoint.

    Examples: ``timm:vit_base_patch16_224``, ``open_clip:ViT-B-32/laion2b_s34b_b79k``,
    ``hf:openai/clip-vit-base-patch32``, ``zoo:vit-biased``.
    """

    family: str
    name: str
    checkpoint: str | None = None
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def parse(cls, spec: str, *, checkpoint: str | None = None, **options: Any) -> ModelSpec:
        from audit.errors import ModelLoadError

        if ":" not in spec or spec.startswith(":") or spec.endswith(":"):
            raise ModelLoadError(
                f"model spec {spec!r} is not of the form FAMILY:NAME "
                "(e.g. timm:vit_base_patch16_224, open_clip:ViT-B-32/laion2b_s34b_b79k, "
                "hf:openai/clip-vit-base-patch32, zoo:vit-biased); run `vision-audit models` for the list"
            )
        family, name = spec.split(":", 1)
        return cls(family=family.strip(), name=name.strip(), checkpoint=checkpoint, options=dict(options))

    def __str__(self) -> str:
        s = f"{self.family}:{self.name}"
        return f"{s} (checkpoint={self.checkpoint})" if self.checkpoint else s


@dataclass
class AttentionPatch:
    """How to make one attention module's probabilities visible.

    ``forward`` replaces ``module.forward`` while capturing. It must compute the
    same output as the original forward (within 1e-5) in plain eager ops, with the
    post-softmax attention ``(B, H, N, N)`` on the autograd path, and pass that
    tensor to ``record(attn)`` before it is used. ``setup``/``teardown`` may flip
    flags (e.g. timm's ``fused_attn``); capture.py calls them and always restores.
    """

    module: nn.Module
    forward: Callable[..., Any]  # called as forward(*args, record=callable, **kwargs)
    setup: Callable[[], Any] | None = None
    teardown: Callable[[Any], None] | None = None


class Adapter(ABC):
    """One loaded model of one family, behind a uniform interface.

    Subclasses register themselves in :data:`audit.registry.ADAPTERS` under their
    family name and implement :meth:`load`.
    """

    family: ClassVar[str]
    #: example specs shown by ``vision-audit models``
    examples: ClassVar[tuple[str, ...]] = ()
    #: what to do when ``model.preprocess.input_size`` is a size the model does not accept
    input_size_hint: ClassVar[str] = "leave model.preprocess.input_size out to use the model's own size"
    #: whether the vision tower has a token-by-token attention matrix over the whole image (rollout,
    #: GAE, attention); False for windowed attention (Swin) and CNNs (ConvNeXt)
    attention_maps: ClassVar[bool] = True
    #: why attention methods do not apply and which methods do (shown when they are asked for)
    attention_refusal: ClassVar[str] = ""

    spec: ModelSpec
    model: nn.Module
    kind: ModelKind
    preprocess: Preprocess
    class_names: list[str] | None

    # -- construction -----------------------------------------------------
    @classmethod
    @abstractmethod
    def load(cls, spec: ModelSpec, *, device: str | torch.device = "cpu") -> Adapter:
        """Load strictly (a head that does not fit is an error). Without network a hub
        name fails with :class:`~audit.errors.ModelLoadError` naming the local alternative."""

    # -- identity -----------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """``family:name@sha256[:16]`` of the weights (state dict values in key order)."""
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            cached = f"{self.spec.family}:{self.spec.name}@{weights_hash(self.model)}"
            self._fingerprint = cached
        return cached

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- vision tower --------------------------------------------------------
    @abstractmethod
    def token_layout(self, input_size: tuple[int, int] | None = None) -> TokenLayout:
        """TokenLayout of the vision tower for ``input_size`` (H, W); default: preprocess size."""

    @abstractmethod
    def vision_blocks(self) -> list[nn.Module]:
        """The transformer blocks of the vision tower, input to output."""

    @abstractmethod
    def attention_patches(self, tower: Tower = "vision") -> list[AttentionPatch]:
        """One :class:`AttentionPatch` per block of ``tower``, in block order."""

    @abstractmethod
    def gradcam_layer(self) -> nn.Module:
        """Default Grad-CAM layer; its output is ``(B, N, C)`` tokens (last block's norm1 for
        CLS-pooled ViTs, whose last-block patch tokens get no gradient from the logits)."""

    def gradcam_grid(self, out: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """The Grad-CAM layer's output as a ``(B, C, gh, gw)`` grid; default: ``(B, N, C)`` tokens,
        prefix tokens dropped with ``layout``. Families with other layer outputs override it."""
        from audit.errors import CaptureError

        if out.dim() != 3 or out.shape[1] != layout.n_tokens:
            raise CaptureError(
                f"Grad-CAM layer gave {tuple(out.shape)}; the layout expects (B, {layout.n_tokens}, C) tokens "
                f"({layout.n_prefix} prefix + {layout.grid[0]}x{layout.grid[1]} patches)"
            )
        return layout.to_grid(layout.patch_tokens(out, dim=1))

    def gradcam_from_grid(self, grid: torch.Tensor, out: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """Inverse of :meth:`gradcam_grid`: ``grid`` (B, C, gh, gw) back in the layer's output form
        (``out`` supplies the prefix tokens)."""
        sl = layout.patch_slice
        patches = grid.flatten(2).transpose(1, 2)  # (B, P, C)
        return torch.cat([out[:, : sl.start], patches, out[:, sl.stop :]], dim=1)

    def gradcam_reshape(self, layout: TokenLayout) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """pytorch-grad-cam's ``reshape_transform`` for :meth:`gradcam_layer` (None: already (B, C, H, W))."""
        return lambda t: self.gradcam_grid(t, layout)

    @abstractmethod
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, D)`` embedding (CLIP image embedding, ViT pre-logits). Not normalised."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, C)`` class logits. CLIP adapters need a ZeroShotHead."""
        raise NotImplementedError(f"{self.spec} has no classification head; wrap it in ZeroShotHead")

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding (B, D), logits (B, C))`` from one forward pass where the family allows it.

        The default runs :meth:`encode_image` and :meth:`logits` separately; adapters whose
        logits are computed from the embedding override it to run the tower once.
        """
        return self.encode_image(x), self.logits(x)

    def supports_input_size(self, size: tuple[int, int]) -> bool:
        """Whether the model accepts ``size`` (H, W) (dynamic image size / pos-embed interpolation)."""
        return tuple(size) == tuple(self.preprocess.size)

    def image_projection(self) -> nn.Module | None:
        """Module mapping the pooled token to the embedding (CLIP), if any."""
        return None

    def residual_view(self) -> Any:
        """The :class:`~audit.models.residual.ResidualView` of the vision tower (per-head outputs, MLP
        branches, final norm, pooling and head) for the head/MLP decomposition (:mod:`audit.components`)."""
        from audit.errors import UsageError

        raise UsageError(f"{self.spec} ({self.family}): the head/MLP decomposition does not support this family; "
                         "use a timm ViT (incl. DeiT, EVA / EVA-02, BEiT, DINOv2), an open_clip CLIP or a "
                         "transformers ViT / CLIP / DINOv2")

    # -- text tower (CLIP only) ------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError(f"{self.spec} has no text tower")

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(T, L)`` token ids -> ``(T, D)`` text embedding. Not normalised."""
        raise NotImplementedError(f"{self.spec} has no text tower")

    def text_blocks(self) -> list[nn.Module]:
        raise NotImplementedError(f"{self.spec} has no text tower")

    def text_eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(T,)`` index of the pooled (end-of-text) token of each tokenised text."""
        raise NotImplementedError(f"{self.spec} has no text tower")

    def text_token_strings(self, tokens: torch.Tensor) -> list[list[str]]:
        """Readable token strings per text (for text relevance display)."""
        raise NotImplementedError(f"{self.spec} has no text tower")

    def text_tokens(self, texts: Sequence[str], *, truncate: bool = True) -> list[list[int]]:
        """Content token ids of each text: what the text tower reads, without start/end/padding.

        ``truncate=True`` (default) gives the ids as the model sees them, cut to its context
        length; ``truncate=False`` the ids before that cut (families that cannot tell return the
        truncated ids). Two texts with equal lists get identical text embeddings.

        The default reads :meth:`tokenize`: the ids after a start token at position 0 up to the
        pooled end-of-text token (:meth:`text_eot_index`).
        """
        ids = self.tokenize(list(texts))  # (T, L)
        eot = self.text_eot_index(ids).tolist()
        return [row[1:e] for row, e in zip(ids.tolist(), eot)]

    @property
    def unknown_token_id(self) -> int | None:
        """Id the tokenizer uses for text it does not know, or ``None`` when it has none
        (byte-level BPE encodes every string)."""
        return None

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature (exp of the stored log scale)."""
        raise NotImplementedError(f"{self.spec} has no logit scale")

    # -- convenience -------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        lay = self.token_layout()
        return {
            "spec": f"{self.spec.family}:{self.spec.name}",
            "checkpoint": self.spec.checkpoint,
            "family": self.family,
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "class_names": self.class_names,
            "preprocess": self.preprocess.to_dict(),
            "token_layout": lay.to_dict(),
            "n_blocks": len(self.vision_blocks()),
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec} kind={self.kind} fingerprint={self.fingerprint}>"


def weights_hash(model: nn.Module, n_hex: int = 16) -> str:
    """sha256 over parameter and buffer names, shapes and bytes, in state-dict order."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        t = v.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            t = t.float()
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:n_hex]
