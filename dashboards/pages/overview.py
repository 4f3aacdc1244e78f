"""Overview: the findings ledger, policy verdict, dataset composition by group, provenance."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from audit.errors import AuditError
from audit.findings import DEFAULT_HEADLINE, headline, metric_label, summary_line
from audit.report.summary import preprocessing_text
from dashboards import cache, state
from dashboards.ui import current_run, esc, fit_table, md_table, short_hash

NAV_ORDER = 1  # place in the sidebar navigation (dashboards/app.py reads it, with NAV_TITLE)
NAV_TITLE = "Overview"

path, run = current_run()
meta = run.meta
model = meta.get("model") or {}
dataset = meta.get("dataset") or {}

st.title("Overview")
st.caption(f"Run {esc(state.run_label(path))} · status {esc(meta.get('status'))} · created {esc(meta.get('created'))}")

# -- headline numbers ---------------------------------------------------------------------
pred = cache.table(path, "predictions", columns=["row_id", "correct"])
c1, c2, c3, c4 = st.columns(4)
c1.metric("Images used", f"{int(dataset.get('n_used', len(pred) if pred is not None else 0)):,}")
c2.metric("Images skipped", f"{len(meta.get('skipped') or []):,}")
if pred is not None and pred["correct"].notna().any():
    c3.metric("Accuracy", f"{pred['correct'].dropna().astype(bool).mean():.3f}")
else:
    c3.metric("Accuracy", "–")
c4.metric("Map methods", f"{len(cache.methods(path))}", help="explanation methods whose maps the run stores")

# -- findings (the run's ledger: the same sentences as the reports and the CLI) ---------------
st.subheader("Findings")
ledger = cache.findings(path)
st.markdown(esc(summary_line(ledger)))
top = headline(ledger, DEFAULT_HEADLINE)
if top:
    st.markdown("\n".join(f"{i}. {esc(h)}" for i, h in enumerate(top, start=1)))
else:
    st.info("The run has no finding: no group columns, labels or CLIP tests.")
if len(ledger):
    with st.expander(f"All findings, ranked ({len(ledger)})"):
        shown = ledger.assign(metric=[metric_label(m, s) for m, s in zip(ledger["metric"], ledger["scope"])])
        fit_table(shown[["rank", "kind", "attribute", "metric", "worst_group", "n_worst", "best_group", "n_best",
                         "gap", "ci_low", "ci_high", "p_adj", "status"]], key="ov_findings",
                  labels={"worst_group": "worst", "n_worst": "n", "best_group": "best", "n_best": "n ",
                          "ci_low": "95% low", "ci_high": "95% high", "p_adj": "p (adj.)"})
        if "correction" in shown:
            st.caption(esc("Corrections: " + ", ".join(sorted(set(shown["correction"].dropna().astype(str))))
                           + " (each family of tests corrected on its own)."))
pre = meta.get("preprocessing") or {}
for w in pre.get("warnings") or []:
    st.warning(esc(w))
if meta.get("limitations"):
    with st.expander(f"Limitations ({len(meta['limitations'])})"):
        st.markdown("\n".join(f"- {esc(x)}" for x in meta["limitations"]))

# -- policy verdict -------------------------------------------------------------------------
policy = state.startup().policy
if policy:
    st.subheader("Policy verdict")
    try:
        from audit.report.policy import evaluate, load_policy

        verdict = evaluate(run, load_policy(policy))
    except ImportError as e:
        st.warning(f"The policy gate is not available in this installation ({esc(e)}).")
    except AuditError as e:
        st.error(f"The policy {esc(Path(policy).name)} cannot be applied: {esc(e)}")
    else:
        if verdict.passed:
            st.success(f"PASS: the run meets every rule of {esc(Path(policy).name)}.")
        else:
            st.error(f"FAIL: the run breaks at least one rule of {esc(Path(policy).name)}.")
        rows = verdict.rows
        fit_table(rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows), key="ov_policy")

# -- dataset composition ----------------------------------------------------------------------
st.subheader("Dataset composition by group")
groups = run.group_columns
samples = cache.table(path, "samples", columns=[c for c in ["row_id", "label", *groups]])
if samples is None:
    st.info("The run has no samples table.")
else:
    cols = st.columns(max(1, len(groups)))
    for g, col in zip(groups, cols):
        counts = samples[g].astype(str).value_counts().rename_axis(g).reset_index(name="n")
        counts["share"] = counts["n"] / counts["n"].sum()
        with col:
            st.markdown(f"**{esc(g)}**")
            st.markdown(md_table(counts.set_index(g)))
    if len(groups) >= 2:
        with st.expander("Intersections"):
            inter = samples.groupby(groups[:2]).size().unstack(fill_value=0)
            st.markdown(md_table(inter))
    if "label" in samples and samples["label"].notna().any():
        with st.expander("Labels by group"):
            g0 = groups[0] if groups else None
            tab = (samples.groupby(["label", g0]).size().unstack(fill_value=0) if g0
                   else samples["label"].value_counts().to_frame("n"))
            st.markdown(md_table(tab))

# -- provenance -------------------------------------------------------------------------------
st.subheader("Provenance")
prov = pd.DataFrame([
    ("model spec", model.get("spec")),
    ("model fingerprint", model.get("fingerprint")),
    ("checkpoint", model.get("checkpoint")),
    ("model kind", model.get("kind")),
    ("blocks", model.get("n_blocks")),
    ("classes", ", ".join(map(str, model.get("class_names") or []))),
    ("manifest", dataset.get("manifest")),
    ("dataset fingerprint", short_hash(dataset.get("fingerprint"))),
    ("rows in manifest", dataset.get("n_rows")),
    ("rows used", dataset.get("n_used")),
    ("group columns", ", ".join(groups)),
    ("preprocessing", preprocessing_text(pre)),
    ("methods", ", ".join(run.methods)),
    ("device / dtype", f"{meta.get('device', '?')} / {meta.get('dtype', '?')}"),
    ("backend", meta.get("backend")),
    ("run id", meta.get("run_id")),
    ("created", meta.get("created")),
    ("finished", meta.get("finished")),
], columns=["field", "value"])
prov["value"] = prov["value"].map(lambda v: "" if v is None else str(v))
st.markdown(md_table(prov.set_index("field")))
if dataset.get("fingerprint") and short_hash(dataset.get("fingerprint")) != dataset.get("fingerprint"):
    with st.expander("Full dataset fingerprint"):
        st.code(str(dataset.get("fingerprint")), language=None, wrap_lines=True)
c1, c2 = st.columns(2)
with c1:
    st.markdown("**Versions**")
    st.markdown(md_table(pd.DataFrame(sorted((meta.get("versions") or {}).items()), columns=["package", "version"])
                         .set_index("package")))
with c2:
    st.markdown("**Timings (s)**")
    st.markdown(md_table(pd.DataFrame(sorted((meta.get("timings") or {}).items()), columns=["stage", "seconds"])
                         .set_index("stage"), digits=1))
skipped = meta.get("skipped") or []
if skipped:
    with st.expander(f"Skipped images ({len(skipped)})"):
        fit_table(pd.DataFrame(skipped), key="ov_skipped")
