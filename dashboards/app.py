"""vision-audit dashboard: ``streamlit run dashboards/app.py -- RUN_DIR ... [--policy POLICY]``.

Runs come from the arguments after ``--``, else ``VISION_AUDIT_RUNS`` (paths joined with
``os.pathsep``), else the demo run under ``runs/demo`` (``vision-audit dashboard`` builds it if it is
missing). Bind to 127.0.0.1 unless you mean to share the results (``vision-audit dashboard --host``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st

from dashboards import state
from dashboards.ui import esc

st.set_page_config(page_title="vision-audit", layout="wide")

PAGES_DIR = Path(__file__).resolve().parent / "pages"


def page_entries() -> list[tuple[int, str, str]]:
    """``(order, title, "pages/<file>.py")`` of every page in dashboards/pages/, in navigation order.

    A page says where it goes with two module-level constants, ``NAV_ORDER`` (an int; the lowest is
    the default page) and ``NAV_TITLE``; they are read from its source without running it. A page
    without them comes last, titled after its file name.
    """
    out = []
    for path in sorted(PAGES_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        found = {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                    and node.targets[0].id in ("NAV_ORDER", "NAV_TITLE"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
        title = str(found.get("NAV_TITLE", path.stem.replace("_", " ").capitalize()))
        out.append((int(found.get("NAV_ORDER", 10_000)), title, f"pages/{path.name}"))
    return sorted(out)


PAGES = [st.Page(page, title=title, default=i == 0) for i, (_, title, page) in enumerate(page_entries())]
nav = st.navigation(PAGES)

startup = state.startup()
with st.sidebar:
    st.markdown("**vision-audit**")
    if len(startup.runs) > 1:
        st.selectbox("Run", options=list(range(len(startup.runs))), key="run_idx",
                     format_func=lambda i: state.run_label(startup.runs[i]))
    elif startup.runs:  # one run: no widget to render (the first page is measured in a browser)
        st.caption(f"Run: {esc(state.run_label(startup.runs[0]))}")
    for problem in startup.problems:
        st.warning(esc(problem))

if not startup.runs:
    where = {"arguments": "the run directories given on the command line",
             "environment": "VISION_AUDIT_RUNS", "demo": "runs/demo"}[startup.source]
    st.title("vision-audit")
    st.error(f"No run found in {esc(where)}.")
    st.markdown("Build the demo run with `vision-audit demo`, or start the dashboard on a run: "
                "`vision-audit dashboard RUN_DIR`.")
    st.stop()

nav.run()
