"""Manifests (CSV / Parquet / DataFrame / ImageFolder) and robust image decoding.

``load_manifest`` validates a manifest up front and reports every problem with its row
and file; ``open_image`` turns any image into RGB the same way every time, refusing
truncated, empty and bomb-sized files. Every name is imported on first use, so that
``audit.data.schema`` (the column map the config uses) costs no pandas, PIL or torch, and
reading manifests does not import torch (``ImageDataset``, ``collate_skip_bad``, ``make_loader``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SAMPLE_COLUMNS",
    "STANDARD_COLUMNS",
    "ColumnMap",
    "ImageDataset",
    "ImageInfo",
    "Manifest",
    "collate_skip_bad",
    "image_sha256",
    "load_manifest",
    "load_mask",
    "make_loader",
    "make_sample_images",
    "open_image",
    "probe_image",
    "to_rgb",
]

#: public name -> the module of this package that defines it
_HOME = {
    **dict.fromkeys(["DEFAULT_MAX_PIXELS", "ImageInfo", "image_sha256", "load_mask", "open_image", "probe_image",
                     "to_rgb"], "images"),
    **dict.fromkeys(["SAMPLE_COLUMNS", "STANDARD_COLUMNS", "ColumnMap"], "schema"),
    **dict.fromkeys(["Manifest", "load_manifest"], "manifest"),
    "make_sample_images": "samples",
    **dict.fromkeys(["ImageDataset", "collate_skip_bad", "make_loader", "mask_geometry"], "dataset"),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'audit.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"audit.data.{home}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
