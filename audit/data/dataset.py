"""A torch Dataset over a :class:`~audit.data.manifest.Manifest`, and its DataLoader.

Images are decoded with :func:`audit.data.images.open_image` (same RGB rules everywhere).
A decode failure at load time either raises :class:`ImageDecodeError` naming the row and
file, or (``skip_bad=True``) returns a sentinel item that :func:`collate_skip_bad` drops from
the batch **and lists in the batch's ``skipped``** so the caller records it; nothing is
dropped silently.

Batches from :func:`make_loader` are dicts::

    row_id:   (B,) int64          rows of the manifest (Manifest.df.row_id)
    image:    (B, 3, H, W) float  the transform's output
    mask:     (B, H, W) bool      region masks at the image tensor's size (all False if none)
    has_mask: (B,) bool           which rows have a mask
    path:     list[str]
    skipped:  list[{"row": 1-based data row, "row_id": int, "path": str, "reason": str}]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from audit.data.images import DEFAULT_MAX_PIXELS, load_mask, open_image
from audit.data.manifest import Manifest
from audit.errors import ImageDecodeError, UsageError

__all__ = ["ImageDataset", "collate_skip_bad", "make_loader", "mask_geometry"]

ImageTransform = Callable[[Image.Image], torch.Tensor]
MaskTransform = Callable[[Image.Image], Image.Image]

# torchvision v1 transforms that do not move pixels: skipped when replaying geometry on a mask.
_PHOTOMETRIC = {
    "ToTensor", "PILToTensor", "Normalize", "ConvertImageDtype", "ColorJitter", "Grayscale",
    "GaussianBlur", "RandomAdjustSharpness", "RandomAutocontrast", "RandomEqualize",
    "RandomGrayscale", "RandomInvert", "RandomPosterize", "RandomSolarize", "ToPILImage",
    "ToNormalizedTensor",  # audit.models.base: ToTensor + Normalize in one step
}


def _is_v2(transform: Any) -> bool:
    return type(transform).__module__.startswith("torchvision.transforms.v2")


def mask_geometry(transform: Any) -> MaskTransform:
    """Build a function that applies ``transform``'s geometric steps to a mask image.

    Supports torchvision (v1) ``Compose`` of ``Resize``, ``CenterCrop``, ``Pad`` and
    photometric steps (``ToTensor``, ``Normalize``, ...), which is what
    :meth:`audit.models.base.Preprocess.transform` returns. Resizing uses nearest neighbour.

    Raises:
        UsageError: the transform has a random or unknown geometric step; pass a
            ``mask_transform`` to :class:`ImageDataset` (or use torchvision.transforms.v2,
            which transforms image and mask together).
    """
    from torchvision import transforms as T

    steps: list[MaskTransform] = []

    def visit(t: Any) -> None:
        name = type(t).__name__
        if isinstance(t, T.Compose):
            for s in t.transforms:
                visit(s)
        elif isinstance(t, T.Resize):
            steps.append(T.Resize(t.size, interpolation=T.InterpolationMode.NEAREST, max_size=t.max_size))
        elif isinstance(t, T.CenterCrop):
            steps.append(T.CenterCrop(t.size))
        elif isinstance(t, T.Pad):
            steps.append(T.Pad(t.padding, fill=0, padding_mode=t.padding_mode))
        elif name in _PHOTOMETRIC:
            return
        else:
            raise UsageError(
                f"cannot replay transform step {name} on region masks (random or unknown geometry); "
                "pass mask_transform=... to ImageDataset, or use a torchvision.transforms.v2 transform"
            )

    visit(transform)

    def apply(mask: Image.Image) -> Image.Image:
        for s in steps:
            mask = s(mask)
        return mask

    return apply


class ImageDataset(Dataset):
    """Images (and masks) of a manifest, decoded robustly.

    Args:
        manifest: a loaded :class:`Manifest`, or a table with its columns (row_id, path, mask_path).
        transform: PIL RGB image -> ``(3, H, W)`` float tensor; default ``ToTensor()``.
        skip_bad: on a decode failure return a sentinel (dropped and reported by
            :func:`collate_skip_bad`) instead of raising.
        mask_transform: PIL mask image (mode ``L``, 0/255) -> PIL image; default: the geometric
            steps of ``transform`` (see :func:`mask_geometry`).
        max_pixels: decompression-bomb limit, as for :func:`open_image`.

    Items are dicts: ``row_id`` (int), ``image`` ``(3, H, W)`` tensor, ``mask`` ``(H, W)``
    bool tensor or an empty ``(0,)`` tensor when the row has no mask, ``path`` and ``error``
    (``None``, or the failure reason for a sentinel whose ``image`` is ``None``).
    """

    def __init__(
        self,
        manifest: Manifest | pd.DataFrame,
        transform: ImageTransform | None = None,
        *,
        skip_bad: bool = False,
        mask_transform: MaskTransform | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        from torchvision import transforms as T

        df = manifest.df if hasattr(manifest, "df") else manifest  # a Manifest, or its (sub)table
        if "mask_path" not in df.columns:
            df = df.assign(mask_path=None)
        self.manifest = manifest
        self.transform: ImageTransform = transform if transform is not None else T.ToTensor()
        self.skip_bad = bool(skip_bad)
        self.max_pixels = int(max_pixels)
        self._row_ids = df["row_id"].to_numpy(dtype=np.int64)
        self._paths = df["path"].astype(object).tolist()
        self._masks = [None if pd.isna(m) else str(m) for m in df["mask_path"].tolist()]
        self._joint = transform is not None and _is_v2(transform) and mask_transform is None
        self.mask_transform: MaskTransform | None = mask_transform
        if self.mask_transform is None and not self._joint and any(m is not None for m in self._masks):
            self.mask_transform = mask_geometry(self.transform)

    def __len__(self) -> int:
        return len(self._paths)

    def _failure(self, i: int, reason: str) -> dict[str, Any]:
        row_id = int(self._row_ids[i])
        if not self.skip_bad:
            raise ImageDecodeError(
                f"row {row_id + 1} (row_id {row_id}), file '{self._paths[i]}': {reason}; "
                "pass skip_bad=True (CLI: --skip-bad) to record and skip it"
            )
        return {"row_id": row_id, "image": None, "mask": None, "path": self._paths[i], "error": reason}

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self._paths[i]
        try:
            img = open_image(path, max_pixels=self.max_pixels)
        except ImageDecodeError as e:
            return self._failure(i, getattr(e, "reason", str(e)))
        mask_file = self._masks[i]
        mask_img: Image.Image | None = None
        if mask_file is not None:
            try:
                m = load_mask(mask_file, size=(img.height, img.width), max_pixels=self.max_pixels)  # (H, W)
            except ImageDecodeError as e:
                return self._failure(i, f"mask: {getattr(e, 'reason', str(e))}")
            mask_img = Image.fromarray(m.astype(np.uint8) * 255)
        if self._joint and mask_img is not None:
            from torchvision import tv_tensors

            mask_t = tv_tensors.Mask(torch.from_numpy(np.asarray(mask_img) > 127)[None])  # (1, H, W)
            image, mask_out = self.transform(img, mask_t)  # type: ignore[call-arg]
            mask = torch.as_tensor(mask_out)[0].bool()  # (H, W)
        else:
            image = self.transform(img)  # (3, H, W)
            if mask_img is not None:
                assert self.mask_transform is not None
                moved = self.mask_transform(mask_img)
                mask = torch.from_numpy(np.asarray(moved) > 127)  # (H, W)
            else:
                mask = torch.zeros(0, dtype=torch.bool)
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            raise UsageError(
                f"the image transform must return a (3, H, W) tensor, got {type(image).__name__}"
                f"{tuple(image.shape) if isinstance(image, torch.Tensor) else ''}"
            )
        if mask.numel() and tuple(mask.shape) != tuple(image.shape[-2:]):
            raise UsageError(
                f"mask of row {int(self._row_ids[i]) + 1} ({mask_file}) has shape {tuple(mask.shape)} after the "
                f"mask transform, but the image tensor is {tuple(image.shape[-2:])}; pass a matching mask_transform"
            )
        return {"row_id": int(self._row_ids[i]), "image": image, "mask": mask, "path": path, "error": None}


def collate_skip_bad(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate items, dropping failed ones and listing them in ``skipped`` (never silently).

    Returns:
        A batch dict (see the module docstring). When every item failed, ``image`` is
        ``(0, 3, 0, 0)`` and ``skipped`` lists them all.
    """
    good = [it for it in items if it.get("error") is None]
    skipped = [
        {"row": int(it["row_id"]) + 1, "row_id": int(it["row_id"]), "path": str(it["path"]), "reason": str(it["error"])}
        for it in items
        if it.get("error") is not None
    ]
    if not good:
        return {
            "row_id": torch.zeros(0, dtype=torch.int64),
            "image": torch.zeros((0, 3, 0, 0)),
            "mask": torch.zeros((0, 0, 0), dtype=torch.bool),
            "has_mask": torch.zeros(0, dtype=torch.bool),
            "path": [],
            "skipped": skipped,
        }
    shapes = {tuple(it["image"].shape) for it in good}
    if len(shapes) > 1:
        raise UsageError(
            f"images in one batch have different sizes {sorted(shapes)}; use a transform that resizes to a "
            "fixed size (e.g. adapter.preprocess.transform())"
        )
    images = torch.stack([it["image"] for it in good])  # (B, 3, H, W)
    h, w = images.shape[-2:]
    masks = torch.zeros((len(good), h, w), dtype=torch.bool)  # (B, H, W)
    has_mask = torch.zeros(len(good), dtype=torch.bool)
    for j, it in enumerate(good):
        m = it["mask"]
        if m is not None and m.numel():
            masks[j] = m
            has_mask[j] = True
    return {
        "row_id": torch.tensor([int(it["row_id"]) for it in good], dtype=torch.int64),
        "image": images,
        "mask": masks,
        "has_mask": has_mask,
        "path": [str(it["path"]) for it in good],
        "skipped": skipped,
    }


def _worker_init(worker_id: int) -> None:
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: ImageDataset,
    *,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = False,
    seed: int = 0,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` that uses :func:`collate_skip_bad`.

    Args:
        dataset: an :class:`ImageDataset`.
        batch_size: images per batch.
        num_workers: worker processes (0 loads in the main process).
        shuffle: shuffle with a generator seeded by ``seed`` (reproducible order).
        seed: seed for shuffling and the workers' numpy/random state.
        pin_memory: default (and forced when no CUDA device exists): on only with CUDA.
        persistent_workers: default on whenever ``num_workers > 0``.
        prefetch_factor: batches prefetched per worker (only with workers).
        drop_last: drop a last incomplete batch.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise UsageError(f"num_workers must be >= 0, got {num_workers}")
    cuda = torch.cuda.is_available()
    pin = cuda if pin_memory is None else (bool(pin_memory) and cuda)
    persistent = (num_workers > 0) if persistent_workers is None else (bool(persistent_workers) and num_workers > 0)
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["worker_init_fn"] = _worker_init
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = int(prefetch_factor)
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=bool(shuffle),
        num_workers=int(num_workers),
        collate_fn=collate_skip_bad,
        pin_memory=pin,
        persistent_workers=persistent,
        drop_last=bool(drop_last),
        generator=gen,
        **kwargs,
    )
