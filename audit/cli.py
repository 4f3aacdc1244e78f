"""The ``vision-audit`` command. A thin view over the library.

Exit codes: 0 ok, 1 the audit failed (or a policy check failed), 2 unusable input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from audit.dashboard_command import streamlit_command
from audit.errors import AuditError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _eprint(msg: str) -> None:
    print(msg, file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 already; keep its message short and ours
        self.print_usage(sys.stderr)
        _eprint(f"vision-audit: error: {message}")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vision-audit", description="Interpretability and bias audits for ViT and CLIP models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("models", help="list model families and example specs")

    r = sub.add_parser("run", help="run an audit from a YAML config (docs/audit.example.yaml; --schema: every key)")
    r.add_argument("config", type=Path, nargs="?")
    r.add_argument("--schema", action="store_true", help="print the config's JSON schema (every key, type, default)")
    r.add_argument("--output", type=Path, help="override run.output")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run from its last complete shard")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    r.add_argument("--device", choices=["cpu", "cuda", "auto"])
    r.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    r.add_argument("--backend", choices=["local", "ray"])
    r.add_argument("--ray-address", help="address of an existing Ray cluster (default: start a local one)")
    r.add_argument("--skip-bad", action="store_true", help="record and skip unreadable images instead of failing")
    r.add_argument("--report", action="store_true", help="also write the report when the run completes")

    e = sub.add_parser("explain", help="explain images with one or more methods; writes a PNG grid")
    e.add_argument("images", nargs="*", type=Path, help="image files (required unless --list-methods)")
    e.add_argument("--model", help="model spec, e.g. timm:vit_base_patch16_224 or zoo:vit-biased "
                                   "(required unless --list-methods)")
    e.add_argument("--list-methods", action="store_true",
                   help="list every explanation method with its metadata (target-free, needs attention, gradient)")
    e.set_defaults(explain_usage_error=e.error)
    e.add_argument("--checkpoint", type=Path)
    pe = e.add_argument_group("model loading and preprocessing (as model.* in a run config; default: the "
                              "checkpoint's own record, else the family's config for the architecture)")
    pe.add_argument("--input-size", metavar="N|H,W", help="size fed to the model (model.preprocess.input_size)")
    crop = pe.add_mutually_exclusive_group()
    crop.add_argument("--resize", type=int, metavar="N", help="shorter side before the centre crop")
    crop.add_argument("--crop-pct", type=float, metavar="F", help="input_size / resize, e.g. 0.875; 1 = no crop")
    pe.add_argument("--resize-mode", choices=["shortest", "squash"])
    pe.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest", "lanczos"])
    pe.add_argument("--mean", metavar="R,G,B", help="normalisation mean, e.g. 0.5,0.5,0.5")
    pe.add_argument("--std", metavar="R,G,B", help="normalisation std, e.g. 0.5,0.5,0.5")
    pe.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="adapter option (model.options), VALUE read as YAML, e.g. dynamic_img_size=true; repeatable")
    pe.add_argument("--class-names", metavar="A,B,C", help="class names of the classifier head (model.class_names)")
    pe.add_argument("--num-classes", type=int, metavar="N", help="classes of the checkpoint's head (timm num_classes)")
    e.add_argument("--method", default="rollout", help="comma-separated methods (vision-audit explain --list-methods)")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--target", help="class name or index to explain (default: the predicted class)")
    g.add_argument("--prompt", help="CLIP: explain the similarity to this text")
    e.add_argument("--out", type=Path, default=Path("explain.png"))
    e.add_argument("--steps", type=int, default=16, help="deletion-curve steps for the AUC in each title")
    e.add_argument("--baseline", choices=["blur", "black"], default="blur",
                   help="what deleted patches become for the deletion AUC (default blur, as explain.baseline "
                        "in a run config); named in every title")
    e.add_argument("--smooth", action="store_true",
                   help="draw maps bilinearly smoothed (default: the patch grid as it is, one block per patch)")
    e.add_argument("--device", default="cpu")

    d = sub.add_parser("demo", help="audit the canary models on the synthetic test set (the main job)")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--n-per-cell", type=int, default=None, help="test images per class x group cell")
    d.add_argument("--no-report", action="store_true")

    rp = sub.add_parser("report", help="write HTML/Markdown/PDF reports and audit.json for a run (two runs: compare)")
    rp.add_argument("runs", nargs="+", type=Path)
    rp.add_argument("--out", type=Path)
    rp.add_argument("--model-card", action="store_true", help="also write a Hugging Face model card section")
    rp.add_argument("--formats", default="html,md,pdf,json")

    fd = sub.add_parser("findings", help="print a run's ranked findings ledger (what every report leads with)")
    fd.add_argument("run", type=Path)
    fd.add_argument("-n", type=int, default=None, help="how many findings (default: the headline's 5; 0 = all)")
    fd.add_argument("--format", choices=["text", "csv", "json"], default="text")

    c = sub.add_parser("check", help="gate a run on a policy: exit 0 pass, 1 fail, 2 unusable input")
    c.add_argument("run", type=Path)
    c.add_argument("--policy", required=True, type=Path)
    c.add_argument("--json", action="store_true",
                   help="print the verdict as JSON (every rule row: outcome, values, interval, n, adjusted p, finding)")

    db = sub.add_parser("dashboard", help="open the Streamlit dashboard on runs (default: the demo run)")
    db.add_argument("runs", nargs="*", type=Path)
    db.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    db.add_argument("--port", type=int, default=8501)
    db.add_argument("--policy", type=Path)

    z = sub.add_parser("zoo", help="the canary zoo: list, train, write the test set")
    z.add_argument("args", nargs=argparse.REMAINDER)

    b = sub.add_parser("bench", help="benchmarks that print ratios against a baseline in the same process")
    b.add_argument("name", choices=["explain", "stats", "pipeline", "dashboard"])
    b.add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(_dispatch(args) or 0)
    except AuditError as exc:
        _eprint(f"vision-audit: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _eprint("vision-audit: interrupted")
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "models":
        return _cmd_models()
    if cmd == "run":
        return _cmd_run(args)
    if cmd == "explain":
        from audit.explain_cli import explain_images, model_args_from_cli, print_methods

        if args.list_methods:
            return print_methods()
        missing = [n for n, v in (("images", args.images), ("--model", args.model)) if not v]
        if missing:
            args.explain_usage_error(f"the following arguments are required: {', '.join(missing)}")
        return explain_images(
            args.images, model=args.model, checkpoint=args.checkpoint, methods=args.method.split(","),
            target=args.target, prompt=args.prompt, out=args.out, steps=args.steps, device=args.device,
            baseline=args.baseline, smooth=args.smooth, **model_args_from_cli(args),
        )
    if cmd == "demo":
        from audit.demo import run_demo

        return run_demo(out=args.out, n_per_cell=args.n_per_cell, report=not args.no_report)
    if cmd == "report":
        return _cmd_report(args)
    if cmd == "findings":
        return _cmd_findings(args)
    if cmd == "check":
        return _cmd_check(args)
    if cmd == "dashboard":
        return _cmd_dashboard(args)
    if cmd == "zoo":
        from audit.zoo.cli import main as zoo_main

        return zoo_main(args.args)
    if cmd == "bench":
        from audit.bench import run as bench_run

        return bench_run(args.name, args.args)
    raise AssertionError(cmd)  # pragma: no cover


def _cmd_check(args: argparse.Namespace) -> int:
    """``vision-audit check RUN --policy P [--json]``: 0 pass, 1 fail, 2 unusable input."""
    from audit.report.policy import check

    return check(args.run, args.policy, as_json=args.json)


def _cmd_models() -> int:
    """Every registered family: description, kind, example specs, local weights, applicable methods."""
    from audit.explain.api import list_methods
    from audit.models import list_families

    pad = f"{'':<10}   "
    for fam in list_families():
        print(f"{fam['family']:<10} {fam['description']}")
        attention = "exposes attention" if fam.get("attention") else "no attention capture"
        print(f"{pad}kind: {fam.get('kind')}; {attention}")
        for ex in fam.get("examples", []):
            print(f"{pad}{ex}")
        if fam.get("checkpoint_help"):
            print(f"{pad}local weights: {fam['checkpoint_help']}")
        groups = fam.get("groups") or []
        if not groups:
            print(f"{pad}methods: {', '.join(list_methods(family=fam['family']))}")
        for g in groups:
            methods = list_methods(family=fam["family"], attention_maps=g["attention_maps"])
            note = "" if g["attention_maps"] else " (no attention maps: rollout, gae, attention do not apply)"
            print(f"{pad}{fam['family']} {g['name']}: {', '.join(methods)}{note}")
    print("\nA local checkpoint: add --checkpoint PATH (a .safetensors file; for hf: a saved model directory).")
    print("Methods and what they need: vision-audit explain --list-methods")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    import json

    from audit.config import config_schema, load_config
    from audit.errors import UsageError
    from audit.pipeline import run_audit
    from audit.progress import ProgressBar

    if args.schema:
        print(json.dumps(config_schema(), indent=1))
        return EXIT_OK
    if args.config is None:
        raise UsageError("give the audit config: vision-audit run audit.yaml (an annotated example: "
                         "docs/audit.example.yaml; every key: vision-audit run --schema)")

    overrides: dict = {"run": {}, "data": {}}
    for key in ("resume", "overwrite"):
        if getattr(args, key):
            overrides["run"][key] = True
    for key, dest in (("device", "device"), ("precision", "precision"), ("backend", "backend"), ("ray_address", "ray_address")):
        if getattr(args, key):
            overrides["run"][dest] = getattr(args, key)
    if args.output:
        overrides["run"]["output"] = str(args.output.resolve())
    if args.skip_bad:
        overrides["data"]["skip_bad"] = True
    cfg = load_config(args.config, overrides=overrides)
    with ProgressBar() as bar:
        run = run_audit(cfg, progress=bar.update, log=bar.write)
    print(f"run written to {run.path}")
    if (run.meta.get("model") or {}).get("probe"):
        from audit.report.summary import probe_text

        print("probe head: " + probe_text(run.meta["model"]["probe"]))
    from audit.findings import format_findings

    print(format_findings(run.findings(), name=run.name))
    if args.report:
        from audit.report import write_report

        paths = write_report([run.path])
        print("report: " + ", ".join(str(p) for p in paths.values()))
    return EXIT_OK


def _cmd_findings(args: argparse.Namespace) -> int:
    from audit.findings import DEFAULT_HEADLINE, format_findings
    from audit.runs import Run

    run = Run.open(args.run)
    ledger = run.findings()
    n = DEFAULT_HEADLINE if args.n is None else (len(ledger) if args.n == 0 else args.n)
    if args.format == "text":
        print(format_findings(ledger, name=run.name, n=n))
    elif args.format == "csv":
        ledger.head(n).to_csv(sys.stdout, index=False)
    else:
        print(ledger.head(n).to_json(orient="records", indent=1))
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from audit.report import write_report

    if len(args.runs) > 2:
        raise AuditError("report takes one run, or two runs to compare")
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    paths = write_report(list(args.runs), out_dir=args.out, formats=formats, model_card=args.model_card)
    for kind, p in paths.items():
        print(f"{kind:<10} {p}")
    return EXIT_OK


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from audit.dashboard_command import dashboard_app, run_forwarding_signals
    from audit.errors import UsageError
    from audit.runs import find_runs

    if args.runs:
        runs, problems = find_runs(args.runs)  # a folder of runs (runs/demo) opens every run in it
        if problems:
            raise UsageError("; ".join(problems) + " (give run directories, or a folder that holds them)")
    else:
        from audit.demo import ensure_demo

        runs = ensure_demo()
    cmd = streamlit_command(dashboard_app(), host=args.host, port=args.port, runs=runs)
    if args.policy:
        cmd += ["--policy", str(args.policy.resolve())]
    print(f"dashboard on http://{args.host}:{args.port} with {len(runs)} run(s)  (Ctrl+C to stop)")
    return run_forwarding_signals(cmd)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
