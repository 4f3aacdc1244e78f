"""Where a finding is carried: each head's and MLP's mean-ablation effect on a CLIP association test
(heads x layers), the test of the top-k heads against random heads, and the roles of the top heads in
words (tables ``components`` and ``ablations``; docs/RUN_FORMAT.md)."""

from __future__ import annotations

import streamlit as st

from dashboards import cache
from dashboards.ui import current_run, esc, fit_table, interval_text, p_text

NAV_ORDER = 8  # place in the sidebar navigation (dashboards/app.py reads it, with NAV_TITLE)
NAV_TITLE = "Components"

path, run = current_run()
st.title("Where a finding is carried")
comp = cache.table(path, "components")
if comp is None or comp.empty:
    st.info("No component analysis in this run: it needs a CLIP run with clip.association tests and "
            "components.enabled: true in the config.")
    st.stop()

st.caption("Direct contribution of each attention head and MLP of the last layers to the image embedding "
           "(TextSpan decomposition); effect = how much of the test's effect size d a component carries "
           "when it is mean-ablated (95% bootstrap interval over images). Later blocks are not re-run.")
findings = sorted(comp["finding"].astype(str).unique())
finding = st.selectbox("finding", findings, key="co_finding")
c = comp[comp["finding"].astype(str) == finding]

heads = c[c["kind"] == "head"]
grid = heads.pivot_table(index="layer", columns="head", values="effect", aggfunc="first")
grid.index = [f"L{int(i)}" for i in grid.index]
grid.columns = [f"H{int(h)}" for h in grid.columns]
mlp = c[c["kind"] == "mlp"].set_index("layer")["effect"]
grid["MLP"] = [mlp.get(int(i[1:]), float("nan")) for i in grid.index]
st.markdown("**Effect by layer and head** (darker = carries more of d)")
st.dataframe(grid.style.background_gradient(cmap="Reds", axis=None).format("{:.3f}"), key="co_grid")

names = c.sort_values("rank")["component"].astype(str).tolist()
pick = st.selectbox("component", names, key="co_pick")
row = c[c["component"].astype(str) == pick].iloc[0]
c1, c2, c3 = st.columns(3)
c1.metric("rank", int(row["rank"]))
c2.metric("effect on d (95% CI)", f"{row['effect']:.3f} {interval_text(row['ci_low'], row['ci_high'])}",
          help=f"n = {int(row['n'])} images")
c3.metric("d after ablation", f"{row['after']:.3f}", help=f"before: {row['before']:.3f}")
st.markdown("**Role in words** (TextSpan: the texts that explain most of its contributions' variance): "
            + (esc(str(row["roles"])) or "_not named (only the top components are)_"))
st.caption("Spatial maps per head are not stored in the run (the decomposition keeps the pooled token only).")

abl = cache.table(path, "ablations")
if abl is not None and not abl.empty:
    a = abl[abl["finding"].astype(str) == finding]
    n_sig = int(a["significant"].sum())
    st.markdown(f"**Top-k heads against random heads of the same layers** ({n_sig} of {len(a)} significant after "
                "Holm; heads chosen on one half of the images, measured on the other). Only a significant row says "
                "where the finding lives.")
    fit_table(a[["k", "components", "n_test", "before", "after", "reduction", "random_mean", "n_random", "random_p",
                 "p_adj", "accuracy_before", "accuracy_after"]], key="co_abl",
              labels={"n_test": "n", "random_mean": "random heads", "n_random": "random sets",
                      "accuracy_before": "accuracy", "accuracy_after": "accuracy after"})
    if len(a):
        best = a.sort_values("p_adj").iloc[0]
        st.caption(esc(f"smallest: k={int(best['k'])}, {p_text(best['p_adj'], 'p_adj (Holm)')}"))
