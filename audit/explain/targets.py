"""What an explanation explains: a class logit, a text prompt, a zero-shot class, a direction.

Every target has ``score(adapter, x) -> (B,)``, differentiable with respect to ``x`` and to
anything captured inside the forward pass, and ``describe() -> dict`` (stored with the maps).
Targets that depend on the prediction (``ClassTarget(None)``, ``ZeroShotTarget(cls=None)``)
are fixed per image by :meth:`Target.resolve` before a method runs, so every perturbed or
interpolated input is scored against the same class.

Example:
    >>> from audit.explain import explain, ClassTarget
    >>> exp = explain(adapter, images, method="gae", target=ClassTarget(None))  # doctest: +SKIP
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from audit.errors import ExplainError

if TYPE_CHECKING:
    from audit.models.base import Adapter

ForwardFn = Callable[[torch.Tensor], torch.Tensor]


def _batch_indices(index: int | Sequence[int], batch: int, *, what: str) -> torch.Tensor:
    """``int`` or per-image list -> ``(B,)`` long tensor; a list must have one entry per image."""
    if isinstance(index, int):
        return torch.full((batch,), int(index), dtype=torch.long)
    idx = torch.as_tensor(list(index), dtype=torch.long)
    if idx.dim() != 1 or idx.numel() != batch:
        raise ExplainError(
            f"{what}: got {idx.numel()} indices for a batch of {batch} images; "
            "give one int for all images or one index per image"
        )
    return idx


class Target(ABC):
    """Base class of explanation targets."""

    kind: str = "target"

    def resolve(self, adapter: Adapter, x: torch.Tensor) -> Target:
        """A target with every per-image choice fixed for the batch ``x`` (default: itself)."""
        return self

    @abstractmethod
    def score(self, adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B,)`` differentiable score."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-friendly description stored with the maps."""

    def class_forward(self, adapter: Adapter) -> tuple[ForwardFn, list[int] | None]:
        """``(forward_func, captum_target)`` for captum.

        Class-like targets give a ``(B, C)`` forward and per-image indices (so captum expands the
        target itself when it batches perturbations); other targets give a ``(B,)`` scalar forward
        and ``None``.
        """
        return (lambda inp: self.score(adapter, inp)), None

    def probability(self, adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
        """``(B,)`` probability of the target class (used by deletion/insertion)."""
        raise ExplainError(
            f"{type(self).__name__} has no class probability; deletion/insertion and the perturbation "
            "test need ClassTarget or ZeroShotTarget"
        )

    def class_indices(self) -> torch.Tensor | None:
        """``(B,)`` resolved class indices for class-like targets, else ``None``."""
        return None


@dataclass
class ClassTarget(Target):
    """A class logit of a classifier (or of a ZeroShotHead-wrapped CLIP adapter).

    Args:
        index: one class for all images, one per image, or ``None`` for each image's predicted class.
    """

    index: int | list[int] | None = None
    names: list[str] | None = field(default=None, compare=False)
    kind = "class"

    def resolve(self, adapter: Adapter, x: torch.Tensor) -> ClassTarget:
        if isinstance(self.index, list) and len(self.index) == x.shape[0] and self.names is not None:
            return self  # already resolved for this batch
        with torch.no_grad():
            logits = adapter.logits(x)  # (B, C)
        n_cls = int(logits.shape[1])
        if self.index is None:
            idx = logits.argmax(dim=1).cpu()
        else:
            idx = _batch_indices(self.index, x.shape[0], what="ClassTarget.index")
        bad = [int(i) for i in idx.tolist() if not 0 <= int(i) < n_cls]
        if bad:
            raise ExplainError(f"ClassTarget index {bad[0]} is out of range: the model has {n_cls} classes")
        cn = getattr(adapter, "class_names", None)
        names = [cn[i] for i in idx.tolist()] if cn else [str(i) for i in idx.tolist()]
        return ClassTarget(index=[int(i) for i in idx.tolist()], names=names)

    def _idx(self, x: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            raise ExplainError(
                "ClassTarget(None) must be resolved first: call target.resolve(adapter, images)"
            )
        return _batch_indices(self.index, x.shape[0], what="ClassTarget.index").to(x.device)

    def score(self, adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
        logits = adapter.logits(x)  # (B, C)
        return logits.gather(1, self._idx(x)[:, None])[:, 0]

    def probability(self, adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
        p = adapter.logits(x).float().softmax(dim=1)  # (B, C)
        return p.gather(1, self._idx(x)[:, None])[:, 0]

    def class_forward(self, adapter: Adapter) -> tuple[ForwardFn, list[int] | None]:
        if self.index is None:
            raise ExplainError(
                "ClassTarget(None) must be resolved first: call target.resolve(adapter, images)"
            )
        return adapter.logits, ([self.index] if isinstance(self.index, int) else list(self.index))

    def class_indices(self) -> torch.Tensor | None:
        return None if self.index is None or isinstance(self.index, int) else torch.tensor(self.index)

    def describe(self) -> dict[str, Any]:
        return {"kind": "class", "index": self.index, "names": self.names}


def _clip_similarity(adapter: Adapter, x: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """``logit_scale * cos(image, text)``: x ``(B, 3, H, W)``, text_emb ``(B or 1, D)`` -> ``(B,)``."""
    img = F.normalize(adapter.encode_image(x).float(), dim=-1)  # (B, D)
    txt = F.normalize(text_emb.float(), dim=-1)  # (B|1, D)
    return float(adapter.logit_scale) * (img * txt).sum(dim=-1)


def _require_clip(adapter: Adapter, what: str) -> None:
    if getattr(adapter, "kind", None) != "clip":
        raise ExplainError(
            f"{what} needs a CLIP adapter (image and text towers); {adapter.spec} is a "
            f"{getattr(adapter, 'kind', '?')}: use ClassTarget instead"
        )


@dataclass
class PromptTarget(Target):
    """CLIP image-text similarity ``logit_scale * cos(image, text)`` with one prompt.

    The text embedding is computed without gradient (only the image side is explained);
    use :func:`audit.explain.gae.clip_gae` for text-side relevance.
    """

    text: str
    kind = "prompt"

    def score(self, adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
        _require_clip(adapter, "PromptTarget")
        with torch.no_grad():
            tokens = adapter.tokenize([self.text]).to(adapter.device)
            txt = adapter.encode_text(tokens)  # (1, D)
        return _clip_similarity(adapter, x, txt)

    def describe(self) -> dict[str, Any]:
        return {"kind": "prompt", "text": self.text}


@dataclass
class ZeroShotTarget(Target):
    """A class of CLIP used as a zero-shot classifier over prompt sets (via ZeroShotHead).

    Args:
        prompts: class name -> prompts (their normalised embeddings are averaged per class).
        cls: the class to explain, or ``None`` for each image's predicted class.
    """

    prompts: dict[str, list[str]]
    cls: str | None = None
    index: list[int] | None = field(default=None, compare=False)
    _head: Any = field(default=None, repr=False, compare=False)
    kind = "zeroshot"

    def _get_head(self, adapter: Adapter) -> Any:
        from audit.models.zeroshot import ZeroShotHead

        _require_clip(adapter, "ZeroShotTarget")
        if self._head is None or getattr(self._head, "clip", None) is not adapter:
            self._head = ZeroShotHead(adapter, self.prompts)
        return self._head

    def resolve(self, adapter: Adapter, x: torch.Tensor) -> ZeroShotTarget:
        if self.index is not None and len(self.index) == x.shape[0]:
            return self
        head = self._get_head(adapter)
        names = list(self.prompts)
        if self.cls is None:
            with torch.no_grad():
                idx = head.logits(x).argmax(dim=1).tolist()
        else:
            if self.cls not in self.prompts:
                raise ExplainError(
                    f"ZeroShotTarget class {self.cls!r} is not among the prompt classes {names}"
                )
            idx = [names.index(self.cls)] * int(x.shape[0])
        return ZeroShotTarget(prompts=self.prompts, cls=self.cls, index=[int(i) for i in idx], _head=head)

    def _idx(self, x: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return self.resolve_needed()
        return _batch_indices(self.index, x.shape[0], what="ZeroShotTarget").to(x.device)

    def resolve_needed(self) -> torch.Tensor:
        raise ExplainError("ZeroShotTarget must be resolved first: call target.resolve(adapter, images)")

    def score(self, adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
        logits = self._get_head(adapter).logits(x)  # (B, K)
        return logits.gather(1, self._idx(x)[:, None])[:, 0]

    def probability(self, adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
        p = self._get_head(adapter).logits(x).float().softmax(dim=1)  # (B, K)
        return p.gather(1, self._idx(x)[:, None])[:, 0]

    def class_forward(self, adapter: Adapter) -> tuple[ForwardFn, list[int] | None]:
        if self.index is None:
            self.resolve_needed()
        return self._get_head(adapter).logits, list(self.index or [])

    def class_indices(self) -> torch.Tensor | None:
        return None if self.index is None else torch.tensor(self.index)

    def describe(self) -> dict[str, Any]:
        names = list(self.prompts)
        return {
            "kind": "zeroshot",
            "cls": self.cls,
            "index": self.index,
            "names": [names[i] for i in self.index] if self.index is not None else None,
            "prompts": self.prompts,
        }


@dataclass
class EmbeddingDirectionTarget(Target):
    """Projection of the (unnormalised) image embedding on a unit direction: ``<e(x), d/|d|>``.

    Args:
        direction: ``(D,)`` direction in embedding space (e.g. a group-mean difference).
        name: optional label stored in the description.
    """

    direction: torch.Tensor
    name: str | None = None
    kind = "direction"

    def score(self, adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
        emb = adapter.encode_image(x).float()  # (B, D)
        d = torch.as_tensor(self.direction, dtype=torch.float32, device=emb.device).flatten()
        if d.numel() != emb.shape[1]:
            raise ExplainError(
                f"EmbeddingDirectionTarget direction has {d.numel()} values but the model's image "
                f"embedding has {emb.shape[1]}"
            )
        return emb @ (d / d.norm().clamp_min(1e-12))

    def describe(self) -> dict[str, Any]:
        d = torch.as_tensor(self.direction).flatten()
        return {
            "kind": "direction",
            "name": self.name,
            "dim": int(d.numel()),
            "norm": float(d.float().norm()),
        }


def default_target(adapter: Adapter, target: Target | None) -> Target | None:
    """``target``, or ``ClassTarget(None)`` (predicted class) for classifiers when none is given."""
    if target is None and getattr(adapter, "kind", None) == "classifier":
        return ClassTarget(None)
    return target


def require_target(adapter: Adapter, target: Target | None, method: str) -> Target:
    """The resolved target for gradient/perturbation methods; CLIP without a target is an error."""
    target = default_target(adapter, target)
    if target is None:
        raise ExplainError(
            f"method {method!r} on CLIP model {adapter.spec} needs a target: pass "
            "target=PromptTarget('a photo of a dog'), ZeroShotTarget({...}) or EmbeddingDirectionTarget(d)"
        )
    return target


def prepare_target(adapter: Adapter, target: Target | None, images: torch.Tensor, method: str) -> Target:
    """:func:`require_target` then :meth:`Target.resolve` for ``images`` (idempotent)."""
    return require_target(adapter, target, method).resolve(adapter, images)
