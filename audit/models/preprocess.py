"""Preprocessing read from a model's own config, resolved key by key with where each value came from.

:class:`Preprocess` is what every adapter exposes as ``adapter.preprocess``; :func:`resolve_preprocess`
layers user values over the checkpoint's record over the family's config for the architecture, and
the warnings say when the values are a guess (DESIGN.md: preprocessing is never chosen silently).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = [
    "FAMILY_SOURCES", "PREPROCESS_KEYS", "Preprocess", "PreprocessSource", "ToNormalizedTensor", "guess_warning",
    "guessed_keys", "normalize_preprocess", "pop_preprocess_options", "resolve_preprocess", "with_guess_warning",
]


class ToNormalizedTensor:
    """``ToTensor()`` then ``Normalize(mean, std)`` fused: PIL RGB -> ``(3, H, W)`` float32.

    Same numbers as the two torchvision steps up to float rounding (``x * 1/(255 std) - mean/std``
    instead of ``(x / 255 - mean) / std``: within 1e-6), at a third of their cost on small images
    and 60% at 224 px (a DataLoader worker spends much of its time in those two steps).
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise ValueError(f"mean and std need 3 values, std non-zero; got {self.mean}, {self.std}")
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], dtype=torch.float32).view(3, 1, 1)
        self._shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)], dtype=torch.float32).view(3, 1, 1)

    def __call__(self, pic: Any) -> torch.Tensor:
        import numpy as np

        arr = np.array(pic, dtype=np.uint8, copy=True)  # (H, W, 3), writable
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an RGB image, got array {arr.shape} (mode {getattr(pic, 'mode', '?')}); "
                             "decode with audit.data.open_image")
        x = torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format)
        return x.mul_(self._scale).add_(self._shift)

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean}, std={self.std})"


PreprocessSource = Literal["user", "checkpoint", "hf_config", "open_clip_config", "timm_default", "zoo"]
#: the resolved keys, in the order they are shown; ``resize`` is derived from ``crop_pct`` (or the reverse)
PREPROCESS_KEYS: tuple[str, ...] = ("input_size", "resize", "crop_pct", "resize_mode", "interpolation", "mean", "std")
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")
#: the sources that are a family's configuration for the architecture (not the weights' own record)
FAMILY_SOURCES: frozenset[str] = frozenset({"hf_config", "open_clip_config", "timm_default"})


@dataclass(frozen=True)
class Preprocess:
    """The preprocessing a model is fed with, and where each value came from.

    One representation is kept: ``crop_pct`` (``input_size / resize``); :attr:`resize` is derived
    from it. ``sources`` maps each key of :data:`PREPROCESS_KEYS` to ``"user"``, ``"checkpoint"``,
    ``"hf_config"``, ``"open_clip_config"``, ``"timm_default"`` or ``"zoo"``; ``warnings`` holds
    the texts to show when a value was a guess. Neither takes part in equality or hashing.

    Example:
        >>> pp = Preprocess(size=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.875)
        >>> pp.resize
        256
    """

    size: tuple[int, int]  # (H, W) fed to the model
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos"] = "bicubic"
    crop_pct: float = 1.0
    resize_mode: Literal["shortest", "squash"] = "shortest"
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    warnings: tuple[str, ...] = field(default=(), compare=False, hash=False)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.size

    @property
    def resize(self) -> int:
        """Shorter side the image is resized to before the centre crop (``min(size) / crop_pct``).

        In ``squash`` mode both sides are resized to ``size / crop_pct`` (this is the shorter one).
        """
        return _scaled(min(self.size), self.crop_pct)

    def _resize_to(self, h: int, w: int) -> tuple[int, int]:
        return _scaled(h, self.crop_pct), _scaled(w, self.crop_pct)

    def transform(self, size: tuple[int, int] | None = None) -> Callable[[Any], torch.Tensor]:
        """A torchvision transform: PIL RGB image -> normalised ``(3, H, W)`` float tensor.

        ``shortest``: resize the shorter side to ``resize`` (square inputs; a non-square input
        resizes to ``size / crop_pct`` as timm does), then centre-crop ``size``. ``squash``: resize
        both sides to ``size / crop_pct`` ignoring the aspect ratio, then centre-crop ``size``.
        """
        from torchvision import transforms as T

        h, w = size or self.size
        interp = {
            "bilinear": T.InterpolationMode.BILINEAR,
            "bicubic": T.InterpolationMode.BICUBIC,
            "nearest": T.InterpolationMode.NEAREST,
            "lanczos": T.InterpolationMode.LANCZOS,
        }[self.interpolation]
        sh, sw = self._resize_to(h, w)
        if self.resize_mode == "squash":
            steps: list[Any] = [T.Resize((sh, sw), interpolation=interp)]
            if (sh, sw) != (h, w):
                steps.append(T.CenterCrop((h, w)))
        else:
            steps = [T.Resize(sh if h == w else (sh, sw), interpolation=interp), T.CenterCrop((h, w))]
        return T.Compose([*steps, ToNormalizedTensor(self.mean, self.std)])

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> normalised."""
        mean = torch.tensor(self.mean, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, H, W)`` -> [0, 1] (not clamped)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x * std + mean

    def values(self) -> dict[str, Any]:
        """The resolved values, JSON-ready: one entry per key of :data:`PREPROCESS_KEYS`."""
        return {
            "input_size": list(self.size),
            "resize": self.resize,
            "crop_pct": self.crop_pct,
            "resize_mode": self.resize_mode,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def to_dict(self) -> dict[str, Any]:
        """Values (``size`` as before, plus every key of :data:`PREPROCESS_KEYS`) and ``sources``."""
        return {"size": list(self.size), **self.values(), "sources": dict(self.sources)}

    def summary(self) -> str:
        """The values in words, e.g. ``resize 235 bicubic, centre crop 224, crop_pct 0.95, mean (...), std (...)``."""
        h, w = self.size
        crop = f"{h}" if h == w else f"{h}x{w}"
        sh, sw = self._resize_to(h, w)
        if self.resize_mode == "squash":
            head = f"squash to {sh}x{sw} {self.interpolation}"
            head += f", centre crop {crop}" if (sh, sw) != (h, w) else ""
        elif h == w:
            head = f"resize {sh} {self.interpolation}, centre crop {crop}"
        else:
            head = f"resize {sh}x{sw} {self.interpolation}, centre crop {crop}"
        return f"{head}, crop_pct {_fmt(self.crop_pct)}, mean {_fmt3(self.mean)}, std {_fmt3(self.std)}"

    def describe(self) -> str:
        """One line: :meth:`summary` and the source of each key."""
        src = ", ".join(f"{k}={self.sources[k]}" for k in PREPROCESS_KEYS if k in self.sources)
        return f"{self.summary()} (sources: {src or 'not recorded'})"

    def upscale_warning(self, sizes: Sequence[tuple[int, int]], *, names: Sequence[str] | None = None) -> str | None:
        """Warning text when images of ``sizes`` ``(W, H)`` would be upscaled to reach the resize size.

        Returns ``None`` when every image is at least as large as the resize target.
        """
        h, w = self.size
        th, tw = self._resize_to(h, w)
        factors = []
        for iw, ih in sizes:
            if iw <= 0 or ih <= 0:
                continue
            if self.resize_mode == "shortest" and h == w:
                factors.append(th / min(iw, ih))
            else:
                factors.append(max(th / ih, tw / iw))
        small = [i for i, f in enumerate(factors) if f > 1.0 + 1e-9]
        if not small:
            return None
        i = max(small, key=lambda j: factors[j])
        iw, ih = sizes[i]
        name = f" ({names[i]})" if names is not None and i < len(names) else ""
        target = f"{th} px (shorter side)" if self.resize_mode == "shortest" and h == w else f"{th}x{tw} px"
        return (
            f"{len(small)} of {len(factors)} images checked are smaller than the resize size, so they are "
            f"upscaled: e.g. a {iw}x{ih} image{name} is enlarged {factors[i]:.2f}x to {target} before the centre "
            f"crop ({self.summary()}); set model.preprocess (e.g. model.preprocess.crop_pct: 1.0, or "
            "model.preprocess.resize / input_size; explain: --crop-pct / --resize / --input-size) if the model "
            "was trained on images of this size"
        )


def _scaled(side: int, crop_pct: float) -> int:
    # floor as timm does; the epsilon keeps resize -> crop_pct -> resize exact (224 / (224 / 235) = 235)
    return math.floor(side / crop_pct + 1e-6)


def _fmt(v: float) -> str:
    return str(round(float(v), 4))


def _fmt3(v: Sequence[float]) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def normalize_preprocess(values: Any, *, what: str = "model.preprocess") -> dict[str, Any]:
    """Validate a dict of preprocessing values and bring it into the resolver's form.

    Accepts the keys of :class:`audit.config.PreprocessConfig` (``input_size`` as an int or
    ``(H, W)``), and ``size`` as an alias of ``input_size`` (open_clip's name). Returns only the
    keys given, with ``input_size`` as ``(H, W)`` and ``mean``/``std`` as float triples.

    Raises:
        UsageError: unknown keys or invalid values, naming ``what``.
    """
    from pydantic import ValidationError

    from audit.config import PreprocessConfig
    from audit.errors import UsageError

    if values is None:
        return {}
    if isinstance(values, PreprocessConfig):
        d = values.given()
    elif isinstance(values, dict):
        d = dict(values)
    else:
        raise UsageError(f"{what} must be a mapping of preprocessing keys, got {type(values).__name__}")
    if "size" in d:
        if "input_size" in d:
            raise UsageError(f"{what}: give input_size or size, not both")
        d["input_size"] = d.pop("size")
    if isinstance(d.get("input_size"), list):
        d["input_size"] = tuple(d["input_size"])
    for k in ("mean", "std"):
        if isinstance(d.get(k), list):
            d[k] = tuple(d[k])
    d = {k: v for k, v in d.items() if v is not None}
    try:
        cfg = PreprocessConfig(**d)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}" for err in e.errors())
        raise UsageError(f"{what}: {msgs} (keys: {', '.join(PREPROCESS_KEYS)})") from None
    out = cfg.given()
    size = out.get("input_size")
    if size is not None:
        size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(size) < 1:
            raise UsageError(f"{what}.input_size must be positive, got {size}")
        out["input_size"] = size
    for k in ("mean", "std"):
        if k in out:
            out[k] = tuple(float(v) for v in out[k])
    return out


def resolve_preprocess(layers: Sequence[tuple[str, dict[str, Any]]], *,
                       warnings: Sequence[str] = ()) -> Preprocess:
    """Resolve preprocessing from ``(source, values)`` layers, highest priority first.

    Each key (``input_size``, ``crop_pct`` or ``resize``, ``resize_mode``, ``interpolation``,
    ``mean``, ``std``) takes the value of the first layer that has it; the last layer (the
    family's config for the architecture) must have them all except ``resize``. A ``resize``
    becomes ``crop_pct = min(input_size) / resize``. ``sources`` records, per key, the layer it
    came from (``resize`` shares the source of ``crop_pct`` unless it was given itself).

    Raises:
        UsageError: a ``resize`` smaller than the input size.
    """
    from audit.errors import UsageError

    def first(*keys: str) -> tuple[str, str, Any] | None:
        for source, vals in layers:
            for k in keys:
                if vals.get(k) is not None:
                    return source, k, vals[k]
        return None

    found: dict[str, tuple[str, Any]] = {}
    for k in ("input_size", "resize_mode", "interpolation", "mean", "std"):
        hit = first(k)
        if hit is None:
            raise ValueError(f"preprocessing key {k!r} resolved from no layer ({[s for s, _ in layers]})")
        found[k] = (hit[0], hit[2])
    size = found["input_size"][1]
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    crop = first("crop_pct", "resize")
    sources = {k: found[k][0] for k in found}
    if crop is None:
        crop_pct, crop_src, resize_src = 1.0, sources["input_size"], sources["input_size"]
    elif crop[1] == "resize":
        resize = int(crop[2])
        if resize < min(size):
            raise UsageError(
                f"preprocess.resize {resize} ({crop[0]}) is smaller than the input size {min(size)}: the centre "
                "crop would not fit; give resize >= input_size (or crop_pct <= 1)"
            )
        crop_pct, crop_src, resize_src = min(size) / resize, crop[0], crop[0]
    else:
        crop_pct, crop_src, resize_src = float(crop[2]), crop[0], crop[0]
    interp = found["interpolation"][1]
    if interp not in _INTERPOLATIONS:
        raise UsageError(f"preprocess.interpolation {interp!r} ({sources['interpolation']}) is not one of "
                         f"{', '.join(_INTERPOLATIONS)}")
    mode = found["resize_mode"][1]
    if mode not in ("shortest", "squash"):
        raise UsageError(f"preprocess.resize_mode {mode!r} ({sources['resize_mode']}) is not shortest or squash")
    sources.update(crop_pct=crop_src, resize=resize_src)
    return Preprocess(
        size=size,
        mean=tuple(float(v) for v in found["mean"][1]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in found["std"][1]),  # type: ignore[arg-type]
        interpolation=interp,
        crop_pct=float(crop_pct),
        resize_mode=mode,
        sources={k: sources[k] for k in PREPROCESS_KEYS},
        warnings=tuple(warnings),
    )


_FLAGS = {"input_size": "--input-size", "resize": "--resize", "crop_pct": "--crop-pct", "resize_mode": "--resize-mode",
          "interpolation": "--interpolation", "mean": "--mean", "std": "--std"}


def guess_warning(pp: Preprocess, *, checkpoint: str | None, basis: str, guessed: Sequence[str] = (),
                  recorded: bool = False, label: str | None = None) -> str:
    """Warning text for preprocessing that was not (or only partly) stored with a checkpoint.

    Args:
        pp: the resolved preprocessing.
        checkpoint: the checkpoint path (its file name is shown).
        basis: what the guess is, e.g. ``"timm's default for vit_small_patch16_224"``.
        guessed: the keys that are the guess (empty: all of them).
        recorded: the checkpoint stored some preprocessing, but not ``guessed``.
        label: how to name the model when there is no checkpoint file (e.g. ``hf:./my_vit``).
    """
    from pathlib import Path

    what = f"checkpoint {Path(checkpoint).name}" if checkpoint else (label or "this model")
    if guessed:
        keys = ", ".join(guessed)
        head = (f"the preprocessing stored with {what} lacks {keys}" if recorded
                else f"preprocessing for {what} was not stored with it") + f": {keys} from {basis}"
        todo = (f"set model.preprocess.{' / '.join(guessed)} (explain: {' / '.join(_FLAGS[k] for k in guessed)})")
    else:
        head = f"preprocessing for {what} was not stored with it: using {basis}"
        todo = ("set model.preprocess (e.g. model.preprocess.crop_pct: 1.0, interpolation: bilinear; explain: "
                "--crop-pct 1.0 --interpolation bilinear)")
    return f"{head} ({pp.summary()}); {todo} if the model was trained otherwise"


def guessed_keys(pp: Preprocess) -> list[str]:
    """Keys whose value is the family's default for the architecture (``input_size`` and ``resize`` aside:
    the model was built for its input size, and ``resize`` follows ``crop_pct``)."""
    return [k for k in ("crop_pct", "resize_mode", "interpolation", "mean", "std")
            if pp.sources.get(k) in FAMILY_SOURCES]


def with_guess_warning(pp: Preprocess, *, checkpoint: str | None, basis: str, recorded: bool = False,
                       label: str | None = None) -> Preprocess:
    """``pp`` plus the guess warning when some of its values are the family's defaults.

    ``recorded``: the checkpoint stored part of its preprocessing.
    """
    from dataclasses import replace

    guessed = guessed_keys(pp)
    if not guessed:
        return pp
    every = len(guessed) == 5 and not recorded
    text = guess_warning(pp, checkpoint=checkpoint, basis=basis, guessed=() if every else guessed,
                         recorded=recorded, label=label)
    return replace(pp, warnings=(*pp.warnings, text))


def pop_preprocess_options(opts: dict[str, Any], *, what: str) -> tuple[dict[str, Any], list[tuple[str, dict]]]:
    """Take the preprocessing options out of an adapter's options.

    ``preprocess`` (the user's values; see :func:`normalize_preprocess`) and ``preprocess_layers``
    (``[(source, values), ...]`` set by the loader, e.g. the canary zoo's recorded values).
    Returns ``(user values, extra layers)``.
    """
    user = normalize_preprocess(opts.pop("preprocess", None), what=f"{what}: preprocess")
    layers = [(str(s), normalize_preprocess(v, what=f"{what}: {s} preprocessing"))
              for s, v in (opts.pop("preprocess_layers", None) or [])]
    return user, layers
