"""Embeddings: the stored 2-D projection coloured by group, label or correctness (click a point to
see the image and its maps), plus dispersion, distances, MMD, linear probes and association tests."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboards import cache
from dashboards.ui import current_run, esc

NAV_ORDER = 4  # place in the sidebar navigation (dashboards/app.py reads it, with NAV_TITLE)
NAV_TITLE = "Embeddings"

path, run = current_run()
st.title("Embeddings")

proj = cache.table(path, "projection")
if proj is None or proj.empty:
    st.info("This run has no projection table (embedding analysis was not run).")
else:
    colour_options = [c for c in [*run.group_columns, "label", "pred", "correct"] if c in proj]
    c1, c2 = st.columns([2, 1])
    colour = c1.selectbox("colour by", colour_options, key="emb_colour")
    methods_avail = list(dict.fromkeys(proj["method"].astype(str))) if "method" in proj else ["pca"]
    pmethod = c2.selectbox("projection", methods_avail, key="emb_proj")
    data = proj[proj["method"].astype(str) == pmethod] if "method" in proj else proj
    data = data.assign(**{colour: data[colour].astype(str)})
    pick = alt.selection_point(name="pick", fields=["row_id"], on="click", clear="dblclick")
    tooltip = [c for c in ["row_id", *run.group_columns, "label", "pred", "correct"] if c in data]
    chart = (
        alt.Chart(data[["row_id", "x", "y", *[c for c in tooltip if c != "row_id"]]].drop_duplicates("row_id"))
        .mark_circle(size=28)
        .encode(x=alt.X("x:Q", title=f"{pmethod} 1"), y=alt.Y("y:Q", title=f"{pmethod} 2"),
                color=alt.Color(f"{colour}:N", title=colour),
                opacity=alt.condition(pick, alt.value(0.85), alt.value(0.25)),
                tooltip=tooltip)
        .add_params(pick)
        .properties(height=460)
    )
    event = st.altair_chart(chart, on_select="rerun", selection_mode="pick", key="emb_chart", width="stretch")
    picked = None
    try:
        points = event.selection.get("pick") or []  # type: ignore[union-attr]
        if points:
            picked = int(points[0]["row_id"])
    except (AttributeError, KeyError, TypeError, ValueError):
        picked = None
    row_ids = data["row_id"].astype(int)
    typed = st.number_input("or type a row id", min_value=int(row_ids.min()), max_value=int(row_ids.max()),
                            value=picked if picked is not None else int(row_ids.iloc[0]), key="emb_row")
    row_id = picked if picked is not None else int(typed)
    if row_id in set(row_ids.tolist()):
        sel = data[data["row_id"] == row_id]
        st.markdown(f"**Image #{row_id}**")
        st.dataframe(sel.drop(columns=["x", "y"], errors="ignore"), hide_index=True, width="stretch", key="emb_sel")
        methods = cache.methods(path)
        cols = st.columns(1 + max(1, len(methods)))
        png, problem = cache.thumbnail(path, row_id, size=cache.OVERLAY)
        cols[0].image(png, caption="image")
        if problem:
            cols[0].warning(esc(problem))
        for m, col in zip(methods, cols[1:]):
            res = cache.overlay_png(path, row_id, m)
            if res is None:
                col.caption(f"{m}: not stored for this image")
            else:
                col.image(res[0], caption=m)
                if res[1]:
                    col.warning(esc(res[1]))
    else:
        st.info(f"Row {row_id} is not in the projection.")

# -- tables ---------------------------------------------------------------------------------------------
TABLES = [
    ("linear_probe", "Linear probes: can the group be read off the embedding?",
     ("Balanced accuracy of a cross-validated logistic regression predicting the group, against its "
     "permutation null (null_mean, null_p95) and the majority rate.")),
    ("embedding_groups", "Dispersion by group", "Mean cosine distance to the group centroid, with 95% intervals."),
    ("embedding_distances", "Centroid distances between groups", ("Cosine distance of group centroids; "
     "permutation p-values, Holm-corrected.")),
    ("mmd", "Maximum mean discrepancy between groups", "MMD² with an RBF kernel; permutation p-values."),
    ("association", "Association tests (WEAT / image-EAT)", "Effect size and permutation p-value."),
]
for name, title, help_text in TABLES:
    df = cache.table(path, name)
    if df is None or df.empty:
        continue
    st.subheader(title)
    st.caption(help_text)
    st.dataframe(df, hide_index=True, width="stretch", key=f"emb_tab_{name}")
