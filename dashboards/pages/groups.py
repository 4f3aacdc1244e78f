"""Groups: performance by group and intersection with 95% intervals, disparity tests with
corrected p-values, small groups marked; explanation quality (map mass on the object) by group."""

from __future__ import annotations

import streamlit as st

from audit.viz.figures import interval_plot
from dashboards import cache
from dashboards.ui import alpha, current_run, esc, fmt_p, min_group_size

NAV_ORDER = 3  # place in the sidebar navigation (dashboards/app.py reads it, with NAV_TITLE)
NAV_TITLE = "Groups"

path, run = current_run()
st.title("Groups")

perf = cache.table(path, "group_performance")
if perf is None or perf.empty:
    st.error("This run has no group_performance table.")
    st.stop()

min_n = min_group_size(run)
a = alpha(run)
attributes = list(dict.fromkeys(perf["attribute"].astype(str)))
metrics = list(dict.fromkeys(perf["metric"].astype(str)))

c1, c2, c3 = st.columns(3)
attribute = c1.selectbox("attribute (× marks an intersection)", attributes, key="gr_attribute")
metric = c2.selectbox("metric", metrics, index=metrics.index("accuracy") if "accuracy" in metrics else 0,
                      key="gr_metric")
classes = list(dict.fromkeys(perf.loc[perf["metric"] == metric, "cls"].astype(str)))
cls = c3.selectbox("class", classes, key="gr_cls",
                   help="__all__: the metric over all classes; __macro__: averaged over classes; "
                        "a class name: that class one-vs-rest")

sel = perf[(perf["attribute"] == attribute) & (perf["metric"] == metric) & (perf["cls"].astype(str) == cls)]
sel = sel.sort_values("group").reset_index(drop=True)
shown = sel[["group", "value", "ci_low", "ci_high", "n", "n_rows", "small", "note"]]
st.markdown(f"**{esc(metric)}** by **{esc(attribute)}** ({esc(cls)}), with 95% bootstrap intervals; "
            f"groups with n < {min_n} are marked small and left out of comparisons.")
left, right = st.columns([3, 2])
with left:
    st.pyplot(interval_plot(sel, xlabel=f"{metric} ({cls}, 95% interval)", title=f"{metric} by {attribute}"))
with right:
    st.dataframe(shown, hide_index=True, width="stretch", key="gr_perf",
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in ("value", "ci_low", "ci_high")})
n_small = int(sel["small"].fillna(False).astype(bool).sum())
if n_small:
    st.warning(f"{n_small} group(s) below the minimum size ({min_n}): shown hollow, excluded from the tests.")

# -- disparity tests ---------------------------------------------------------------------------------
st.subheader("Disparity tests")
disp = cache.table(path, "disparities")
if disp is None or disp.empty:
    st.info("This run has no disparities table.")
else:
    correction = st.radio("multiple-testing correction", ["holm", "bh"], horizontal=True, key="gr_corr",
                          format_func=lambda c: {"holm": "Holm (release gates)",
                                                 "bh": "Benjamini–Hochberg (exploration)"}[c])
    only_attr = st.checkbox("only the selected attribute", value=True, key="gr_only_attr")
    d = disp[disp["attribute"] == attribute] if only_attr else disp
    d = d.copy()
    pcol = "p_holm" if correction == "holm" else "p_bh"
    d["significant"] = (d[pcol] < a).fillna(False)
    d = d.sort_values(pcol, na_position="last")
    cols = ["attribute", "metric", "cls", "family", "k", "n_excluded", "max_group", "max_value", "min_group",
            "min_value", "difference", "diff_ci_low", "diff_ci_high", "ratio", "p_value", pcol, "significant",
            "correction", "note"]
    st.dataframe(d[[c for c in cols if c in d]], hide_index=True, width="stretch", key="gr_disp",
                 column_config={c: st.column_config.NumberColumn(format="%.4f")
                                for c in ("max_value", "min_value", "difference", "diff_ci_low", "diff_ci_high",
                                          "ratio", "p_value", pcol)})
    n_sig = int(d["significant"].sum())
    tested = int(d["p_value"].notna().sum())
    st.caption(f"{n_sig} of {tested} tested gaps significant at α = {a} after "
               f"{'Holm' if correction == 'holm' else 'Benjamini–Hochberg'} correction within each family of "
               "tests (the correction column names it; Holm is what the findings and the release gate use). "
               "The gap (max − min across groups) is tested with a permutation null, since it is never zero by "
               "chance; untested rows say why in their note.")
    row = disp[(disp["attribute"] == attribute) & (disp["metric"] == metric) & (disp["cls"].astype(str) == cls)]
    if "family" in row.columns:
        row = row[row["family"] == "range"]
    if not row.empty:
        r = row.iloc[0]
        if r.notna()["difference"]:
            st.text(f"Selected: gap {float(r['difference']):.4f} between {r['max_group']} and {r['min_group']}, "
                    f"p = {fmt_p(r['p_value'])}, corrected p = {fmt_p(r[pcol])}")

# -- explanations by group ---------------------------------------------------------------------------------
region = cache.table(path, "region_mass")
if region is not None and not region.empty:
    st.subheader("Explanation mass on the object, by group")
    rm = region[region["attribute"] == attribute] if attribute in set(region["attribute"]) else region
    if rm.empty:
        st.info("No region-mass figures for this attribute.")
    else:
        rm_attr = rm["attribute"].iloc[0]
        rmethod = st.selectbox("method", list(dict.fromkeys(rm["method"])), key="gr_region_method")
        r2 = rm[(rm["method"] == rmethod) & (rm["attribute"] == rm_attr)].sort_values("group")
        left, right = st.columns([3, 2])
        with left:
            st.pyplot(interval_plot(r2, xlabel="share of map mass inside the object (95% interval)",
                                    title=f"{rmethod} by {rm_attr}"))
        with right:
            st.dataframe(r2[["group", "value", "ci_low", "ci_high", "n", "small", "p_value"]], hide_index=True,
                         width="stretch", key="gr_region")
