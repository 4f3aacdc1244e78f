"""Safe loading and saving of local checkpoints, shared by every adapter.

Only two formats are read:

* ``.safetensors`` (preferred): plain tensors, no code can run while loading.
* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``: read with ``torch.load(weights_only=True)``,
  PyTorch's restricted unpickler that only rebuilds tensors and plain containers.
  A pickle that needs anything else (a ``__reduce__`` payload, a custom class, an
  ``argparse.Namespace`` in a training checkpoint) is refused with
  :class:`~audit.errors.UnsafeCheckpointError` and never executed.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit.errors import ModelLoadError, UnsafeCheckpointError

__all__ = [
    "check_state_dict",
    "checkpoint_preprocess",
    "conversion_hint",
    "load_checkpoint",
    "load_state_dict_file",
    "save_state_dict",
]

_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "model_ema", "state_dict_ema")


def conversion_hint(path: str | Path) -> str:
    """Shell command that converts a trusted pickle checkpoint to safetensors."""
    p = Path(path)
    out = p.with_suffix(".safetensors")
    return (
        "if (and only if) you trust the file, convert it once with:\n"
        '  python -c "import torch; from safetensors.torch import save_file; '
        f"sd = torch.load('{p}', map_location='cpu', weights_only=False); "
        "sd = sd.get('state_dict', sd.get('model', sd)); "
        f"save_file({{k: v.contiguous() for k, v in sd.items()}}, '{out}')\"\n"
        f"and pass --checkpoint {out}"
    )


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` containers and ``module.`` prefixes."""
    if not _is_tensor_dict(obj) and isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and _is_tensor_dict(obj[key]):
                obj = obj[key]
                break
    if not _is_tensor_dict(obj):
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ModelLoadError(
            f"checkpoint {path}: expected a state dict (parameter name -> tensor), found {keys}; "
            f"save the model with torch.save(model.state_dict(), ...) or safetensors.torch.save_file"
        )
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local checkpoint file without executing code (see :func:`load_checkpoint`)."""
    return load_checkpoint(path)[0]


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a local checkpoint file without executing code, with the preprocessing stored with it.

    Args:
        path: a ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin``/``.ckpt`` state dict.

    Returns:
        ``(state dict, preprocessing)``: the state dict (CPU tensors), unwrapped from common training
        containers, and the preprocessing recorded with the weights (see :func:`checkpoint_preprocess`)
        or ``None``.

    Raises:
        ModelLoadError: the file is missing, of an unknown type or not a state dict.
        UnsafeCheckpointError: the pickle needs code execution to load.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"checkpoint {p} does not exist; check the path given as --checkpoint/checkpoint=")
    if p.is_dir():
        raise ModelLoadError(
            f"checkpoint {p} is a directory; pass the weights file itself (.safetensors or .pth), "
            "or use an hf:DIRECTORY spec for a transformers model folder"
        )
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise ModelLoadError(f"checkpoint {p} is not a readable safetensors file: {e}") from e
        return _extract_state_dict(sd, p), checkpoint_preprocess(p, _safetensors_metadata(p))
    if suffix in _PICKLE_SUFFIXES:
        try:
            with warnings.catch_warnings():
                # a raw pickle (not torch.save) triggers a protocol notice; the restricted
                # unpickler still decides what loads, so the notice is noise for users
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnsafeCheckpointError(
                f"checkpoint {p} was refused: loading it would run Python code from the file "
                f"(it is a pickle that references objects other than tensors; torch said: {first}). "
                "vision-audit only loads pickles with torch.load(weights_only=True), so a malicious "
                "file cannot execute anything. Use a .safetensors file instead; "
                + conversion_hint(p)
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise ModelLoadError(f"checkpoint {p} could not be read as a PyTorch file: {e}") from e
        return _extract_state_dict(obj, p), checkpoint_preprocess(p, obj if isinstance(obj, Mapping) else None)
    raise ModelLoadError(
        f"checkpoint {p}: unknown file type {suffix or '(no suffix)'!r}; "
        "use .safetensors (preferred) or a PyTorch state dict saved as .pth/.pt/.bin"
    )


def save_state_dict(model_or_sd: nn.Module | Mapping[str, torch.Tensor], path: str | Path, *,
                    preprocess: Any = None) -> Path:
    """Save a model's weights as ``.safetensors`` (contiguous CPU copies; shared tensors duplicated).

    Args:
        model_or_sd: the model or its state dict.
        path: a ``.safetensors`` file.
        preprocess: the preprocessing the model was trained with (a
            :class:`~audit.models.base.Preprocess` or a dict of ``input_size``, ``resize`` /
            ``crop_pct``, ``resize_mode``, ``interpolation``, ``mean``, ``std``), stored in the file's
            metadata under ``preprocess`` so that loading it needs no guess.

    Example:
        >>> save_state_dict(model, "my.safetensors",
        ...                 preprocess={"input_size": 224, "crop_pct": 1.0, "interpolation": "bilinear"})  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise ValueError(f"save_state_dict writes .safetensors files only, got {p}")
    metadata = None
    if preprocess is not None:
        from audit.models.base import Preprocess, normalize_preprocess

        if isinstance(preprocess, Preprocess):
            vals = preprocess.values()
            vals.pop("resize")
        else:
            vals = normalize_preprocess(preprocess, what="save_state_dict(preprocess=...)")
        metadata = {"preprocess": json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in vals.items()})}
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}, str(p), metadata=metadata)
    return p


#: hub layouts whose weights file has a config with the preprocessing next to it
_SIDECARS = {
    "model.safetensors": ("config.json", "pretrained_cfg"),  # timm push_to_hub
    "pytorch_model.bin": ("config.json", "pretrained_cfg"),
    "open_clip_model.safetensors": ("open_clip_config.json", "preprocess_cfg"),  # open_clip push_to_hub
    "open_clip_pytorch_model.bin": ("open_clip_config.json", "preprocess_cfg"),
}


def _safetensors_metadata(p: Path) -> dict[str, str] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return f.metadata()
    except Exception:  # noqa: BLE001 - the weights were read already; metadata is optional
        return None


def checkpoint_preprocess(path: str | Path, container: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The preprocessing recorded with a checkpoint, in ``model.preprocess`` keys, or ``None``.

    Looked for, in order: ``container`` (safetensors metadata, or the dict a ``.pth`` file holds
    next to its state dict) under ``preprocess`` (our keys, see :func:`save_state_dict`),
    ``pretrained_cfg`` (timm's data config: ``input_size (3, H, W)``, ``crop_pct``, ``crop_mode``,
    ``interpolation``, ``mean``, ``std``) or ``preprocess_cfg`` (open_clip's: ``size``,
    ``resize_mode``, ``interpolation``, ``mean``, ``std``); then, for the hub file names
    (``model.safetensors``, ``open_clip_model.safetensors`` ...), the ``config.json`` /
    ``open_clip_config.json`` next to it.

    Raises:
        ModelLoadError: the recorded preprocessing is not valid.
    """
    p = Path(path)
    found: Any = None
    if container:
        for key in ("preprocess", "pretrained_cfg", "preprocess_cfg"):
            if container.get(key) is not None:
                found = container[key]
                break
    if found is None and p.name in _SIDECARS:
        side, key = _SIDECARS[p.name]
        f = p.parent / side
        if f.is_file():
            try:
                cfg = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ModelLoadError(f"checkpoint {p}: {f} is not readable JSON: {e}") from e
            found = cfg.get(key) if isinstance(cfg, dict) else None
            if found is None and isinstance(cfg, dict) and isinstance(cfg.get("model_cfg"), dict):
                found = cfg["model_cfg"].get(key)
    if found is None:
        return None
    if isinstance(found, str):
        try:
            found = json.loads(found)
        except ValueError as e:
            raise ModelLoadError(f"checkpoint {p}: its preprocessing metadata is not JSON: {e}") from e
    if not isinstance(found, Mapping):
        raise ModelLoadError(f"checkpoint {p}: its preprocessing metadata is a {type(found).__name__}, not a mapping")
    return _from_foreign(dict(found), p)


def _from_foreign(d: dict[str, Any], p: Path) -> dict[str, Any] | None:
    """Our keys from our own, timm's or open_clip's form (other keys ignored)."""
    from audit.errors import UsageError
    from audit.models.base import normalize_preprocess

    out: dict[str, Any] = {}
    size = d.get("input_size", d.get("size"))
    if size is not None:
        size = list(size) if isinstance(size, list | tuple) else size
        if isinstance(size, list) and len(size) == 3:  # timm: (C, H, W)
            size = size[1:]
        out["input_size"] = size
    for k in ("resize", "crop_pct", "interpolation", "mean", "std"):
        if d.get(k) is not None:
            out[k] = d[k]
    mode = d.get("resize_mode", d.get("crop_mode"))
    if mode is not None:
        mode = {"center": "shortest", "centre": "shortest"}.get(mode, mode)
        if mode not in ("shortest", "squash"):
            raise ModelLoadError(f"checkpoint {p}: recorded resize_mode {mode!r} is not supported (shortest, squash)")
        out["resize_mode"] = mode
    if out.get("crop_pct") is not None and float(out["crop_pct"]) > 1.0:
        out["crop_pct"] = 1.0
    if out.get("resize") is not None and out.get("crop_pct") is not None:
        out.pop("resize")
    if not out:
        return None
    try:
        return normalize_preprocess(out, what=f"checkpoint {p.name}: recorded preprocessing")
    except UsageError as e:
        raise ModelLoadError(str(e)) from None


def check_state_dict(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    *,
    source: str,
    spec: str,
    head_keys: tuple[str, ...] = (),
    head_hint: str = "",
) -> None:
    """Compare ``sd`` with ``model.state_dict()`` and raise a specific error on any difference.

    Args:
        model: the freshly built (randomly initialised) model.
        sd: the checkpoint's state dict.
        source: the checkpoint path (for the message).
        spec: the model spec (for the message).
        head_keys: parameter names of the classification head; a shape difference there
            gets ``head_hint`` (e.g. "pass num_classes=10") in the message.
        head_hint: what to do about a head mismatch.

    Raises:
        ModelLoadError: naming expected vs found shapes, missing and unexpected keys.
    """
    own = model.state_dict()
    head_msgs: list[str] = []
    other: list[str] = []
    for k, v in sd.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            line = f"{k}: model expects {tuple(own[k].shape)}, checkpoint has {tuple(v.shape)}"
            (head_msgs if k in head_keys else other).append(line)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    head_missing = [k for k in missing if k in head_keys]
    head_unexpected = [k for k in unexpected if any(k.startswith(h.rsplit(".", 1)[0] + ".") for h in head_keys)]
    if head_msgs or (head_unexpected and not other):
        found = head_msgs + [f"{k}: checkpoint has {tuple(sd[k].shape)}, model has no such parameter"
                             for k in head_unexpected]
        found += [f"{k}: model expects {tuple(own[k].shape)}, missing in checkpoint" for k in head_missing]
        raise ModelLoadError(
            f"checkpoint {source} does not fit {spec}: classification head mismatch ("
            + "; ".join(found) + f"). {head_hint}"
        )
    if other or missing or unexpected:
        parts = []
        if other:
            parts.append("shape mismatches: " + "; ".join(other[:10]))
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:5])})")
        raise ModelLoadError(
            f"checkpoint {source} does not fit {spec}: " + "; ".join(parts)
            + ". Check that the spec names the architecture the checkpoint was trained with "
            "(and its options, e.g. img_size/patch_size/embed_dim/depth)."
        )
