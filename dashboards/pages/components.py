"""Where a finding is carried: each attention head's and MLP's mean-ablation effect on one finding of the
run (an association effect size d, a harmful-label rate gap, a group-metric gap, a retrieval skew) as a
heads x layers heat map (click a cell, or pick it below), the selected component's role in words and,
for the top heads, where it looks in each of the two compared groups; then the test of the top-k heads
against random heads of the same layers (tables ``components``, ``ablations``, ``component_maps`` and
run.json ``components``; docs/RUN_FORMAT.md). Runs written before ``component_maps`` and the finding
labels existed still render (association tests, no maps)."""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from audit.findings.naming import METRIC_NAMES  # the ledger's metric names: one source
from dashboards import cache
from dashboards.ui import current_run, esc, fit_table, interval_text, p_text

NAV_ORDER = 8  # place in the sidebar navigation (dashboards/app.py reads it, with NAV_TITLE)
NAV_TITLE = "Components"

#: metric -> (what the finding's number is called in a sentence, its short symbol)
METRIC_WORDS = {
    "effect_size": ("the association effect size d", "d"),
    "skew": ("the retrieval skew", "skew"),
    **{m: (f"the gap in {name}", "gap") for m, name in METRIC_NAMES.items()},
}
KIND_WORDS = {"association": "association test", "harmful_label": "harmful labels", "performance": "group metric",
              "retrieval_skew": "retrieval skew", "retrieval": "retrieval skew"}
ROLE_WORDS = {
    "vocabulary": "TextSpan: the vocabulary texts that explain most of the variance of its contributions",
    "classes": "the classes whose logits it moves most",
}
MAP_GROUP_REST = ("rest", "target")  # a second group named so means all other images


def metric_words(metric: str) -> tuple[str, str]:
    """``(phrase, symbol)`` for a metric, e.g. ``("the gap in recall (TPR)", "gap")``."""
    if metric in METRIC_WORDS:
        return METRIC_WORDS[metric]
    if "skew" in metric:
        return f"the {metric.replace('_', ' ')}", "skew"
    return f"the gap in {metric.replace('_', ' ')}", "gap"


def num(v: object, digits: int = 3) -> str:
    """A figure as text ("–" when missing)."""
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    return f"{f:.{digits}f}" if math.isfinite(f) else "–"


def finding_info(run, comp: pd.DataFrame, abl: pd.DataFrame | None) -> dict[str, dict[str, str]]:
    """Per finding reference of ``comp``: label, kind, metric, groups (run.json first, then the
    ablations table, then the components table; an old run's findings are association tests)."""
    meta = run.meta.get("components") if isinstance(run.meta.get("components"), dict) else {}
    from_meta = {str(f.get("ref")): f for f in (meta.get("findings") or []) if isinstance(f, dict)}
    out: dict[str, dict[str, str]] = {}
    order = [r for r in from_meta if r in set(comp["finding"].astype(str))]
    order += [r for r in dict.fromkeys(comp["finding"].astype(str)) if r not in order]
    for ref in order:
        info = {"label": "", "kind": "", "metric": "", "groups": ""}
        c = comp[comp["finding"].astype(str) == ref]
        for col in ("finding_kind", "metric"):
            if col in c and c[col].notna().any():
                info["kind" if col == "finding_kind" else "metric"] = str(c[col].dropna().iloc[0])
        if abl is not None and not abl.empty:
            a = abl[abl["finding"].astype(str) == ref]
            for col, name in (("label", "label"), ("finding_kind", "kind"), ("metric", "metric"),
                              ("groups", "groups")):
                if col in a and a[col].notna().any() and str(a[col].dropna().iloc[0]):
                    info[name] = str(a[col].dropna().iloc[0])
        m = from_meta.get(ref, {})
        for name in ("label", "kind", "metric"):
            if m.get(name):
                info[name] = str(m[name])
        if not info["kind"]:  # the stage used to decompose CLIP association tests only
            info["kind"] = "association"
        if not info["metric"]:
            info["metric"] = "effect_size" if info["kind"] == "association" else "value"
        if not info["label"]:
            info["label"] = ref if info["kind"] != "association" or ref.startswith("association") \
                else f"association {ref}"
        out[ref] = info
    return out


def effect_digits(values: pd.Series) -> int:
    """Decimals that show the largest effect with two significant digits (at least 3)."""
    m = float(np.nanmax(np.abs(values.to_numpy(dtype=float)))) if len(values) else 0.0
    if not math.isfinite(m) or m == 0:
        return 3
    return int(min(6, max(3, -math.floor(math.log10(m)) + 1)))


def heat_map(c: pd.DataFrame, *, selected: str, sym: str, digits: int) -> alt.LayerChart:
    """Layers (rows) x heads (columns, the MLP last) coloured by effect, the selected cell outlined."""
    d = c.copy()
    d["column"] = [("MLP" if k == "mlp" else f"H{int(h)}") for k, h in zip(d["kind"], d["head"])]
    d["block"] = [f"L{int(x)}" for x in d["layer"]]
    d["ci"] = [interval_text(lo, hi, digits) for lo, hi in zip(d["ci_low"], d["ci_high"])]
    d["cell"] = [f"{v:.{digits}f}" if math.isfinite(float(v)) else "–" for v in d["effect"].astype(float)]
    d["roles"] = d["roles"].fillna("").astype(str).map(lambda s: s or "(not named: not among the top)")
    d["picked"] = d["component"].astype(str) == selected
    m = float(np.nanmax(np.abs(d["effect"].to_numpy(dtype=float)))) if len(d) else 1.0
    m = m if math.isfinite(m) and m > 0 else 1.0
    d["dark"] = d["effect"].abs() > 0.6 * m
    heads = sorted({int(h) for h, k in zip(d["head"], d["kind"]) if k != "mlp"})
    cols = [f"H{h}" for h in heads] + (["MLP"] if (d["kind"] == "mlp").any() else [])
    blocks = [f"L{x}" for x in sorted({int(x) for x in d["layer"]})]
    d = d[["component", "column", "block", "effect", "ci", "cell", "rank", "n", "before", "after", "roles",
           "picked", "dark"]]
    pick = alt.selection_point(name="cell", fields=["component"], on="click", clear=False)
    x = alt.X("column:O", sort=cols, title="head (and the layer's MLP)", axis=alt.Axis(labelAngle=0, orient="top"))
    y = alt.Y("block:O", sort=blocks, title="layer")
    base = alt.Chart(d).encode(x=x, y=y)
    tooltip = [alt.Tooltip("component:N"), alt.Tooltip("effect:Q", format=f".{digits}f", title=f"effect on {sym}"),
               alt.Tooltip("ci:N", title="95% CI"), alt.Tooltip("rank:Q"), alt.Tooltip("n:Q", title="images"),
               alt.Tooltip("before:Q", format=".3f", title=f"{sym} before"),
               alt.Tooltip("after:Q", format=".3f", title=f"{sym} after ablation"), alt.Tooltip("roles:N")]
    rect = base.mark_rect(stroke="white", strokeWidth=1).encode(
        color=alt.Color("effect:Q", scale=alt.Scale(scheme="redblue", reverse=True, domain=[-m, m]),
                        legend=alt.Legend(title=f"effect on {sym}", orient="bottom", direction="horizontal",
                                          format=f".{digits}f", gradientLength=220)),
        tooltip=tooltip).add_params(pick)
    text = base.mark_text(fontSize=11).encode(
        text="cell:N", color=alt.condition("datum.dark", alt.value("white"), alt.value("#222")), tooltip=tooltip)
    outline = base.transform_filter("datum.picked").mark_rect(fill=None, stroke="black", strokeWidth=3)
    # a fixed height is overridden by the Streamlit theme; a step per layer is kept
    return (rect + text + outline).properties(height=alt.Step(40))


def clicked_component(event: object) -> str | None:
    """The component of the clicked heat-map cell, if any."""
    try:
        points = event.selection.get("cell") or []  # type: ignore[union-attr]
        return str(points[0]["component"]) if points else None
    except (AttributeError, KeyError, TypeError, IndexError):
        return None


def map_grid_chart(g: pd.DataFrame, *, domain: list[float], scheme: str, title: str, px: int) -> alt.Chart:
    """One patch grid (``row``, ``col``, ``value``) as square cells, ``px`` pixels wide."""
    gh, gw = int(g["row"].max()) + 1, int(g["col"].max()) + 1
    step = max(4, px // max(gh, gw))
    return alt.Chart(g, title=alt.Title(title, fontSize=12, anchor="start")).mark_rect().encode(
        x=alt.X("col:O", axis=None), y=alt.Y("row:O", axis=None),
        color=alt.Color("value:Q", scale=alt.Scale(scheme=scheme, domain=domain),
                        legend=alt.Legend(orient="bottom", title=None, format=".2f", gradientLength=step * gw,
                                          offset=6)),
        tooltip=[alt.Tooltip("row:O"), alt.Tooltip("col:O"), alt.Tooltip("value:Q", format=".4f",
                                                                           title="attention")],
    ).properties(width=alt.Step(step), height=alt.Step(step))


def group_order(maps: pd.DataFrame, groups_text: str) -> list[str]:
    """The compared groups in the finding's order ("a vs b" from the ablations table), else as stored."""
    present = list(dict.fromkeys(maps["group"].astype(str)))
    named = [g.strip() for g in groups_text.split(" vs ")] if " vs " in groups_text else []
    return [g for g in named if g in present] + [g for g in present if g not in named]


def share_text(v: object) -> str:
    """A share as a percentage ("<0.1%" for a trace)."""
    f = float(v)  # type: ignore[arg-type]
    if not math.isfinite(f):
        return "–"
    return "<0.1%" if 0 < f < 0.001 else f"{f:.1%}"


def group_name(g: str) -> str:
    return f"{g} (all other images)" if g in MAP_GROUP_REST else g


def show_maps(m: pd.DataFrame, *, component: str, groups_text: str) -> None:
    """The selected head's mean attention grid in each group, side by side, and their difference."""
    groups = group_order(m, groups_text)
    grids = {g: m[m["group"].astype(str) == g] for g in groups}
    hi = float(max(np.nanmax(v["value"].to_numpy(dtype=float)) for v in grids.values()))
    hi = hi if math.isfinite(hi) and hi > 0 else 1.0
    cols = st.columns(3)
    for col, g in zip(cols, groups[:2]):
        v = grids[g]
        col.altair_chart(map_grid_chart(v[["row", "col", "value"]], domain=[0.0, hi], scheme="viridis",
                                        title=group_name(g), px=150),
                         width="content", key=f"co_map_{component}_{g}")
        col.caption(esc(f"{int(v['n_images'].iloc[0])} images · CLS/register tokens: "
                        f"{share_text(v['prefix_share'].iloc[0])} of the attention"))
    if len(groups) >= 2:
        a, b = (grids[g].set_index(["row", "col"])["value"].astype(float) for g in groups[:2])
        diff = (a - b).rename("value").reset_index()
        dm = float(np.nanmax(np.abs(diff["value"].to_numpy()))) if len(diff) else 0.0
        dm = dm if math.isfinite(dm) and dm > 0 else 1.0
        cols[2].altair_chart(map_grid_chart(diff, domain=[-dm, dm], scheme="purplegreen",
                                            title=f"{groups[0]} − {groups[1]}", px=150),
                             width="content", key=f"co_map_{component}_diff")
        cols[2].caption(esc(f"green: more attention there in {groups[0]}; purple: more in {groups[1]}"))
    prefix = {g: float(v["prefix_share"].iloc[0]) for g, v in grids.items()}
    heavy = [g for g, s in prefix.items() if s > 0.5]
    text = ("Mean attention of the pooled token over the patch grid (each group's image rows averaged; the two "
            "groups share one colour scale). The CLS/register tokens are not on the grid: their share of the "
            "attention is stated under each map.")
    if heavy:
        text += (f" In {', '.join(heavy)} most of this head's attention goes to those tokens, so its grid is the "
                 "small remainder.")
    st.caption(esc(text))


# -- the page -----------------------------------------------------------------------------------------------
path, run = current_run()
st.title("Where a finding is carried")
comp = cache.table(path, "components")
if comp is None or comp.empty:
    st.info("No component analysis in this run: it needs components.enabled: true in the config (a CLIP run "
            "with association tests, harmful labels or retrieval queries, or a labelled ViT run with group "
            "findings).")
    st.stop()
abl = cache.table(path, "ablations")
maps_table = cache.table(path, "component_maps")
meta = run.meta.get("components") if isinstance(run.meta.get("components"), dict) else {}
infos = finding_info(run, comp, abl)
refs = list(infos)

finding = st.selectbox("finding", refs, key="co_finding",
                       format_func=lambda r: f"{infos[r]['label']} — {KIND_WORDS.get(infos[r]['kind'], infos[r]['kind'])}")
info = infos[finding]
phrase, sym = metric_words(info["metric"])
the_sym = sym if sym == "d" else f"the {sym}"  # "moves d towards 0", "moves the gap towards 0"
c = comp[comp["finding"].astype(str) == finding].copy()
c["rank"] = pd.to_numeric(c["rank"], errors="coerce")
c = c.sort_values("rank")
digits = effect_digits(c["effect"])
layers = sorted({int(x) for x in c["layer"]})
output = str(meta.get("output") or ("embedding" if info["kind"] in ("association", "harmful_label") else ""))
to = {"embedding": "the image embedding", "logits": "the class logits"}.get(output, "the model's output")
before = float(c["before"].iloc[0]) if len(c) else float("nan")
groups_txt = info["groups"]
gap_note = ""
if sym == "gap" and " vs " in groups_txt:
    ga, gb = (g.strip() for g in groups_txt.split(" vs ", 1))
    gap_note = f" ({ga} − {gb})"
name = "effect size d" if sym == "d" else sym
st.markdown(f"**The finding:** {esc(info['label'])}. Its {esc(name)}{esc(gap_note)} is **{num(before)}** over "
            f"{int(c['n'].iloc[0]) if len(c) else 0} images.")
blocks = ("layer " if len(layers) == 1 else "layers ") + ", ".join(map(str, layers))
st.caption(esc(f"Direct contribution of each attention head and MLP of {blocks} to {to}. "
               f"effect = how much of {phrase} a component carries when it is mean-ablated: positive = ablating it "
               f"moves {the_sym} towards 0 (95% bootstrap interval over images). Later blocks are not re-run."))

# heat map (click a cell) and the component picker (the same choice without clicking)
names = c["component"].astype(str).tolist()
if st.session_state.get("co_pick") not in names:  # first the top head: heads have maps and are what is tested
    heads_first = c.loc[c["kind"].astype(str) == "head", "component"].astype(str).tolist() if "kind" in c else []
    st.session_state["co_pick"] = heads_first[0] if heads_first else names[0]
gen = int(st.session_state.setdefault("co_heat_gen", 0))
st.markdown(f"**Effect by layer and head** (red: ablating it moves {esc(the_sym)} towards 0; blue: away from 0; "
            "click a cell or pick the component below)")
event = st.altair_chart(heat_map(c, selected=st.session_state["co_pick"], sym=sym, digits=digits),
                        on_select="rerun", selection_mode="cell", key=f"co_heat_{refs.index(finding)}_{gen}",
                        width="stretch")
clicked = clicked_component(event)
if clicked in names and clicked != st.session_state.get("co_clicked"):
    st.session_state["co_clicked"] = clicked
    if clicked != st.session_state["co_pick"]:
        st.session_state["co_pick"] = clicked
        st.rerun()  # redraw the heat map with the clicked cell outlined


def _picked_in_box() -> None:  # a choice in the box: a fresh chart, so that clicking any cell selects again
    st.session_state["co_heat_gen"] = int(st.session_state.get("co_heat_gen", 0)) + 1
    st.session_state.pop("co_clicked", None)


pick = st.selectbox("component (by rank)", names, key="co_pick", on_change=_picked_in_box)
row = c[c["component"].astype(str) == pick].iloc[0]

st.subheader(f"{pick}: {'the MLP' if row['kind'] == 'mlp' else 'head ' + str(int(row['head']))} of layer "
             f"{int(row['layer'])}")
c1, c2, c3 = st.columns(3)
c1.metric("rank", f"{int(row['rank'])} of {len(c)}", help="1 = carries most of the finding")
c2.metric(f"effect on {sym}", f"{row['effect']:.{digits}f}", help=f"n = {int(row['n'])} images")
change = float(row["after"]) - float(row["before"])
c3.metric(f"{sym} after ablation", num(row["after"]),
          delta=f"{change:+.3f} from {num(row['before'])}" if math.isfinite(change) else None,
          delta_color="off", delta_arrow="off")
ci = interval_text(row["ci_low"], row["ci_high"], digits)
lo, hi = float(row["ci_low"]), float(row["ci_high"])
if ci:
    if lo > 0:
        verdict = f"above 0: ablating it moves {the_sym} towards 0."
    elif hi < 0:
        verdict = f"below 0: ablating it moves {the_sym} away from 0 (it works against the finding)."
    else:
        verdict = "it contains 0: this component's effect cannot be told from none."
    st.markdown(esc(f"95% interval of the effect {ci} over {int(row['n'])} images: {verdict}"))
roles_from = str(meta.get("roles_from") or ("classes" if output == "logits" else "vocabulary"))
roles = str(row["roles"]) if pd.notna(row["roles"]) else ""
if roles_from == "none":
    st.markdown("**Role in words:** _this run names no roles (components.n_roles is 0 or there was nothing to "
                "name them with)_")
elif roles:
    st.markdown(f"**Role in words** ({esc(ROLE_WORDS.get(roles_from, roles_from))}): {esc(roles)}")
else:
    st.markdown(f"**Role in words:** _not named; only the top components are ({esc(ROLE_WORDS.get(roles_from, ''))})_")

st.markdown("**Where it looks**")
if maps_table is None:
    st.caption("This run stores no spatial maps per head (it was written before the component_maps table; the "
               "decomposition itself keeps the pooled token only).")
else:
    fm = maps_table[maps_table["finding"].astype(str) == finding]
    mapped = list(dict.fromkeys(fm["component"].astype(str)))
    hm = fm[fm["component"].astype(str) == pick]
    if row["kind"] == "mlp":
        st.caption(esc(f"{pick} is an MLP: it acts on each token on its own, so it has no attention map. "
                       + (f"Heads with maps for this finding: {', '.join(mapped)}." if mapped else "")))
    elif hm.empty:
        st.caption(esc(f"No spatial map of {pick}: maps are taken for the top heads of each finding only"
                       + (f" (here {', '.join(mapped)})." if mapped else "; none for this finding.")))
    else:
        show_maps(hm, component=pick, groups_text=groups_txt)

# the test of the top-k heads against random heads
st.subheader("Top-k heads against random heads")
a = abl[abl["finding"].astype(str) == finding].sort_values("k") if abl is not None and not abl.empty else None
if a is None or a.empty:
    st.info("No ablation test for this finding in the run.")
else:
    n_sig = int(a["significant"].astype(bool).sum())
    correction = str(meta.get("correction") or "Holm over the whole table")
    st.markdown(f"**Only a significant row says where the finding lives**: its k heads move {esc(the_sym)} towards 0 "
                f"more than k random heads of the same layers do. {n_sig} of {len(a)} significant "
                f"(correction: {esc(correction)}); heads chosen on one half of the images, measured on the other. A large "
                "effect in the heat map alone does not locate the finding.")
    n_test = int(a["n_test"].iloc[0])
    st.caption(esc(f"{sym} on the held-out half ({n_test} images): {num(a['before'].iloc[0])} before ablation. "
                   f"reduction = how far ablating the k heads moves {the_sym} towards 0; random mean / q95 = the "
                   f"mean and 95th percentile of that reduction over random sets of k heads (up to "
                   f"{int(a['n_random'].max())} sets); accuracy (cost) = the "
                   "model's accuracy before → after ablating the k heads."))
    t = a.assign(
        verdict=np.where(a["significant"].astype(bool), "✔ yes", "no"),
        cost=[f"{num(x)} → {num(y)}" for x, y in zip(a["accuracy_before"], a["accuracy_after"])])
    fit_table(t[["verdict", "k", "p_adj", "reduction", "random_mean", "random_q95", "cost", "components"]],
              key="co_abl", labels={"verdict": "significant", "random_mean": "random mean", "random_q95": "random q95",
                                    "p_adj": "p (Holm)", "cost": "accuracy (cost)", "components": "heads"})
    sig = a[a["significant"].astype(bool)]
    if len(sig):
        s = sig.sort_values("k").iloc[0]
        st.markdown(esc(f"The finding lives in {s['components']} (k = {int(s['k'])}, the smallest significant set): "
                        f"ablating them moves {the_sym} from {num(s['before'])} to {num(s['after'])}, a reduction of "
                        f"{num(s['reduction'])} against {num(s['random_mean'])} for {int(s['k'])} random heads on "
                        f"average; {p_text(s['p_adj'], 'p (Holm)')}. Cost: accuracy {num(s['accuracy_before'])} → "
                        f"{num(s['accuracy_after'])}."))
    else:
        best = a.sort_values("p_adj").iloc[0]
        st.markdown(esc(f"No set of top heads moves {the_sym} towards 0 more than random heads do (smallest: k = "
                        f"{int(best['k'])}, {p_text(best['p_adj'], 'p (Holm)')}): this run does not say where the "
                        "finding lives."))
notes = [str(n) for n in (meta.get("notes") or []) if str(n)]
if notes:
    with st.expander(f"Notes of the components stage ({len(notes)})"):
        st.markdown("\n".join(f"- {esc(n)}" for n in notes))
