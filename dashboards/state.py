"""Which runs the dashboard shows, fixed when the server starts.

Runs come from the script arguments (``streamlit run dashboards/app.py -- RUN_DIR ... [--policy P]``),
else from the environment (``VISION_AUDIT_RUNS``: paths joined with ``os.pathsep``;
``VISION_AUDIT_POLICY``), else the demo run under ``runs/demo``. A directory that holds run
directories (such as ``runs/demo``) stands for all of them. Pages choose only among these runs, by
position; no page reads a path from the URL.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from audit.runs import find_runs

APP_FILE = Path(__file__).resolve().parent / "app.py"
REPO_ROOT = APP_FILE.parent.parent
DEMO_DIRS = (Path("runs/demo"), REPO_ROOT / "runs" / "demo")


@dataclass(frozen=True)
class Startup:
    """Runs and policy given at start. ``problems`` holds one message per unusable argument."""

    runs: tuple[str, ...]
    policy: str | None
    source: str  # "arguments" | "environment" | "demo"
    problems: tuple[str, ...] = field(default=())


def expand_run_dirs(paths: list[Path]) -> tuple[list[str], list[str]]:
    """Resolve run directories (:func:`audit.runs.find_runs`): a directory without run.json stands for
    its run subdirectories. Returns ``(runs, problems)`` with the runs as strings."""
    runs, problems = find_runs(paths)
    return [str(r) for r in runs], problems


def _script_args(argv: list[str]) -> list[str] | None:
    """Arguments after ``--`` of ``streamlit run app.py -- ...``; None when not started that way.

    Streamlit sets ``sys.argv = [app.py, *args]``; under a test runner ``sys.argv`` belongs to the
    runner and is ignored.
    """
    if not argv:
        return None
    try:
        if Path(argv[0]).resolve() != APP_FILE:
            return None
    except OSError:
        return None
    return list(argv[1:])


def parse_startup(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Startup:
    """Read the runs and policy from script arguments, the environment, or the demo default."""
    argv = sys.argv if argv is None else argv
    environ = dict(os.environ) if environ is None else environ
    args = _script_args(argv)
    policy: str | None = None
    paths: list[Path] = []
    source = "demo"
    if args:
        parser = argparse.ArgumentParser(prog="dashboards/app.py", add_help=False)
        parser.add_argument("runs", nargs="*", type=Path)
        parser.add_argument("--policy", type=Path)
        ns, _unknown = parser.parse_known_args(args)
        paths = list(ns.runs)
        policy = str(ns.policy.resolve()) if ns.policy else None
        source = "arguments"
    if not paths and environ.get("VISION_AUDIT_RUNS"):
        paths = [Path(x) for x in environ["VISION_AUDIT_RUNS"].split(os.pathsep) if x.strip()]
        source = "environment"
    if policy is None and environ.get("VISION_AUDIT_POLICY"):
        policy = str(Path(environ["VISION_AUDIT_POLICY"]).resolve())
    if not paths:
        source = "demo"
        paths = [d for d in DEMO_DIRS if d.is_dir()][:1]
    runs, problems = expand_run_dirs(paths)
    return Startup(runs=tuple(runs), policy=policy, source=source, problems=tuple(problems))


def startup() -> Startup:
    """The startup configuration (cheap: a few stat calls; read on every rerun so that tests
    which start several apps in one process each see their own environment)."""
    return parse_startup()


def run_label(path: str) -> str:
    """Short label of a run for selectors: its directory name and parent."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def selected_run() -> str | None:
    """Path of the run chosen in the sidebar (always one of the runs given at start)."""
    runs = startup().runs
    if not runs:
        return None
    idx = st.session_state.get("run_idx", 0)
    if not isinstance(idx, int) or not 0 <= idx < len(runs):
        idx = 0
    return runs[idx]
