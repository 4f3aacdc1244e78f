"""ZeroShotHead: a CLIP adapter plus a prompt set behaves as a plain image classifier.

Example:
    >>> head = ZeroShotHead(clip_adapter, {"cat": ["cat", "kitten"], "dog": ["dog"]},
    ...                     templates=["a photo of a {}."])
    >>> head.logits(images).shape  # (B, 2)

``logits(x) = logit_scale * cos(image_embedding(x), class_embedding)`` where a class
embedding is the normalised mean of the normalised text embeddings of its prompts
under every template (CLIP's prompt ensembling). Everything else (token layout, blocks,
attention patches, Grad-CAM layer, preprocessing, image embedding) is the wrapped CLIP
adapter's, so every classifier method applies to CLIP.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from audit.errors import UsageError
from audit.models.base import Adapter, AttentionPatch, ModelSpec, TokenLayout, Tower

__all__ = ["ZeroShotHead"]


class ZeroShotHead(Adapter):
    """A CLIP adapter turned into a classifier over prompt-defined classes."""

    family: ClassVar[str] = "zeroshot"

    def __init__(
        self,
        adapter: Adapter,
        prompts: dict[str, list[str]] | list[str],
        *,
        templates: Sequence[str] | None = None,
        where: str = "ZeroShotHead prompts",
    ) -> None:
        """Args:
            adapter: a loaded CLIP adapter (``kind == "clip"``).
            prompts: class name -> descriptions, or a list of class names (each its own description).
            templates: format strings with one ``{}``, e.g. ``"a photo of a {}."``; default ``["{}"]``.
            where: where the prompts come from, named when they are refused (e.g. ``"model.class_prompts"``).

        Raises:
            ConfigError: prompts of two classes tokenize identically (the classes would be
                indistinguishable), or a prompt is mostly unknown words or tokenizes to nothing
                (:func:`audit.stats.prompts.check_prompts`).
        """
        if adapter.kind != "clip":
            raise UsageError(f"ZeroShotHead needs a CLIP adapter (kind 'clip'); {adapter.spec} is a {adapter.kind}")
        if isinstance(prompts, dict):
            classes = {str(k): [str(p) for p in v] for k, v in prompts.items()}
        else:
            classes = {str(p): [str(p)] for p in prompts}
        if len(classes) < 2:
            raise UsageError(f"ZeroShotHead needs at least 2 classes, got {list(classes)}")
        empty = [k for k, v in classes.items() if not v]
        if empty:
            raise UsageError(f"ZeroShotHead: classes without prompts: {empty}")
        templates = list(templates) if templates else ["{}"]
        bad = [t for t in templates if t.count("{}") != 1]
        if bad:
            raise UsageError(f"ZeroShotHead: each template needs exactly one '{{}}', got {bad}")
        from audit.stats.prompts import check_prompts

        check_prompts(adapter, [t.format(d) for c, ds in classes.items() for d in ds for t in templates], where=where,
                      groups=[c for c, ds in classes.items() for _ in ds for _ in templates])
        self.clip = adapter
        self.prompts = classes
        self.templates = templates
        self.spec = adapter.spec
        self.model = adapter.model
        self.kind = "classifier"
        self.class_names = list(classes)
        self.preprocess = adapter.preprocess
        self.text_embeddings = self._class_embeddings()  # (C, D) unit norm

    @classmethod
    def load(cls, spec: ModelSpec, *, device: str | torch.device = "cpu") -> Adapter:
        raise UsageError("ZeroShotHead is built from a loaded CLIP adapter: ZeroShotHead(adapter, prompts)")

    @torch.no_grad()
    def _class_embeddings(self) -> torch.Tensor:
        rows = []
        for descs in self.prompts.values():
            texts = [t.format(d) for d in descs for t in self.templates]
            emb = F.normalize(self.clip.encode_text(self.clip.tokenize(texts)).float(), dim=-1)  # (T, D)
            rows.append(F.normalize(emb.mean(dim=0), dim=-1))
        return torch.stack(rows)  # (C, D)

    @property
    def fingerprint(self) -> str:
        prompts = json.dumps({"prompts": self.prompts, "templates": self.templates}, sort_keys=True)
        return f"{self.clip.fingerprint}+zeroshot:{hashlib.sha256(prompts.encode()).hexdigest()[:8]}"

    # -- classifier ------------------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from(self.clip.encode_image(x))

    def logits_from(self, emb: torch.Tensor) -> torch.Tensor:
        img = F.normalize(emb.float(), dim=-1)  # (B, D)
        return self.clip.logit_scale * img @ self.text_embeddings.to(img.device).T  # (B, C)

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image tower runs once: embedding (B, D) and zero-shot logits (B, C)."""
        emb = self.clip.encode_image(x)
        return emb, self.logits_from(emb)

    # -- forwarded to the CLIP adapter -----------------------------------------------------
    def token_layout(self, input_size: tuple[int, int] | None = None) -> TokenLayout:
        return self.clip.token_layout(input_size)

    def supports_input_size(self, size: tuple[int, int]) -> bool:
        return self.clip.supports_input_size(size)

    def vision_blocks(self) -> list[nn.Module]:
        return self.clip.vision_blocks()

    def attention_patches(self, tower: Tower = "vision") -> list[AttentionPatch]:
        if tower != "vision":
            raise UsageError("ZeroShotHead exposes the vision tower only; use the wrapped CLIP adapter for text")
        return self.clip.attention_patches("vision")

    def gradcam_layer(self) -> nn.Module:
        return self.clip.gradcam_layer()

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(x)

    def image_projection(self) -> nn.Module | None:
        return self.clip.image_projection()

    def residual_view(self) -> Any:
        """The wrapped CLIP's view (it reconstructs the image embedding; logits follow from it)."""
        return self.clip.residual_view()

    @property
    def logit_scale(self) -> float:
        return self.clip.logit_scale

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"zeroshot": {"prompts": self.prompts, "templates": self.templates}, "clip_kind": "clip"})
        return d


def text_embeddings(adapter: Adapter, texts: Sequence[str]) -> Any:
    """``(T, D)`` float32 numpy: unit-norm embeddings of ``texts`` with a CLIP adapter's text tower
    (no gradient), as the run's CLIP analyses, slice names and component roles use them."""
    with torch.no_grad():
        t = adapter.encode_text(adapter.tokenize(list(texts)).to(adapter.device)).float()
    return F.normalize(t, dim=-1).cpu().numpy()
