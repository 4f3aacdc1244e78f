"""Embeddings: the stored 2-D projection coloured by group, label or correctness (click a point to
see the image and its maps), plus dispersion, distances, MMD, linear probes and association tests."""

from __future__ import annotations


import altair as alt
import pandas as pd
import streamlit as st

from audit.errors import AuditError
from dashboards import cache
from dashboards.ui import current_run, esc, fit_table, overlay_png

NAV_ORDER = 5  # place in the sidebar navigation (dashboards/app.py reads it, with NAV_TITLE)
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
    methods = cache.methods(path)
    with_maps = sorted(set(row_ids.tolist()) & set(cache.maps(path, methods[0]).index)) if methods else []
    first = with_maps[0] if with_maps else int(row_ids.iloc[0])  # start on an image whose maps are stored
    typed = st.number_input("or type a row id", min_value=int(row_ids.min()), max_value=int(row_ids.max()),
                            value=picked if picked is not None else first, key="emb_row")
    row_id = picked if picked is not None else int(typed)
    if row_id in set(row_ids.tolist()):
        sel = data[data["row_id"] == row_id]
        st.markdown(f"**Image #{row_id}**")
        fit_table(sel.drop(columns=["x", "y"], errors="ignore"), key="emb_sel")
        cols = st.columns(1 + max(1, len(methods)))
        png, problem = cache.thumbnail(path, row_id, size=cache.OVERLAY)
        cols[0].image(png, caption="image")
        if problem:
            cols[0].warning(esc(problem))
        for m, col in zip(methods, cols[1:]):
            res = overlay_png(path, row_id, m, scale="image")
            if res is None:
                col.caption(f"{m}: not stored for this image")
            else:
                col.image(res[0], caption=f"{m} · {res[2]}" if res[2] else m)
                if res[1]:
                    col.warning(esc(res[1]))
    else:
        st.info(f"Row {row_id} is not in the projection.")


def association_words(df: pd.DataFrame) -> pd.DataFrame:
    """The association table with the words of each test's text sets A and B (from the run's config,
    :meth:`audit.config.ClipConfig.association_words`) in place of their names; the shared prompt
    around the words is named once in the caption."""
    try:
        words = run.section("clip").association_words()
    except AuditError:
        words = {}
    out = df.copy()
    frames = set()
    for i, r in out.iterrows():
        w = words.get(str(r["test"]))
        if w is None:
            continue
        out.at[i, "A"], out.at[i, "B"] = w[0], w[1]
        if w[2]:
            frames.add(w[2])
    out.attrs["frames"] = sorted(frames)
    return out


# -- tables ---------------------------------------------------------------------------------------------
# (name, title, help, columns shown, short headers): the columns that fit the main column; notes go below
TABLES = [
    ("linear_probe", "Linear probes: can the group be read off the embedding?",
     ("Balanced accuracy of a cross-validated logistic regression predicting the group, against its "
      "permutation null (95th percentile) and the majority rate."),
     ["attribute", "k", "n", "balanced_accuracy", "bacc_ci_low", "bacc_ci_high", "auc", "majority_rate", "null_p95",
      "p_value"],
     {"balanced_accuracy": "bal. acc.", "bacc_ci_low": "95% low", "bacc_ci_high": "95% high",
      "majority_rate": "majority", "null_p95": "null p95"}),
    ("embedding_groups", "Dispersion by group", "Mean cosine distance to the group centroid, with 95% intervals.",
     ["attribute", "group", "n", "dispersion", "dispersion_ci_low", "dispersion_ci_high", "small"],
     {"dispersion_ci_low": "95% low", "dispersion_ci_high": "95% high"}),
    ("embedding_distances", "Centroid distances between groups", ("Cosine distance of group centroids; "
     "permutation p-values, Holm-corrected."),
     ["attribute", "group_a", "group_b", "n_a", "n_b", "cosine_distance", "p_value", "p_holm"],
     {"group_a": "group A", "group_b": "group B", "n_a": "n A", "n_b": "n B", "cosine_distance": "cos. dist.",
      "p_holm": "p (Holm)"}),
    ("mmd", "Maximum mean discrepancy between groups", "MMD² with an RBF kernel; permutation p-values.",
     ["attribute", "group_a", "group_b", "n_a", "n_b", "mmd2", "p_value", "p_holm"],
     {"group_a": "group A", "group_b": "group B", "n_a": "n A", "n_b": "n B", "mmd2": "MMD²", "p_holm": "p (Holm)"}),
    ("association", "Association tests (WEAT / image-EAT)",
     "Images of group X vs group Y, text sets A vs B: effect size d and permutation p-value.",
     ["test", "attribute", "X", "Y", "A", "B", "n_x", "n_y", "effect_size", "p_value"],
     {"n_x": "n X", "n_y": "n Y", "effect_size": "d"}),
]
for name, title, help_text, columns, labels in TABLES:
    df = cache.table(path, name)
    if df is None or df.empty:
        continue
    if name == "association":
        df = association_words(df)
        if df.attrs.get("frames"):
            help_text += " Each word of A and B is put in " + " / ".join(f"'{f}'" for f in df.attrs["frames"]) + "."
    st.subheader(title)
    st.caption(esc(help_text))
    if name == "association":  # the numbers in the table, the words of A and B (long) listed under it
        fit_table(df[[c for c in columns if c in df and c not in ("A", "B")]], key=f"emb_tab_{name}", labels=labels)
        st.markdown("\n".join(f"- **{esc(r.test)}**: A = {esc(r.A)}; B = {esc(r.B)}" for r in df.itertuples()))
    else:
        fit_table(df[[c for c in columns if c in df]], key=f"emb_tab_{name}", labels=labels)
    notes = [str(n) for n in df.get("note", pd.Series(dtype=object)).dropna().unique() if str(n)]
    if "estimator" in df:
        notes += [f"estimator: {e}" for e in df["estimator"].dropna().astype(str).unique()]
    if notes:
        st.caption(esc("Notes: " + "; ".join(notes)))
