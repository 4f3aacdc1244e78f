"""ImageDataset / collate_skip_bad / make_loader: decoding, masks, failures reported per batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from audit.data import ImageDataset, collate_skip_bad, load_manifest, make_loader, make_sample_images
from audit.data.images import open_image
from audit.data.schema import SAMPLE_COLUMNS
from audit.errors import ImageDecodeError, UsageError
from audit.models.base import Preprocess


@pytest.fixture()
def sample(tmp_path: Path):
    path = make_sample_images(tmp_path / "s", n=8, seed=0)
    return load_manifest(path, columns=SAMPLE_COLUMNS, check_images="full")


def test_items_and_batches_match_open_image(sample) -> None:
    ds = ImageDataset(sample)
    item = ds[0]
    assert item["row_id"] == 0 and item["error"] is None
    ref = torch.from_numpy(np.array(open_image(sample.df["path"][0]))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(item["image"], ref)  # (3, H, W)
    batches = list(make_loader(ds, batch_size=3))
    assert [b["row_id"].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    b = batches[0]
    assert b["image"].shape == (3, 3, 32, 40) and b["mask"].shape == (3, 32, 40) and b["mask"].dtype == torch.bool
    assert b["has_mask"].all() and b["skipped"] == [] and b["path"][0] == sample.df["path"][0]


def test_mask_follows_preprocess_geometry(sample) -> None:
    pre = Preprocess(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")
    ds = ImageDataset(sample, pre.transform())
    item = ds[0]  # RGB PNG: red shape on a light background
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (16, 16)
    x01 = pre.denormalize(item["image"][None])[0]  # (3, 16, 16)
    red = (x01[0] > 0.6) & (x01[1] < 0.35)  # (16, 16)
    mask = item["mask"]
    inter, union = (red & mask).sum().item(), (red | mask).sum().item()
    assert mask.sum() > 10 and inter / union > 0.7  # the mask sits on the shape after resize+crop


def test_mask_with_random_geometry_needs_mask_transform(sample) -> None:
    with pytest.raises(UsageError, match="RandomHorizontalFlip"):
        ImageDataset(sample, T.Compose([T.RandomHorizontalFlip(), T.ToTensor()]))
    flip = T.Compose([T.RandomHorizontalFlip(p=1.0), T.ToTensor()])
    ds = ImageDataset(sample, flip, mask_transform=lambda m: m.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    plain = ImageDataset(sample)
    torch.testing.assert_close(ds[0]["mask"], plain[0]["mask"].flip(-1))


def test_decode_failure_raises_with_row_and_file(sample) -> None:
    bad = Path(sample.df["path"][2])
    bad.write_bytes(bad.read_bytes()[:100])  # truncated after the manifest was checked
    ds = ImageDataset(sample)
    with pytest.raises(ImageDecodeError) as ei:
        ds[2]
    msg = str(ei.value)
    assert msg.startswith(f"row 3 (row_id 2), file '{bad}': ") and "skip_bad=True" in msg


def test_skip_bad_sentinel_is_dropped_and_reported(sample) -> None:
    bad = Path(sample.df["path"][2])
    bad.write_bytes(b"")
    badmask = Path(sample.df["mask_path"][4])
    badmask.write_bytes(b"garbage")
    ds = ImageDataset(sample, skip_bad=True)
    item = ds[2]
    assert item["image"] is None and "zero bytes" in item["error"]
    batches = list(make_loader(ds, batch_size=4))
    assert batches[0]["row_id"].tolist() == [0, 1, 3] and batches[1]["row_id"].tolist() == [5, 6, 7]
    assert batches[0]["skipped"] == [
        {"row": 3, "row_id": 2, "path": str(bad), "reason": "file is empty (zero bytes)"}
    ]
    (rec,) = batches[1]["skipped"]
    assert rec["row"] == 5 and rec["reason"].startswith("mask: content is not a recognised image format")
    seen = sum(len(b["row_id"]) + len(b["skipped"]) for b in batches)
    assert seen == len(sample)  # nothing dropped silently


def test_collate_all_failed_and_mixed_masks() -> None:
    out = collate_skip_bad([{"row_id": 4, "image": None, "mask": None, "path": "p", "error": "bad"}])
    assert out["image"].shape == (0, 3, 0, 0) and out["row_id"].dtype == torch.int64
    assert out["skipped"] == [{"row": 5, "row_id": 4, "path": "p", "reason": "bad"}]
    items = [
        {"row_id": 0, "image": torch.ones(3, 2, 2), "mask": torch.ones(2, 2, dtype=torch.bool), "path": "a",
         "error": None},
        {"row_id": 1, "image": torch.zeros(3, 2, 2), "mask": torch.zeros(0, dtype=torch.bool), "path": "b",
         "error": None},
    ]
    b = collate_skip_bad(items)
    assert b["has_mask"].tolist() == [True, False] and b["mask"][0].all() and not b["mask"][1].any()
    items[1]["image"] = torch.zeros(3, 3, 3)
    with pytest.raises(UsageError, match="different sizes"):
        collate_skip_bad(items)


def test_loader_with_worker_matches_main_process(sample) -> None:
    pre = Preprocess(size=(16, 16), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    ds = ImageDataset(sample, pre.transform())
    loader = make_loader(ds, batch_size=4, num_workers=1, shuffle=True, seed=3)
    assert loader.persistent_workers and not loader.pin_memory
    got = [(b["row_id"].tolist(), b["image"]) for b in loader]
    ref = [(b["row_id"].tolist(), b["image"]) for b in make_loader(ds, batch_size=4, num_workers=0, shuffle=True,
                                                                    seed=3)]
    assert [g[0] for g in got] == [r[0] for r in ref]
    assert sorted(r for g in got for r in g[0]) == list(range(8))
    for (_, a), (_, b) in zip(got, ref):
        torch.testing.assert_close(a, b)
    with pytest.raises(UsageError, match="batch_size"):
        make_loader(ds, batch_size=0)
