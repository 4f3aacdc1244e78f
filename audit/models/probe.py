"""ProbeAdapter: a frozen backbone plus a linear head behaves as a plain image classifier.

A feature model without a classifier (an MAE / DINO / DINOv2 ViT built with ``num_classes=0``, a
CLIP image tower) is audited through a linear probe ``logits(x) = W @ encode_image(x) + b``. The
head is read from a safetensors file holding exactly ``weight`` ``(C, D)`` and ``bias`` ``(C,)``,
or fitted with scikit-learn's multinomial logistic regression on the embeddings of a labelled
training manifest (``model.probe`` in a config; :func:`audit.probing.probe_classifier`). Everything else (token
layout, blocks, attention patches, Grad-CAM layer, preprocessing, the embedding) is the wrapped
backbone's, and gradients flow through the backbone, so every classifier method applies.

Example:
    >>> probe = ProbeAdapter(backbone, weight, bias, ["cat", "dog"])   # doctest: +SKIP
    >>> probe.logits(images).shape                                      # (B, 2)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from audit.errors import ConfigError, UsageError
from audit.models.base import Adapter, AttentionPatch, ModelSpec, TokenLayout, Tower

__all__ = ["HEAD_FILE", "ProbeAdapter", "embed_dim", "fit_head", "load_head", "save_head"]

#: the fitted head's file in a run directory (Run.load_model reads it instead of fitting again)
HEAD_FILE = "probe_head.safetensors"


class ProbeAdapter(Adapter):
    """A backbone's image embedding read by a linear head: a classifier over the head's classes."""

    family: ClassVar[str] = "probe"

    def __init__(self, backbone: Adapter, weight: Any, bias: Any, class_names: Sequence[str], *,
                 info: dict[str, Any] | None = None) -> None:
        """Args:
            backbone: a loaded adapter (a classifier's own head, if it has one, is not used).
            weight: ``(C, D)`` head weight; ``D`` the backbone's embedding size.
            bias: ``(C,)`` head bias.
            class_names: the ``C`` class names, in the head's row order.
            info: provenance of the head (``source``, ``path``, accuracy ...), shown in run.json.
        """
        w = torch.as_tensor(np.ascontiguousarray(weight, dtype=np.float64))
        b = torch.as_tensor(np.ascontiguousarray(bias, dtype=np.float64))
        names = [str(c) for c in class_names]
        if w.dim() != 2 or b.shape != (w.shape[0],):
            raise UsageError(f"probe head: weight must be (C, D) and bias (C,), got {tuple(w.shape)} and {tuple(b.shape)}")
        if len(names) != w.shape[0] or len(set(names)) != len(names) or len(names) < 2:
            raise UsageError(f"probe head: {w.shape[0]} rows need as many distinct class names (>= 2), got {names}")
        if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
            raise UsageError("probe head: weight or bias holds NaN/Inf")
        self.backbone = backbone
        self.spec = backbone.spec
        self.model = backbone.model
        self.kind = "classifier"
        self.class_names = names
        self.preprocess = backbone.preprocess
        self.attention_maps = backbone.attention_maps
        self.attention_refusal = backbone.attention_refusal
        self.input_size_hint = backbone.input_size_hint
        self.weight = w.to(backbone.device)
        self.bias = b.to(backbone.device)
        self.info = dict(info or {})

    @classmethod
    def load(cls, spec: ModelSpec, *, device: str | torch.device = "cpu") -> Adapter:
        raise UsageError("ProbeAdapter is built from a loaded backbone: ProbeAdapter(adapter, weight, bias, names) "
                         "(or model.probe in a config)")

    @property
    def head_hash(self) -> str:
        h = hashlib.sha256()
        for t in (self.weight, self.bias):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        h.update(json.dumps(self.class_names).encode())
        return h.hexdigest()[:16]

    @property
    def fingerprint(self) -> str:
        """The backbone's fingerprint plus the head's (weights, bias and class names); cached like an
        adapter's (``_fingerprint``): dropping the cache recomputes the backbone's too."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            self.backbone.__dict__.pop("_fingerprint", None)
            cached = self._fingerprint = f"{self.backbone.fingerprint}+probe:{self.head_hash}"
        return cached

    # -- classifier ------------------------------------------------------------------------
    def logits_from(self, emb: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` embedding -> ``(B, C)`` logits, in float64 outside autocast (the head is
        applied exactly as scikit-learn's ``decision_function``)."""
        with torch.autocast(device_type=emb.device.type, enabled=False):
            return emb.double() @ self.weight.to(emb.device).T + self.bias.to(emb.device)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from(self.backbone.encode_image(x))

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone runs once: embedding (B, D) and probe logits (B, C)."""
        emb = self.backbone.encode_image(x)
        return emb, self.logits_from(emb)

    # -- forwarded to the backbone -------------------------------------------------------------
    def token_layout(self, input_size: tuple[int, int] | None = None) -> TokenLayout:
        return self.backbone.token_layout(input_size)

    def supports_input_size(self, size: tuple[int, int]) -> bool:
        return self.backbone.supports_input_size(size)

    def vision_blocks(self) -> list[nn.Module]:
        return self.backbone.vision_blocks()

    def attention_patches(self, tower: Tower = "vision") -> list[AttentionPatch]:
        if tower != "vision":
            raise UsageError("ProbeAdapter exposes the vision tower only")
        return self.backbone.attention_patches("vision")

    def gradcam_layer(self) -> nn.Module:
        return self.backbone.gradcam_layer()

    def gradcam_grid(self, out: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        return self.backbone.gradcam_grid(out, layout)

    def gradcam_from_grid(self, grid: torch.Tensor, out: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        return self.backbone.gradcam_from_grid(grid, out, layout)

    def gradcam_reshape(self, layout: TokenLayout):
        return self.backbone.gradcam_reshape(layout)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image(x)

    def image_projection(self) -> nn.Module | None:
        return self.backbone.image_projection()

    def residual_view(self) -> Any:
        """The backbone's view (it reconstructs the embedding; the probe logits are linear in it)."""
        return self.backbone.residual_view()

    def describe(self) -> dict[str, Any]:
        d = self.backbone.describe()
        d.update({"kind": "classifier", "fingerprint": self.fingerprint, "class_names": list(self.class_names),
                  "backbone_kind": self.backbone.kind, "backbone_fingerprint": self.backbone.fingerprint,
                  "probe": {**self.info, "head_sha": self.head_hash, "n_classes": len(self.class_names),
                            "embed_dim": int(self.weight.shape[1])}})
        return d


# --------------------------------------------------------------------------- head files


def embed_dim(backbone: Adapter) -> int:
    """The size D of ``backbone.encode_image``'s output (one forward pass of a blank image)."""
    h, w = tuple(backbone.preprocess.size)
    with torch.no_grad():
        return int(backbone.encode_image(torch.zeros(1, 3, int(h), int(w), device=backbone.device)).shape[-1])


def load_head(path: str | os.PathLike[str], *, dim: int, where: str = "model.probe.weights"
              ) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Read a head file: ``(weight (C, D), bias (C,), metadata)``; exactly the tensors ``weight`` and ``bias``.

    Raises:
        ConfigError: the file is missing or not safetensors, holds other tensors, or its shapes do
            not fit a backbone of embedding size ``dim`` (the message names the file and the shape).
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{where}: {p} does not exist")
    try:
        with safe_open(str(p), framework="numpy") as f:
            keys = sorted(f.keys())
            meta = dict(f.metadata() or {})
            if keys != ["bias", "weight"]:
                raise ConfigError(f"{where}: {p} must hold exactly the tensors 'weight' (C, {dim}) and 'bias' (C,); "
                                  f"it holds {keys}")
            weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{where}: {p} is not a readable safetensors file ({exc})") from None
    if weight.ndim != 2 or weight.shape[1] != dim or bias.shape != (weight.shape[0],):
        raise ConfigError(f"{where}: {p} holds weight {tuple(weight.shape)} and bias {tuple(bias.shape)}; the "
                          f"backbone's embedding has D={dim}, so expected weight (C, {dim}) and bias (C,)")
    return weight.astype(np.float64), bias.astype(np.float64), meta


def save_head(path: str | os.PathLike[str], probe: ProbeAdapter, *, key: str = "") -> Path:
    """Write ``probe``'s head (``weight``, ``bias``; class names and provenance as metadata), atomically."""
    from safetensors.numpy import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    arrays = {"weight": probe.weight, "bias": probe.bias}
    save_file({k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in arrays.items()}, str(tmp),
              metadata={"class_names": json.dumps(probe.class_names), "info": json.dumps(probe.info, default=str),
                        "key": key})
    os.replace(tmp, p)
    return p


# --------------------------------------------------------------------------- fitting


def fit_head(emb: np.ndarray, labels: Sequence[str], class_names: Sequence[str], *, C: float = 1.0,
             max_iter: int = 1000, seed: int = 0, standardize: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Multinomial logistic regression (scikit-learn, lbfgs) on ``emb`` (n, D) -> ``(W (C, D), b (C,), fit)``.

    With ``standardize`` the features are z-scored first and the scaling is folded into W and b,
    so ``argmax(emb @ W.T + b)`` is the pipeline's ``predict``. Two classes give
    ``W = [0, w]``, ``b = [0, b]`` (softmax of that is the binary model's sigmoid). ``fit`` holds
    ``converged`` and ``n_iter``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(emb, dtype=np.float64)
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index[str(v)] for v in labels], dtype=np.int64)
    present = sorted(set(y.tolist()))
    if len(present) != len(class_names):
        missing = [c for c in class_names if index[c] not in present]
        raise UsageError(f"model.probe: the training rows have no example of class(es) {missing}; every class "
                         "needs training images")
    mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    if standardize:
        sc = StandardScaler().fit(x)
        mean, scale = sc.mean_, sc.scale_
    clf = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit((x - mean) / scale, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    coef, icpt = clf.coef_ / scale, clf.intercept_ - (clf.coef_ / scale) @ mean
    if coef.shape[0] == 1:  # binary: sklearn's one decision function is class 1 against class 0
        coef = np.vstack([np.zeros_like(coef), coef])
        icpt = np.array([0.0, float(icpt[0])])
    return coef, icpt, {"converged": bool(converged), "n_iter": int(np.max(clf.n_iter_))}
