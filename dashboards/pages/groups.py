"""Groups: performance by group and intersection with 95% intervals, disparity tests with
corrected p-values, small groups marked; explanation quality (map mass on the object) by group."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from audit.viz.figures import interval_plot
from dashboards import cache
from dashboards.ui import alpha, current_run, esc, fit_table, min_group_size, p_text

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
shown = sel[["group", "value", "ci_low", "ci_high", "n", "small"]]
st.markdown(f"**{esc(metric)}** by **{esc(attribute)}** ({esc(cls)}), with 95% bootstrap intervals; "
            f"groups with n < {min_n} are marked small and left out of comparisons.")
left, right = st.columns([3, 2])
with left:
    st.pyplot(interval_plot(sel, xlabel=f"{metric} ({cls}, 95% interval)", title=f"{metric} by {attribute}"))
n_small = int(sel["small"].fillna(False).astype(bool).sum())
with right:
    if n_small:
        st.warning(f"{n_small} group(s) below the minimum size ({min_n}): shown hollow, excluded from the tests.")
    notes = [f"{g}: {n}" for g, n in zip(sel["group"], sel["note"]) if isinstance(n, str) and n] if "note" in sel else []
    if notes:
        st.caption(esc("Notes: " + "; ".join(notes)))
fit_table(shown, key="gr_perf", digits=4, labels={"ci_low": "95% low", "ci_high": "95% high"})

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
    # significant first, then the largest gap: the gaps that matter lead the table
    d = d.assign(_gap=d["difference"].fillna(-np.inf)).sort_values(["significant", "_gap"], ascending=[False, False])
    d = d.assign(highest=[f"{g} ({v:.3f})" if pd.notna(v) else "" for g, v in zip(d["max_group"], d["max_value"])],
                 lowest=[f"{g} ({v:.3f})" if pd.notna(v) else "" for g, v in zip(d["min_group"], d["min_value"])])
    cols = (["attribute"] if not only_attr else []) + ["metric", "cls"] \
        + (["family"] if "family" in d and d["family"].nunique() > 1 else []) \
        + ["k", "highest", "lowest", "difference", "diff_ci_low", "diff_ci_high", "p_value", pcol, "significant"]
    tested = d[d["difference"].notna()]
    fit_table(tested[[c for c in cols if c in tested]], key="gr_disp",
              labels={"difference": "gap", "diff_ci_low": "gap low", "diff_ci_high": "gap high", "p_value": "p",
                      pcol: "p (Holm)" if correction == "holm" else "p (BH)", "significant": "signif."})
    n_sig = int(d["significant"].sum())
    n_tested = int(d["p_value"].notna().sum())
    corr = f" ({esc(', '.join(sorted(set(d['correction'].dropna().astype(str)))))})" if "correction" in d else ""
    st.caption(f"{n_sig} of {n_tested} tested gaps significant at α = {a} after "
               f"{'Holm' if correction == 'holm' else 'Benjamini–Hochberg'} correction within each family of "
               f"tests{corr}; Holm is what the "
               "findings and the release gate use), sorted by significance, then gap. The gap (max − min across "
               "groups) is tested with a permutation null, since it is never zero by chance.")
    untested = d[d["difference"].isna()]
    if len(untested):
        with st.expander(f"Not tested ({len(untested)})"):
            st.markdown("\n".join(f"- {esc(r.metric)} ({esc(r.cls)}), {esc(r.attribute)}: {esc(r.note)}"
                                   for r in untested.itertuples()))
    row = disp[(disp["attribute"] == attribute) & (disp["metric"] == metric) & (disp["cls"].astype(str) == cls)]
    if "family" in row.columns:
        row = row[row["family"] == "range"]
    if not row.empty:
        r = row.iloc[0]
        if r.notna()["difference"]:
            st.text(f"Selected: gap {float(r['difference']):.4f} between {r['max_group']} and {r['min_group']}, "
                    f"{p_text(r['p_value'])}, {p_text(r[pcol], 'corrected p')}")

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
        r_small = int(r2["small"].fillna(False).astype(bool).sum()) if "small" in r2 else 0
        with right:
            if r_small:
                st.warning(f"{r_small} group(s) with fewer than {min_n} explained images: shown hollow, flagged "
                           "small and left out of the gap test; read them as descriptive only.")
        rcols = [c for c in ["group", "value", "ci_low", "ci_high", "n", "small", "p_value"] if c in r2]
        if "p_value" in rcols and r2["p_value"].isna().all():
            rcols.remove("p_value")
        fit_table(r2[rcols], key="gr_region", labels={"value": "mass on object", "ci_low": "95% low",
                                                      "ci_high": "95% high", "p_value": "p (gap)"})
