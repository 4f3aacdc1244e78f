"""vision-audit dashboard: ``streamlit run dashboards/app.py -- RUN_DIR ... [--policy POLICY]``.

Runs come from the arguments after ``--``, else ``VISION_AUDIT_RUNS`` (paths joined with
``os.pathsep``), else the demo run under ``runs/demo`` (``vision-audit dashboard`` builds it if it is
missing). Bind to 127.0.0.1 unless you mean to share the results (``vision-audit dashboard --host``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st

from dashboards import state
from dashboards.ui import esc

st.set_page_config(page_title="vision-audit", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", default=True),
    st.Page("pages/explain.py", title="Explain"),
    st.Page("pages/groups.py", title="Groups"),
    st.Page("pages/embeddings.py", title="Embeddings"),
    st.Page("pages/clip_probe.py", title="CLIP probe"),
    st.Page("pages/compare.py", title="Compare"),
]
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
