"""``vision-audit bench pipeline``: the forward path against baselines measured in this process.

1. **Streaming throughput**: embedding extraction from JPEG files on disk through the
   pipeline's forward stage (:func:`audit.pipeline.forward_shards`: DataLoader workers
   decode ahead, shards written atomically) ÷ a plain loop over the same images already
   decoded into one in-memory tensor, same model and batch size. Goal ≥ 0.9.
2. **Local vs Ray**: the same forward stage with ``backend: ray`` on a local Ray with 2 CPUs
   (actor start-up and model loading included; Ray's own start-up excluded) ÷ local.
3. **Peak memory**: a whole run (forward, tables, group performance; explanations and
   embedding statistics off) on N_large vs N_small generated JPEGs, each in a fresh
   subprocess that reports its peak RSS (``VmHWM``; DataLoader workers reported apart).
   Goal: large ÷ small ≤ 1.2.

Each timing is the median of ``--repeats`` runs, alternating the contenders.

Example:
    vision-audit bench pipeline --images 256 --repeats 3 --rss-sizes 2000,20000
    vision-audit bench pipeline --model tiny-64 --images 512 --skip ray,rss
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = ["a", "b", "c"]
#: the timed models (``--model``): name -> (timm spec, options, JPEG side in px)
BENCH_MODELS: dict[str, tuple[str, dict[str, Any], int]] = {
    # a real audit's model: ViT-S/16 at 224 px (random weights: speed does not depend on them),
    # from 256-px JPEGs resized and centre-cropped as timm's eval preprocessing does
    "vit-s16-224": ("timm:vit_small_patch16_224", {"pretrained": False, "num_classes": 3}, 256),
    # a stress case for the data path: a small ViT (64 px, 192 wide, 6 blocks) on 64-px JPEGs,
    # where decoding costs about a tenth of the model's time
    "tiny-64": ("timm:vit_tiny_patch16_224", {"pretrained": False, "img_size": 64, "patch_size": 8, "embed_dim": 192,
                                              "depth": 6, "num_heads": 3, "num_classes": 3}, 64),
}
#: the memory benchmark's model (memory growth, not compute, is measured)
RSS_MODEL: dict[str, Any] = {"pretrained": False, "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
                             "num_heads": 2, "num_classes": 3}


def make_jpegs(root: Path, n: int, *, size: int, seed: int = 0) -> Path:
    """``n`` random-texture JPEGs (``size``x``size``) and a CSV manifest under ``root``; returns the CSV.

    Existing files are reused, so the small memory run reads a prefix of the large set.
    """
    from PIL import Image

    img = root / "img"
    img.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = ["path,label,group"]
    base = rng.integers(0, 256, size=(size // 4, size // 4, 3), dtype=np.uint8)
    for i in range(n):
        p = img / f"{i:06d}.jpg"
        if not p.exists():
            arr = np.roll(base, i % (size // 4), axis=0) ^ np.uint8(i % 251)
            Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR).save(p, quality=90)
        lines.append(f"img/{p.name},{CLASSES[i % 3]},{'xy'[i % 2]}")
    csv = root / f"manifest_{n}.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def _config(manifest: Path, out: Path, model: dict[str, Any], *, spec: str = "timm:vit_tiny_patch16_224", **run: Any):
    from audit.config import parse_config

    return parse_config({
        "model": {"spec": spec, "class_names": CLASSES, "options": model},
        "data": {"manifest": str(manifest), "columns": {"groups": ["group"]}},
        "explain": {"methods": [], "faithfulness": False, "sanity": False},
        "stats": {"n_boot": 50, "n_perm": 50, "embeddings": False, "intersections": False},
        "run": {"output": str(out), "overwrite": True, **run},
    })


def _forward_once(config: Any, df: Any, adapter: Any, classifier: Any, out: Path) -> float:
    """Seconds for the pipeline's forward stage over ``df`` into a fresh run directory."""
    import shutil

    from audit.pipeline import config_fingerprint, forward_shards
    from audit.runs import Run

    shutil.rmtree(out, ignore_errors=True)
    run = Run.create(out, meta={"config_fingerprint": config_fingerprint(config)})
    t0 = time.perf_counter()
    forward_shards(config, df=df, run=run, adapter=adapter, classifier=classifier, device="cpu")
    return time.perf_counter() - t0


def bench_throughput(work: Path, *, n: int, batch_size: int, workers: int, repeats: int, ray: bool,
                     model: str = "vit-s16-224") -> dict[str, Any]:
    import torch

    from audit.data import ImageDataset, load_manifest
    from audit.pipeline import forward_batch, forward_frame, load_classifier

    spec, options, side = BENCH_MODELS[model]
    manifest = make_jpegs(work / f"jpeg{side}", n, size=side)
    cfg = _config(manifest, work / "out", options, spec=spec, batch_size=batch_size, num_workers=workers,
                  shard_size=256)
    df = load_manifest(manifest, columns={"groups": ["group"]}).df
    torch.manual_seed(0)
    adapter, classifier = load_classifier(cfg, CLASSES)
    ds = ImageDataset(forward_frame(df), adapter.preprocess.transform())
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])  # (N, 3, H, W), decoded once, untimed
    ids = list(range(n))

    def in_memory() -> float:
        t0 = time.perf_counter()
        for s in range(0, n, batch_size):
            forward_batch(classifier, adapter, x[s : s + batch_size], ids[s : s + batch_size])
        return time.perf_counter() - t0

    in_memory()  # warm-up (allocator, kernels)
    t_mem, t_disk, t_ray = [], [], []
    ray_error = None
    for _ in range(repeats):
        t_mem.append(in_memory())
        t_disk.append(_forward_once(cfg, df, adapter, classifier, work / "out"))
    result = {"n": n, "batch_size": batch_size, "workers": workers, "model": model, "spec": spec, "options": options,
              "jpeg_px": side,
              "in_memory_ips": n / statistics.median(t_mem), "disk_ips": n / statistics.median(t_disk)}
    if ray:
        try:
            from audit.scale import ray_session

            rcfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"backend": "ray"})})
            with ray_session(None, num_cpus=2):
                for _ in range(repeats):
                    t_ray.append(_forward_once(rcfg, df, adapter, classifier, work / "out_ray"))
            result["ray_ips"] = n / statistics.median(t_ray)
        except Exception as exc:  # noqa: BLE001 - reported in the table, never hidden
            ray_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    result["ray_error"] = ray_error
    return result


def _rss_child(manifest: str, out: str, workers: int) -> None:
    """Run in a fresh interpreter: one whole run, then print peak RSS figures as JSON."""
    import resource

    from audit.pipeline import run_audit

    cfg = _config(Path(manifest), Path(out), RSS_MODEL, batch_size=64, num_workers=workers, shard_size=512)
    t0 = time.perf_counter()
    run = run_audit(cfg)
    secs = time.perf_counter() - t0
    hwm = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])  # kB
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB, the largest worker
    print(json.dumps({"n_used": run.meta["dataset"]["n_used"], "vmhwm_mb": hwm / 1024,
                      "max_child_mb": children / 1024, "seconds": secs}))


def bench_rss(work: Path, sizes: Sequence[int], *, workers: int) -> list[dict[str, Any]]:
    big = max(sizes)
    make_jpegs(work / "jpeg32", big, size=32)
    rows = []
    for n in sizes:
        manifest = make_jpegs(work / "jpeg32", n, size=32)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        code = ("import sys; from audit.bench.pipeline import _rss_child; "
                "_rss_child(sys.argv[1], sys.argv[2], int(sys.argv[3]))")
        r = subprocess.run([sys.executable, "-c", code, str(manifest), str(work / f"rss_{n}"), str(workers)],
                           capture_output=True, text=True, env=env, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"memory benchmark at {n} images failed:\n{r.stderr[-2000:]}")
        rows.append({"n": n, **json.loads(r.stdout.strip().splitlines()[-1])})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vision-audit bench pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256, help="JPEGs for the throughput benchmarks")
    p.add_argument("--model", choices=sorted(BENCH_MODELS), default="vit-s16-224",
                   help="timed model: vit-s16-224 (a real audit's model, 256-px JPEGs) or tiny-64 (data-path "
                        "stress case, 64-px JPEGs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the pipeline")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rss-sizes", default="2000,20000", help="image counts for the peak-memory runs")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: throughput, ray, rss")
    p.add_argument("--workdir", type=Path, help="where to write images and runs (default: a temp dir)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    a = p.parse_args(list(argv) if argv is not None else None)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    tmp = None
    if a.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="va-bench-pipeline-")
        work = Path(tmp.name)
    else:
        work = a.workdir
        work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"cpus": os.cpu_count()}
    lines = [("benchmark", "figure", "goal", "met")]
    try:
        if "throughput" not in skip:
            t = bench_throughput(work, n=a.images, batch_size=a.batch_size, workers=a.workers, repeats=a.repeats,
                                 ray="ray" not in skip, model=a.model)
            figures["throughput"] = t
            ratio = t["disk_ips"] / t["in_memory_ips"]
            lines.append((f"JPEG on disk -> embeddings ({a.workers} workers) / in-memory loop",
                          f"{ratio:.2f} ({t['disk_ips']:.0f} vs {t['in_memory_ips']:.0f} img/s)", ">= 0.90",
                          "yes" if ratio >= 0.9 else "no"))
            if "ray" not in skip:
                if t.get("ray_ips"):
                    r = t["ray_ips"] / t["disk_ips"]
                    lines.append(("Ray backend (2 CPUs) / local backend", f"{r:.2f} ({t['ray_ips']:.0f} img/s)",
                                  "reported", "-"))
                else:
                    lines.append(("Ray backend (2 CPUs) / local backend", f"failed: {t['ray_error']}", "reported", "-"))
        if "rss" not in skip:
            sizes = [int(s) for s in a.rss_sizes.split(",")]
            rows = bench_rss(work, sizes, workers=a.workers)
            figures["rss"] = rows
            for row in rows:
                lines.append((f"peak RSS, {row['n']} images (whole run, explain off)",
                              f"{row['vmhwm_mb']:.0f} MB (largest worker {row['max_child_mb']:.0f} MB, "
                              f"{row['seconds']:.0f} s)", "", ""))
            ratio = rows[-1]["vmhwm_mb"] / rows[0]["vmhwm_mb"]
            lines.append((f"peak RSS {rows[-1]['n']} / {rows[0]['n']} images", f"{ratio:.3f}", "<= 1.20",
                          "yes" if ratio <= 1.2 else "no"))
    finally:
        if tmp is not None:
            tmp.cleanup()
    widths = [max(len(str(r[i])) for r in lines) for i in range(4)]
    for k, r in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    if "throughput" not in skip:
        spec, _, side = BENCH_MODELS[a.model]
        print(f"(median of {a.repeats} repeats; {os.cpu_count()} CPUs; timed model: {a.model} = {spec}, "
              f"{side}-px JPEGs)")
    if "rss" not in skip:
        print("(peak RSS: a whole run of a 2-block ViT on 32-px JPEGs in a fresh process per size)")
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
