"""Start the dashboard's Streamlit server with the heavy imports done before the first visitor.

``python dashboards/launch.py run dashboards/app.py [streamlit flags] -- RUN_DIR ...`` is
``streamlit run ...`` in a process that has already imported pandas, pyarrow, PIL and the
dashboard's own modules. Streamlit runs page scripts in the server process, so the first page
no longer pays those imports (about a second on a 2-core machine, more under load).
``vision-audit dashboard`` and ``vision-audit bench dashboard`` start the server this way.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def warm_imports() -> None:
    """Import what the first page needs (importing twice is free: the modules stay loaded)."""
    here = Path(__file__).resolve().parent
    root = str(here.parent)
    # run as a script, Python put dashboards/ first on sys.path; the package root replaces it
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    if root not in sys.path:
        sys.path.insert(0, root)
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    from PIL import Image, PngImagePlugin  # noqa: F401
    from streamlit.runtime.caching import cache_data_api, cache_resource_api

    import audit.runs  # noqa: F401

    # the dashboard modules define cached functions at import time, before the server exists; Streamlit
    # warns "No runtime found" for each (the caches are created at the first call, inside the runtime)
    loggers = [cache_data_api._LOGGER, cache_resource_api._LOGGER]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        import dashboards.cache
        import dashboards.render
        import dashboards.state
        import dashboards.ui  # noqa: F401
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def main() -> None:
    warm_imports()
    from streamlit.web import cli

    sys.argv = ["streamlit", *sys.argv[1:]]
    cli.main(prog_name="streamlit")


if __name__ == "__main__":
    main()
