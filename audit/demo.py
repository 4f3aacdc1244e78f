"""``vision-audit demo``: the main job. Audits the four canaries on the synthetic test set.

Writes ``runs/demo/data/`` (the balanced test set as a normal manifest with images on
disk), one run per canary under ``runs/demo/<name>/`` with its report, and prints the
headline findings. The planted biases are the known answers; the controls should come
out clean.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

CANARIES = ("vit-biased", "vit-control", "clip-biased", "clip-control")
#: images per class x background cell of the demo test set (4 classes x 3 grounds -> 1,200 images)
DEFAULT_N_PER_CELL = 100


def demo_config(name: str, manifest: Path, out: Path) -> dict[str, Any]:
    """The audit config of one canary on the demo test set (a plain dict, as from YAML)."""
    from audit.zoo.world import DEFAULT_SPEC as W

    cfg: dict[str, Any] = {
        "model": {"spec": f"zoo:{name}", "name": name},
        "data": {
            "manifest": str(manifest),
            "columns": {"image": "path", "label": "label", "groups": ["background", "colour"], "mask": "mask_path"},
        },
        "explain": {
            "methods": ["rollout", "gae", "gradcam", "ig"],
            "max_images": 48,
            "params": {"ig": {"n_steps": 16, "internal_batch_size": 64}},
            "faithfulness_steps": 16,
            # a blurred flat shape is still an obvious shape: deleting to black is the informative test here
            "baseline": "black",
            "sanity_images": 6,
        },
        "stats": {"n_boot": 1000, "n_perm": 1000, "seed": 0},
        "run": {"output": str(out / name), "overwrite": True, "batch_size": 64},
        # where in the model the findings are carried: heads against random heads (audit/components/)
        "components": {"enabled": True},
    }
    if name.startswith("vit"):  # a classifier has no text tower: the zoo CLIP names its error slices in words
        cfg["slices"] = {"embedder": {"spec": "zoo:clip-control"}}
    if name.startswith("clip"):
        cfg["model"]["class_prompts"] = {c: [f"a photo of a {c}"] for c in W.classes}
        other = next(g for g in W.groups if g != W.concept_group)
        cfg["clip"] = {
            "label_set": str(Path(__file__).resolve().parent / "zoo" / "data" / "canary_labels.yaml"),
            "association": [
                {
                    "name": "concept words vs neutral words",
                    "attribute": "background",
                    "x_group": W.concept_group,
                    "y_group": other,
                    "a_texts": [f"a photo of something {w}" for w in W.concept_words],
                    "b_texts": [f"a photo of something {w}" for w in W.neutral_words],
                }
            ],
            "queries": [f"a photo of something {w}" for w in W.concept_words],
            "ks": [50, 100, 200],
            "skew_target": "dataset",
        }
    return cfg


def run_demo(*, out: Path = Path("runs/demo"), n_per_cell: int | None = None, report: bool = True,
             names: tuple[str, ...] = CANARIES) -> int:
    """Run the demo; returns the exit code."""
    from audit.config import parse_config
    from audit.pipeline import run_audit
    from audit.progress import ProgressBar
    from audit.zoo.world import write_test_set

    t0 = time.perf_counter()
    out = Path(out).resolve()
    data = out / "data"
    manifest = data / "manifest.csv"
    n = n_per_cell or DEFAULT_N_PER_CELL
    if not manifest.is_file() or _stamp(data) != str(n):
        print(f"writing the canary test set ({n} images per class x background cell) to {data}", file=sys.stderr)
        manifest = write_test_set(data, n_per_cell=n)
        (data / ".n_per_cell").write_text(str(n))
    blocks: list[str] = []
    for name in names:
        print(f"auditing zoo:{name} ...", file=sys.stderr)
        cfg = parse_config(demo_config(name, manifest, out), source=f"demo config {name}")
        with ProgressBar() as bar:
            run = run_audit(cfg, progress=bar.update, log=bar.write)
        from audit.findings import format_findings

        ledger = run.findings()
        block = format_findings(ledger, name=run.name)
        carried = ledger[ledger["kind"] == "component"]
        if len(carried):  # where in the model: the smallest head set that beats random heads, per finding
            first = carried.assign(k=carried["worst_group"].str.count(",") + 1).sort_values("k")
            first = first.drop_duplicates("scope")
            block += "".join(f"\n  where (finding {r}): {t}" for t, r in zip(first["text"], first["rank"]))
        elif run.has_table("ablations"):
            block += ("\n  where: no set of heads carries a decomposed finding beyond random heads of the same layers "
                      "(tables components, ablations)")
        blocks.append(block)
        if report:
            from audit.report import write_report

            write_report([run.path], formats=("html", "md", "pdf", "json"), model_card=True)
    if report and {"vit-biased", "vit-control"} <= set(names):
        from audit.report import write_report

        write_report([out / "vit-control", out / "vit-biased"], out_dir=out / "compare-vit",
                     formats=("html", "md", "pdf", "json"))
    print("\nFindings (ranked; the full ledger is each run's findings table)")
    for block in blocks:
        print(block)
    print(f"\nruns in {out} ({time.perf_counter() - t0:.0f} s)")
    if report:
        print(f"reports: {out}/<model>/report/report.html (comparison: {out}/compare-vit/comparison.html)")
    print("open the dashboard: .venv/bin/vision-audit dashboard")
    return 0


def _stamp(data: Path) -> str | None:
    p = data / ".n_per_cell"
    return p.read_text().strip() if p.is_file() else None


def ensure_demo(out: Path = Path("runs/demo")) -> list[Path]:
    """The demo runs, building them first when missing (for the dashboard with no arguments)."""
    from audit.runs import Run

    out = Path(out).resolve()
    runs = [out / n for n in CANARIES]
    missing = []
    for r in runs:
        try:
            Run.open(r)
        except Exception:  # noqa: BLE001 - any unreadable run is rebuilt
            missing.append(r)
    if missing:
        print("the demo runs are missing; building them first (about 3 minutes) ...", file=sys.stderr)
        run_demo(out=out)
    return runs
