"""The command that starts the Streamlit dashboard (used by ``vision-audit dashboard`` and by
``vision-audit bench dashboard``), with the settings every launch must have."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

#: Streamlit settings the dashboard always runs with (its config.toml is only read when Streamlit is
#: started from dashboards/, so they are passed on the command line).
STREAMLIT_FLAGS = (
    "--server.headless", "true",
    "--browser.gatherUsageStats", "false",
    "--server.maxUploadSize", "1",  # MiB; the only upload is a label-set YAML (the page caps it at 64 KiB)
    "--server.enableXsrfProtection", "true",
    "--client.showErrorDetails", "type",  # no tracebacks with local paths in the browser
    "--client.toolbarMode", "minimal",
)


def streamlit_command(app: Path, *, host: str, port: int, runs: Sequence[Path | str], extra: Sequence[str] = ()) -> list[str]:
    """``streamlit run app`` bound to ``host:port`` with :data:`STREAMLIT_FLAGS`, then ``-- runs``,
    through the source checkout's ``dashboards/launch.py`` (``streamlit run`` with the first page's
    imports done before the first visitor), whichever app it serves."""
    launcher = dashboards_dir() / "launch.py"
    return [sys.executable, str(launcher), "run", str(app), "--server.address", host,
            "--server.port", str(port), *STREAMLIT_FLAGS, *extra, "--", *[str(r) for r in runs]]


def dashboards_dir() -> Path:
    """The installed ``dashboards`` package (it ships in the wheel beside ``audit``), else the source
    checkout's folder."""
    import importlib.util

    from audit.errors import UsageError

    spec = importlib.util.find_spec("dashboards")
    if spec is not None and spec.origin:
        here = Path(spec.origin).resolve().parent
        if (here / "app.py").is_file():
            return here
    here = Path(__file__).resolve().parent.parent / "dashboards"
    if (here / "app.py").is_file():
        return here
    raise UsageError("the dashboard is not installed (no dashboards/app.py): reinstall vision-audit "
                     "(pip install vision-audit, or pip install -e . in a checkout)")


def dashboard_app() -> Path:
    """The Streamlit app file."""
    return dashboards_dir() / "app.py"


def run_forwarding_signals(cmd: Sequence[str]) -> int:
    """Run the server as a child; SIGTERM / SIGINT / SIGHUP to this process are passed on to it and
    this process waits for it, so stopping ``vision-audit dashboard`` never leaves Streamlit serving."""
    import signal
    import subprocess

    child = subprocess.Popen(list(cmd))
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def forward(signum: int, frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in forwarded}
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # SIGINT raised here before the handler ran: pass it on, keep waiting
                forward(signal.SIGINT, None)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if child.poll() is None:  # an error in this process: never leave the server behind
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
