"""``vision-audit zoo ...``: list, rebuild and sample the canary zoo.

Usage::

    vision-audit zoo list
    vision-audit zoo train [--only NAME] [--out DIR] [--steps N] [--threads T]
    vision-audit zoo testset OUT_DIR [--n-per-cell 100] [--seed 1234]

``main`` takes the arguments after ``zoo`` (a leading ``"zoo"`` is ignored) and
returns the exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from audit.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vision-audit zoo", description="The canary zoo: planted-bias models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the canary models, their planted biases and measured figures")
    t = sub.add_parser("train", help="retrain the canary models from scratch (CPU)")
    t.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="train only this canary (repeatable); default: all four")
    t.add_argument("--out", default=None, help="output directory (default: the package's weights folder)")
    t.add_argument("--steps", type=int, default=None,
                   help="override the recipe's number of steps (fresh images every step, so there are no epochs)")
    t.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    s = sub.add_parser("testset", help="write the balanced test set (PNG images, masks, manifest.csv)")
    s.add_argument("out_dir")
    s.add_argument("--n-per-cell", type=int, default=100, help="images per class x background cell")
    s.add_argument("--seed", type=int, default=1234)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run a zoo sub-command; returns the exit code (0 ok, 2 unusable input)."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["zoo"]:
        args_in = args_in[1:]
    try:
        args = _parser().parse_args(args_in)
    except SystemExit as e:  # argparse already printed the problem
        return int(e.code or 0) if e.code in (0, None) else 2
    try:
        return _run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


def _run(args: argparse.Namespace) -> int:
    from audit.zoo import CANARY_NAMES, list_canaries

    if args.cmd == "list":
        for c in list_canaries():
            print(f"zoo:{c['name']}  ({c['family']}) {c['description']}")
            print(f"    planted bias: {c['planted_bias']}")
            print(f"    training: {json.dumps(c['training'])}")
        return 0
    if args.cmd == "testset":
        from audit.zoo.world import write_test_set

        if args.n_per_cell < 1:
            raise UsageError(f"--n-per-cell must be at least 1, got {args.n_per_cell}")
        path = write_test_set(args.out_dir, n_per_cell=args.n_per_cell, seed=args.seed)
        print(f"wrote {path}")
        return 0
    # train
    from audit.zoo.train import WEIGHTS_DIR, train_canary

    names = args.only or list(CANARY_NAMES)
    unknown = [n for n in names if n not in CANARY_NAMES]
    if unknown:
        raise UsageError(f"--only {unknown[0]!r}: unknown canary; known: {', '.join(CANARY_NAMES)}")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    t0 = time.time()
    for n in names:
        print(f"training {n} ...", flush=True)
        train_canary(n, out_dir=args.out or WEIGHTS_DIR, steps=args.steps, threads=args.threads,
                     log=lambda m: print(m, flush=True))
    print(f"trained {len(names)} model(s) in {time.time() - t0:.0f}s", flush=True)
    return 0
