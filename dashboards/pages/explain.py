"""Explain: browse images by group, label, prediction and correctness; stored maps of every method
side by side with their faithfulness scores (named with the run's deletion baseline) and the method's
verdict against a random map (table ``faithfulness_verdicts``; a run without it shows none); live per-layer/per-head attention, rollout from a
chosen start layer and (CLIP) text-prompt maps when the model can be loaded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from audit.errors import AuditError
from audit.viz.maps import prediction_line
from dashboards import cache
from dashboards.ui import current_run, esc, fit_table, map_image, md_table, overlay_png

NAV_ORDER = 2  # place in the sidebar navigation (dashboards/app.py reads it, with NAV_TITLE)
NAV_TITLE = "Explain"

PER_PAGE = 12
path, run = current_run()
groups = run.group_columns
methods = cache.methods(path)

st.title("Explain")

pred = cache.table(path, "predictions")
if pred is None:
    st.error("This run has no predictions table; nothing to browse.")
    st.stop()

# -- filters (rows of three, so that every chip and label has room) ---------------------------------
FILTERS_PER_ROW = 3
with st.container(border=True):
    mask = pd.Series(True, index=pred.index)
    choices = [(g, g) for g in groups] + [(name, "prediction" if name == "pred" else name) for name in ("label", "pred")
                                          if name in pred and pred[name].notna().any()]
    n_slots = len(choices) + 2
    slots = [c for _ in range((n_slots + FILTERS_PER_ROW - 1) // FILTERS_PER_ROW)
             for c in st.columns(FILTERS_PER_ROW)]
    for (name, label), col in zip(choices, slots):
        chosen = col.multiselect(label, sorted(pred[name].dropna().astype(str).unique()), key=f"ex_f_{name}",
                                 placeholder="all")
        if chosen:
            mask &= pred[name].astype(str).isin(chosen)
    k = len(choices)
    correctness = slots[k].selectbox("correct", ["all", "correct", "wrong"], key="ex_f_correct")
    if correctness != "all" and "correct" in pred:
        mask &= pred["correct"].fillna(correctness == "wrong").astype(bool) == (correctness == "correct")
    slots[k + 1].markdown("&nbsp;")  # align the checkbox with the boxes beside it
    only_maps = slots[k + 1].checkbox("only with maps", value=bool(methods), key="ex_f_maps",
                                      disabled=not methods, help="only images whose explanation maps are stored")
    if only_maps and methods:
        stored = set()
        for m in methods:
            stored |= set(cache.maps(path, m).index)
        mask &= pred["row_id"].isin(stored)

view = pred[mask].reset_index(drop=True)
ids = view["row_id"].astype(int).tolist()
st.caption(f"{len(ids):,} of {len(pred):,} images match")
if not ids:
    st.info("No image matches these filters.")
    st.stop()

# -- position (1-based) in the filtered list ---------------------------------------------------------
pos = st.session_state.get("ex_pos", 1)
if not isinstance(pos, int) or not 1 <= pos <= len(ids):
    pos = 1
st.session_state["ex_pos"] = pos


def _go(to: int) -> None:
    st.session_state["ex_pos"] = int(min(max(1, to), len(ids)))


# -- thumbnail grid (one page around the current image) ------------------------------------------------
with st.expander("Image grid", expanded=True):
    page = (pos - 1) // PER_PAGE
    n_pages = (len(ids) + PER_PAGE - 1) // PER_PAGE
    pc1, pc2, pc3 = st.columns([1, 3, 1])
    pc1.button("◀ page", key="ex_prev_page", on_click=_go, args=(page * PER_PAGE - PER_PAGE + 1,),
               disabled=page == 0)
    pc2.caption(f"page {page + 1} of {n_pages}")
    pc3.button("page ▶", key="ex_next_page", on_click=_go, args=(page * PER_PAGE + PER_PAGE + 1,),
               disabled=page >= n_pages - 1)
    tcols = st.columns(PER_PAGE // 2)
    for j, i in enumerate(range(page * PER_PAGE, min(len(ids), (page + 1) * PER_PAGE))):
        r = view.iloc[i]
        with tcols[j % len(tcols)]:
            png, _problem = cache.thumbnail(path, int(r["row_id"]))
            mark = "✓" if r.get("correct") is True or r.get("correct") == 1 else ("✗" if pd.notna(r.get("correct")) else "")
            st.image(png, caption=f"#{int(r['row_id'])} {r.get('pred', '')} {mark}")
            st.button("show", key=f"ex_show_{i}", on_click=_go, args=(i + 1,), type="primary" if i + 1 == pos else "secondary")

# -- the selected image -----------------------------------------------------------------------------------
nc1, nc2, nc3 = st.columns([1, 1, 2])
nc1.button("◀ previous", key="ex_prev", on_click=_go, args=(pos - 1,), disabled=pos <= 1)
nc2.button("next ▶", key="ex_next", on_click=_go, args=(pos + 1,), disabled=pos >= len(ids))
nc3.number_input("image (position in the filtered list)", min_value=1, max_value=len(ids), key="ex_pos")
sc1, sc2 = st.columns([2, 1])
scale = sc1.radio("map colour scale", ["image", "run"], horizontal=True, key="ex_scale",
                  format_func=lambda s: {"image": "per image (min–max)", "run": "per method, run-wide"}[s],
                  help="Maps are stored raw. 'per image' stretches each map to its own range; 'run-wide' "
                       "uses one range per method (1st–99th percentile of all stored maps), so images and "
                       "groups can be compared. The colour bar under each map and its caption give the range.")
smooth = sc2.toggle("smooth maps", value=False, key="ex_smooth",
                    help="Off: each patch of the model's grid is one block (what the model resolves). On: "
                         "bilinear interpolation between patch centres (looks finer than the model sees).")
pos = int(st.session_state["ex_pos"])
row = view.iloc[pos - 1]
row_id = int(row["row_id"])

st.subheader(f"Image #{row_id}")
info_cols = [c for c in ["row_id", "label", "pred", "score", "label_score", "correct"] if c in view]
st.markdown(md_table(view.iloc[[pos - 1]][info_cols].rename(columns={"score": "p(pred)", "label_score": "p(label)"})
                     .set_index("row_id")))
if groups:
    st.caption(" · ".join(f"{esc(g)} = {esc(row[g])}" for g in groups if g in row))

faith = cache.faithfulness_for(path, row_id)
# one deletion baseline per run: run.json "faithfulness" (older runs: the config's explain.baseline)
_fmeta = run.meta.get("faithfulness") or {}
deletion_baseline = _fmeta.get("baseline") or ((run.meta.get("config") or {}).get("explain") or {}).get("baseline")
base_label = f"{deletion_baseline} baseline" if deletion_baseline else "baseline not recorded"
insertion_start = _fmeta.get("insertion_start", "blur")
verdicts = cache.table(path, "faithfulness_verdicts")
verdict_of = {} if verdicts is None or verdicts.empty else {
    str(r["method"]): (str(r["verdict"]), str(r["reason"])) for _, r in verdicts.drop_duplicates("method").iterrows()}
pred_name = str(row["pred"]) if "pred" in row and pd.notna(row["pred"]) else None
pred_score = float(row["score"]) if "score" in row and pd.notna(row["score"]) else None
# high-norm artefact tokens (audit.explain.artifacts): outlined on the attention-method maps of affected images
_art_img, _art_tok = cache.table(path, "artifact_images"), cache.table(path, "artifact_tokens")
_art = None if _art_img is None else _art_img[(_art_img["row_id"] == row_id) & _art_img["affected"].astype(bool)]
_cells = [] if _art_tok is None else [(int(r), int(c)) for r, c in _art_tok.loc[
    _art_tok["row_id"] == row_id, ["token_row", "token_col"]].itertuples(index=False)]


def _attention_method(m: str) -> bool:
    import audit.explain  # noqa: F401  (registers the methods)
    from audit.registry import METHODS

    return m in METHODS.names() and bool(METHODS.meta(m).get("needs_attention"))


def _outlined(png_bytes: bytes, grid: tuple[int, int], height: int) -> bytes:
    import io

    from PIL import Image

    from audit.viz.maps import outline_cells

    rgb = np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(outline_cells(rgb, _cells, grid, height=height)).save(buf, format="PNG")
    return buf.getvalue()


cols = st.columns(1 + max(1, len(methods)))
with cols[0]:
    png, problem = cache.thumbnail(path, row_id, size=cache.OVERLAY)
    st.image(png, caption="image")
    if problem:
        st.warning(esc(problem))
if not methods:
    cols[1].info("No explanation maps are stored in this run.")
for m, col in zip(methods, cols[1:]):
    with col:
        res = overlay_png(path, row_id, m, scale=scale, smooth=smooth)
        if res is None:
            st.info(f"{esc(m)}: no stored map for this image")
            continue
        shown = res[0]
        marked = _art is not None and len(_art) > 0 and bool(_cells) and _attention_method(m) and not res[1]
        if marked:
            import io

            from PIL import Image

            shown = _outlined(shown, cache.maps(path, m).get(row_id).shape, Image.open(io.BytesIO(png)).height)
        st.image(shown, caption=f"{m} · {res[2]}" if res[2] else m)
        if marked:
            from audit.viz.maps import artifact_legend

            a0 = _art.iloc[0]
            pooled = "CLS" if "of the CLS attention" in str(a0["caveat"]) else "pooled (mean patch)"
            st.caption(esc(artifact_legend(int(a0["n_tokens"]), float(a0["attention_share"]), pooled=pooled)))
            st.warning(esc(str(a0["caveat"])))
        if m in verdict_of:
            st.markdown(f"**{esc(m)}: {esc(verdict_of[m][0])}**", help=esc(verdict_of[m][1]))
        target = (str(faith.loc[m, "target_class"]) if not faith.empty and m in faith.index
                  and "target_class" in faith.columns and pd.notna(faith.loc[m, "target_class"]) else None)
        note = prediction_line(target=target, prediction=pred_name, score=pred_score)
        if note:
            st.caption(esc(note))
        if res[1]:
            st.warning(esc(res[1]))
        if not faith.empty and m in faith.index and pd.notna(faith.loc[m, "deletion_auc"]):
            f = faith.loc[m]
            st.text(f"deletion AUC {float(f['deletion_auc']):.3f} (random {float(f['random_deletion_auc']):.3f}, "
                    f"{base_label})\n"
                    f"insertion AUC {float(f['insertion_auc']):.3f} (random {float(f['random_insertion_auc']):.3f}, "
                    f"{insertion_start} start)")
        else:
            st.caption("no faithfulness score stored")
st.caption(f"Lower deletion AUC and higher insertion AUC mean a more faithful map; each is shown beside a "
           f"random map's AUC on the same image. Deleted patches become the {base_label} of this run"
           f"{'' if deletion_baseline else ' (an older run: see its config)'}; insertion reveals patches on a "
           f"{insertion_start} start."
           + (" The verdict under each map tests the method against the random map over all explained images "
              "(paired, Holm-corrected; hover for the numbers)." if verdict_of else ""))

summary = cache.table(path, "faithfulness_summary")
if (summary is not None and not summary.empty) or verdict_of:
    with st.expander("Faithfulness over all explained images"):
        if verdict_of:
            st.markdown(f"**Against a random map** (deletion: {esc(base_label)})")
            vcols = ["method", "score", "value", "random_value", "difference", "ci_low", "ci_high", "n", "p_adj",
                     "verdict"]
            fit_table(verdicts[[c for c in vcols if c in verdicts]], key="ex_verdicts",
                      labels={"random_value": "random", "difference": "diff.", "ci_low": "diff. low",
                              "ci_high": "diff. high", "p_adj": "p (Holm)"})
            if "baseline" in verdicts:
                refs = "; ".join(f"{s}: {b}" for s, b in verdicts.drop_duplicates("score")[["score", "baseline"]]
                                 .itertuples(index=False))
                st.caption(esc(f"The random reference of each score: {refs}."))
        if summary is not None and not summary.empty:
            fit_table(summary, key="ex_faith_summary")

# -- stored per-layer attention (optional files) ------------------------------------------------------------
stored_layers = cache.layer_attention_files(path)
if stored_layers:
    with st.expander("Stored attention by layer and head"):
        layer = st.select_slider("layer", options=stored_layers, key="ex_stored_layer")
        store = cache.maps(path, f"attention_L{layer}")
        i = store.index.get(row_id)
        if i is None:
            st.info("No stored attention for this image.")
        else:
            heads = store.maps[i].astype(np.float32)  # (H, gh, gw)
            img = cache.load_image(path, row_id)
            hc = st.columns(min(8, heads.shape[0]))
            for h in range(heads.shape[0]):
                map_image(hc[h % len(hc)], img, heads[h], size=96, caption=f"head {h}", smooth=smooth)

# -- live: attention per layer and head, rollout start layer, CLIP prompt ----------------------------------
st.subheader("Live probing")
live = st.toggle("Load the model to compute attention and prompt maps live", key="ex_live")
if live:
    lm = cache.live_model(path)
    if not lm.ok:
        st.warning(f"The model cannot be loaded, so live probing is off (stored results above are unaffected): "
                   f"{esc(lm.error)}")
    else:
        n_blocks = len(lm.adapter.vision_blocks())
        lc1, lc2, lc3 = st.columns(3)
        start = lc1.slider("rollout start layer", 0, n_blocks - 1, 0, key="ex_start")
        fusion = lc2.selectbox("head fusion", ["mean", "max", "min"], key="ex_fusion")
        layer = lc3.slider("layer for per-head attention", 0, n_blocks - 1, n_blocks - 1, key="ex_layer")
        try:
            att, roll = cache.live_attention(path, row_id, start_layer=start, head_fusion=fusion)
            img = cache.load_image(path, row_id)
        except AuditError as e:
            st.error(esc(e))
        else:
            map_image(st, img, roll, size=cache.OVERLAY, caption=f"rollout from layer {start} ({fusion} over heads)",
                      smooth=smooth)
            st.markdown(f"**Layer {layer}: attention of the pooled token, per head**")
            heads = att[layer]  # (H, gh, gw)
            hc = st.columns(min(8, heads.shape[0]))
            for h in range(heads.shape[0]):
                map_image(hc[h % len(hc)], img, heads[h], size=96, caption=f"head {h}", smooth=smooth)
            st.markdown("**Mean over heads, per layer**")
            lcols = st.columns(min(8, att.shape[0]))
            for li in range(att.shape[0]):
                map_image(lcols[li % len(lcols)], img, att[li].mean(0), size=96, caption=f"layer {li}", smooth=smooth)
        if run.kind == "clip":
            st.markdown("**Text prompt (CLIP)**")
            prompt = st.text_input("prompt", value="a photo of a " + str(row.get("label") or "thing"),
                                   max_chars=200, key="ex_prompt")
            if prompt.strip():
                try:
                    pmap, words, rel = cache.live_prompt(path, row_id, prompt.strip())
                    img = cache.load_image(path, row_id)
                except AuditError as e:
                    st.error(esc(e))
                else:
                    pc1, pc2 = st.columns([1, 2])
                    map_image(pc1, img, pmap, size=cache.OVERLAY, caption="image-side relevance (GAE)", smooth=smooth)
                    tok = pd.DataFrame({"token": words, "relevance": rel})
                    pc2.dataframe(tok, hide_index=True, width="stretch", key="ex_token_rel",
                                  column_config={"relevance": st.column_config.ProgressColumn(
                                      format="%.3f", min_value=0.0, max_value=1.0)})
