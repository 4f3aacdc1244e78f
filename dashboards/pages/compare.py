"""Compare: two runs side by side, per-group metrics, their differences and both runs' leading findings."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from audit.errors import AuditError
from audit.report.compare import finding_pairs
from dashboards import cache, state
from dashboards.ui import esc, fit_table, md_table, paired_interval_figure, short_hash

NAV_ORDER = 7  # place in the sidebar navigation (dashboards/app.py reads it, with NAV_TITLE)
NAV_TITLE = "Compare"


def _n(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


st.title("Compare runs")
runs = state.startup().runs
if len(runs) < 2:
    st.info("Comparing needs two runs: start the dashboard with two run directories, e.g. "
            "`vision-audit dashboard runs/demo/vit-biased runs/demo/vit-control`.")
    st.stop()

labels = [state.run_label(r) for r in runs]
c1, c2 = st.columns(2)
ia = c1.selectbox("run A", range(len(runs)), index=0, format_func=lambda i: labels[i], key="cmp_a")
ib = c2.selectbox("run B", range(len(runs)), index=1, format_func=lambda i: labels[i], key="cmp_b")
if ia == ib:
    st.warning("Choose two different runs.")
    st.stop()
pa, pb = runs[ia], runs[ib]
try:
    ra, rb = cache.open_run(pa), cache.open_run(pb)
except AuditError as e:
    st.error(esc(e))
    st.stop()

info = pd.DataFrame({
    "": ["model", "fingerprint", "dataset fingerprint", "images used", "methods"],
    "A": [ra.name, ra.meta.get("model", {}).get("fingerprint"), short_hash(ra.meta.get("dataset", {}).get("fingerprint")),
          ra.meta.get("dataset", {}).get("n_used"), ", ".join(ra.methods)],
    "B": [rb.name, rb.meta.get("model", {}).get("fingerprint"), short_hash(rb.meta.get("dataset", {}).get("fingerprint")),
          rb.meta.get("dataset", {}).get("n_used"), ", ".join(rb.methods)],
}).astype(str)
fit_table(info, key="cmp_info")
if ra.meta.get("dataset", {}).get("fingerprint") != rb.meta.get("dataset", {}).get("fingerprint"):
    st.warning("The two runs used different datasets; differences mix model and data effects.")

ga, gb = cache.table(pa, "group_performance"), cache.table(pb, "group_performance")
if ga is None or gb is None:
    st.error("Both runs need a group_performance table.")
    st.stop()
keys = ["attribute", "group", "metric", "cls"]
both = ga.merge(gb, on=keys, suffixes=("_a", "_b"), how="inner")
if both.empty:
    st.error("The runs share no (attribute, group, metric, class) rows to compare.")
    st.stop()

attributes = list(dict.fromkeys(both["attribute"]))
metrics = list(dict.fromkeys(both["metric"]))
c1, c2, c3 = st.columns(3)
attribute = c1.selectbox("attribute", attributes, key="cmp_attr")
metric = c2.selectbox("metric", metrics, index=metrics.index("accuracy") if "accuracy" in metrics else 0,
                      key="cmp_metric")
classes = list(dict.fromkeys(both.loc[both["metric"] == metric, "cls"].astype(str)))
cls = c3.selectbox("class", classes, key="cmp_cls")
sel = both[(both["attribute"] == attribute) & (both["metric"] == metric) & (both["cls"].astype(str) == cls)]
sel = sel.sort_values("group").reset_index(drop=True)
table = pd.DataFrame({
    "group": sel["group"],
    "A": sel["value_a"], "A ci_low": sel["ci_low_a"], "A ci_high": sel["ci_high_a"], "A n": sel["n_a"],
    "B": sel["value_b"], "B ci_low": sel["ci_low_b"], "B ci_high": sel["ci_high_b"], "B n": sel["n_b"],
    "B − A": sel["value_b"] - sel["value_a"],
    "small": sel["small_a"].fillna(False).astype(bool) | sel["small_b"].fillna(False).astype(bool),
})
long = pd.concat([
    sel.assign(run="A", value=sel["value_a"], ci_low=sel["ci_low_a"], ci_high=sel["ci_high_a"], small=sel["small_a"]),
    sel.assign(run="B", value=sel["value_b"], ci_low=sel["ci_low_b"], ci_high=sel["ci_high_b"], small=sel["small_b"]),
])[["group", "run", "value", "ci_low", "ci_high", "small"]]
left, right = st.columns([3, 2])
left.pyplot(paired_interval_figure(long, series="run", xlabel=metric, title=f"{metric} by {attribute}: A vs B"))
n_small = int(table["small"].sum())
if n_small:
    right.warning(f"{n_small} group(s) below the minimum size in at least one run: shown hollow and grey.")
fit_table(table, key="cmp_groups", digits=4, labels={"A ci_low": "A low", "A ci_high": "A high",
                                                     "B ci_low": "B low", "B ci_high": "B high"})
st.caption("Each run's intervals are its own 95% bootstrap intervals; the per-group difference B − A is a point "
           "estimate (the runs' resamples are not paired).")

# -- what each run's findings ledger leads with, side by side (read, never re-estimated) -----
st.subheader("Leading findings of A and B")
pairs = finding_pairs(cache.findings(pa), cache.findings(pb))
if not pairs:
    st.info("Neither run has a finding.")
else:
    st.markdown("\n".join(f"- {esc(f.text)}" for f in pairs))
    def gap(g: float | None, lo: float | None, hi: float | None, status: str) -> str:
        return "absent" if status == "absent" else f"{_n(g)} [{_n(lo)}, {_n(hi)}] {status}"

    # the lines above say everything (kind, family, corrected p); the table lines the gaps up to scan
    st.markdown(md_table(pd.DataFrame([{  # a markdown table: long metric names wrap instead of being cut
        "attribute": f.attribute, "metric": f.label,
        "A: gap [95% CI]": gap(f.a_gap, f.a_ci_low, f.a_ci_high, f.a_status),
        "B: gap [95% CI]": gap(f.b_gap, f.b_ci_low, f.b_ci_high, f.b_status)}
        for f in pairs]).set_index("attribute")))
    st.caption("Each run's gap, interval and corrected p-value come from its own findings ledger; a finding "
               "marked absent was not computed in that run.")
