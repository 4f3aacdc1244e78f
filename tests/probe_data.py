"""Small labelled image sets for the probe tests: class-coloured noise images, a group column."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PROBE_CLASSES = ["red", "green", "blue"]


def make_probe_manifest(root: Path, n: int, *, seed: int, name: str = "manifest.csv", size: int = 32) -> Path:
    """``n`` images under ``root/<stem>/``: a noisy tint of the label's colour (strength varies by
    row), group ``a``/``b``; CSV columns path, label, group."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    stem = Path(name).stem
    (root / stem).mkdir(parents=True, exist_ok=True)
    lines = ["path,label,group"]
    for i in range(n):
        c = int(rng.integers(0, 3))
        arr = rng.normal(128, 60, size=(size, size, 3))
        arr[..., c] += rng.uniform(0, 90)
        p = root / stem / f"im{i:04d}.png"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p)
        lines.append(f"{stem}/{p.name},{PROBE_CLASSES[c]},{'ab'[int(rng.integers(0, 2))]}")
    csv = root / name
    csv.write_text("\n".join(lines) + "\n")
    return csv
