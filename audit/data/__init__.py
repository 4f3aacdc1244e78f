"""Manifests (CSV / Parquet / DataFrame / ImageFolder) and robust image decoding.

``load_manifest`` validates a manifest up front and reports every problem with its row
and file; ``open_image`` turns any image into RGB the same way every time, refusing
truncated, empty and bomb-sized files. The torch pieces (``ImageDataset``,
``collate_skip_bad``, ``make_loader``) are imported lazily so that reading manifests does
not import torch.
"""

from __future__ import annotations

from typing import Any

from audit.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageInfo,
    image_sha256,
    load_mask,
    open_image,
    probe_image,
    to_rgb,
)
from audit.data.manifest import (
    SAMPLE_COLUMNS,
    STANDARD_COLUMNS,
    ColumnMap,
    Manifest,
    load_manifest,
    make_sample_images,
)

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

_LAZY = {"ImageDataset", "collate_skip_bad", "make_loader", "mask_geometry"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from audit.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'audit.data' has no attribute {name!r}")
