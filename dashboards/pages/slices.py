"""Error slices: subgroups nobody labelled where the model errs more, found in embedding space on one
half of the rows and tested on the other; their words, their most typical images and their overlap
with the labelled groups."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from audit.slices.stage import search_note
from dashboards import cache
from dashboards.ui import current_run, esc, fit_table, interval_text, p_text

NAV_ORDER = 4  # place in the sidebar navigation (dashboards/app.py reads it, with NAV_TITLE)
NAV_TITLE = "Slices"

path, run = current_run()
st.title("Error slices nobody labelled")
st.caption(esc(search_note(run.meta.get("slices"))))

slices = cache.table(path, "slices")
if slices is None or slices.empty:
    st.info("No slice to show: " + ("the run searched and found no candidate (no place in embedding space "
                                    "where errors gather enough)." if slices is not None
                                    else "the run has no slices table."))
    st.stop()

n_conf = int(slices["confirmed"].sum())
st.markdown(f"**{n_conf} of {len(slices)} candidate(s) confirmed** on the held-out half (Benjamini-Hochberg). "
            "Every number below is from the held-out half; the discovery half only chose the candidates. "
            "Pick a slice below for its description, words, groups and images.")
shown = slices[["slice_id", "status", "scope", "n_confirm", "n_rest", "error_rate", "rest_error_rate", "difference",
                "ci_low", "ci_high", "p_adj"]]
fit_table(shown, key="sl_table", labels={"slice_id": "slice", "n_confirm": "n", "n_rest": "n rest",
                                         "error_rate": "error rate", "rest_error_rate": "rest",
                                         "ci_low": "95% low", "ci_high": "95% high", "p_adj": "p_adj (BH)"})

ids = slices["slice_id"].astype(int).tolist()
labels = {int(r.slice_id): f"slice {int(r.slice_id)} ({r.status}, {r.scope})" for r in slices.itertuples()}
sid = st.selectbox("slice", ids, format_func=lambda i: labels[i], key="sl_pick")
row = slices[slices["slice_id"] == sid].iloc[0]

st.subheader(f"Slice {sid}")
st.markdown(esc(str(row["description"])))
diff = f"{row['difference']:.3f} {interval_text(row['ci_low'], row['ci_high'])}" if pd.notna(row["difference"]) else "—"
c1, c2, c3 = st.columns(3)
c1.metric("error rate (held out)", f"{row['error_rate']:.3f}" if pd.notna(row["error_rate"]) else "—",
          help=f"n = {int(row['n_confirm'])} held-out rows in the slice")
c2.metric("rest of its scope", f"{row['rest_error_rate']:.3f}" if pd.notna(row["rest_error_rate"]) else "—",
          help=f"n = {int(row['n_rest'])} held-out rows")
c3.metric("difference (95% CI)", diff, help=p_text(row["p_adj"], "p_adj (BH)"))
if row.get("note"):
    st.warning(esc(str(row["note"])))
st.markdown("**Words** (concepts closer to the slice's images than to the rest's): "
            + (esc(str(row["top_words"])) or "_none: no text tower named this run's slices_"))

groups = cache.table(path, "slice_groups")
if groups is not None and not groups.empty:
    g = groups[groups["slice_id"] == sid].sort_values(["attribute", "lift"], ascending=[True, False])
    st.markdown("**Overlap with the labelled groups** (never used to find the slice): the slice's share in each "
                "group beside that group's share of the scope.")
    fit_table(g[["attribute", "group", "n", "share_in_slice", "share_overall", "lift"]], key="sl_groups",
              labels={"share_in_slice": "share in slice", "share_overall": "share of scope"})

typical = [int(x) for x in str(row.get("typical_row_ids") or "").split()]
if typical:
    st.markdown("**Most typical images** (highest posterior of the slice's place; label → prediction, ✗ = error)")
    pred = cache.table(path, "predictions")
    pred = pred.set_index("row_id") if pred is not None else None
    cols = st.columns(min(len(typical), 8))
    for col, rid in zip(cols, typical[:8]):
        png, problem = cache.thumbnail(path, rid)
        cap = f"row {rid}"
        if pred is not None and rid in pred.index:
            p = pred.loc[rid]
            cap = f"{p['label']} → {p['pred']}" + ("" if bool(p["correct"]) else " ✗")
        col.image(png, caption=cap + (f" ({problem})" if problem else ""))
