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
    launcher = Path(__file__).resolve().parent.parent / "dashboards" / "launch.py"
    return [sys.executable, str(launcher), "run", str(app), "--server.address", host,
            "--server.port", str(port), *STREAMLIT_FLAGS, *extra, "--", *[str(r) for r in runs]]
