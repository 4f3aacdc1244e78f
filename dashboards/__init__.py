"""The vision-audit Streamlit dashboard (``vision-audit dashboard`` or ``streamlit run dashboards/app.py``).

A thin view over run directories (``audit.runs.Run``); it loads a model only for live probing.
"""
