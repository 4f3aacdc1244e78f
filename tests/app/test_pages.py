"""Every dashboard page under streamlit.testing.v1.AppTest on factory runs (classifier and CLIP):
no exception, the expected widgets, and shown numbers equal to the run's tables."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from audit.runs import Run

PAGES = ["pages/overview.py", "pages/explain.py", "pages/groups.py", "pages/slices.py", "pages/embeddings.py",
         "pages/clip_probe.py", "pages/compare.py", "pages/components.py"]


def _unescape(cell: str) -> str:
    return re.sub(r"\\(.)", r"\1", cell.strip())


def md_frames(at) -> list[pd.DataFrame]:
    """Markdown tables (``dashboards.ui.md_table``) parsed back: first column as the index,
    cells unescaped, numeric columns as numbers."""
    out = []
    for m in at.markdown:
        lines = str(m.value).splitlines()
        if len(lines) < 2 or not lines[0].startswith("| ") or not lines[1].startswith("| ---"):
            continue
        rows = [[_unescape(c) for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]] for line in lines]
        df = pd.DataFrame(rows[2:], columns=rows[0])
        for c in df.columns:
            num = pd.to_numeric(df[c], errors="coerce")
            if num.notna().all() and len(df):
                df[c] = num
        out.append(df.set_index(df.columns[0]))
    return out


def frames(at) -> list[pd.DataFrame]:
    """Every st.dataframe and st.table value on the page, and every markdown table."""
    return [e.value for e in at.dataframe] + [e.value for e in at.table] + md_frames(at)


def frame_with(at, *columns: str) -> pd.DataFrame:
    """The first shown frame that has all ``columns`` (index names count)."""
    for df in frames(at):
        names = set(map(str, df.columns)) | {str(n) for n in df.index.names if n is not None}
        if set(columns) <= names:
            return df.reset_index() if set(columns) - set(map(str, df.columns)) else df
    raise AssertionError(f"no frame with columns {columns}; shown: {[list(f.columns) for f in frames(at)]}")


def no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def texts(at) -> str:
    parts = [e.value for e in at.markdown] + [e.value for e in at.text] + [e.value for e in at.caption]
    parts += [e.value for e in at.subheader] + [e.value for e in at.title]
    return "\n".join(map(str, parts))


# ----------------------------------------------------------------------------- all pages, both kinds
@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_classifier_and_clip_runs(app, clf_run: Run, clip_run: Run, page: str) -> None:
    at = app(clf_run, clip_run, page=page)
    no_exception(at)
    # AppTest drops the sidebar after switch_page (a testing quirk; the browser test covers the
    # real sidebar), so the run is chosen through the selector's session-state key.
    at.session_state["run_idx"] = 1  # the CLIP run
    at.run()
    no_exception(at)
    assert at.title, "every page has a title"


def test_sidebar_selects_among_the_given_runs_only(app, clf_run: Run, clip_run: Run) -> None:
    at = app(clf_run, clip_run)
    box = at.selectbox(key="run_idx")
    assert box.options == ["dashboard_runs0/vit-biased", "dashboard_runs0/clip-biased"]
    box.set_value(1).run()
    prov = frame_with(at, "field", "value").set_index("field")["value"]
    assert prov["model spec"] == clip_run.meta["model"]["spec"]
    at.query_params["run"] = "/etc"  # a URL cannot point the app at another path
    at.run()
    no_exception(at)
    prov = frame_with(at, "field", "value").set_index("field")["value"]
    assert prov["model spec"] in {clf_run.meta["model"]["spec"], clip_run.meta["model"]["spec"]}
    assert "/etc" not in texts(at)


# ----------------------------------------------------------------------------- Overview
def test_overview_numbers_equal_the_run(app, clf_run: Run) -> None:
    at = app(clf_run)
    no_exception(at)
    assert at.title[0].value == "Overview"
    metrics = {m.label: m.value for m in at.metric}
    pred = clf_run.table("predictions")
    assert metrics["Images used"] == f"{clf_run.meta['dataset']['n_used']:,}"
    assert metrics["Accuracy"] == f"{pred['correct'].astype(bool).mean():.3f}"
    assert metrics["Images skipped"] == str(len(clf_run.meta["skipped"]))
    assert metrics["Map methods"] == str(len(clf_run.methods))
    samples = clf_run.table("samples")
    for g in clf_run.group_columns:
        shown = frame_with(at, g, "n", "share").set_index(g)["n"]
        expected = samples[g].value_counts()
        assert shown.to_dict() == expected.to_dict()
    prov = frame_with(at, "field", "value").set_index("field")["value"]
    assert prov["model fingerprint"] == clf_run.meta["model"]["fingerprint"]
    assert prov["rows used"] == str(clf_run.meta["dataset"]["n_used"])
    body = texts(at).replace("\\", "")
    for line in clf_run.headline():
        assert line in body


def test_overview_shows_the_policy_verdict(app, clf_run: Run, tmp_path) -> None:
    from audit.report.policy import evaluate, load_policy

    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nname: gate\nattributes: [background]\nmax_accuracy_gap:\n  threshold: 0.05\n")
    verdict = evaluate(clf_run, load_policy(policy))
    assert not verdict.passed  # the planted background gap (~0.2) breaks a 0.05 gate
    at = app(clf_run, policy=policy)
    no_exception(at)
    assert any(e.value.startswith("FAIL") for e in at.error)
    shown = frame_with(at, "rule", "attribute", "observed", "passed")
    np.testing.assert_allclose(shown["observed"].astype(float), verdict.rows["observed"].astype(float))


def test_no_run_gives_a_clear_message(app, tmp_path) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    at = app(empty)
    no_exception(at)
    assert any("No run found" in e.value for e in at.error)
    assert any("holds no run" in w.value for w in at.warning)


def test_partial_run_is_reported_not_crashed(app, tmp_path) -> None:
    run = Run.create(tmp_path / "partial")  # status "partial"
    at = app(run)
    no_exception(at)
    assert any("unfinished run" in e.value for e in at.error)


# ----------------------------------------------------------------------------- Explain
def test_explain_shows_every_method_with_its_faithfulness(app, clf_run: Run) -> None:
    at = app(clf_run, page="pages/explain.py")
    no_exception(at)
    labels = {w.label for w in at.multiselect}
    assert {"background", "colour", "label", "prediction"} <= labels
    assert at.selectbox(key="ex_f_correct").options == ["all", "correct", "wrong"]
    heading = next(s.value for s in at.subheader if s.value.startswith("Image #"))
    row_id = int(heading.split("#")[1])
    faith = clf_run.table("faithfulness")
    shown = [t.value for t in at.text if t.value.startswith("deletion AUC")]
    assert len(shown) == len(clf_run.methods)
    for m, txt in zip(clf_run.methods, shown):
        f = faith[(faith.row_id == row_id) & (faith.method == m)].iloc[0]
        assert f"deletion AUC {f.deletion_auc:.3f}" in txt
        assert f"insertion AUC {f.insertion_auc:.3f}" in txt
    # grid thumbnails (12 per page) + the image + one overlay per method
    assert len(at.image) == 12 + 1 + len(clf_run.methods)
    info = frame_with(at, "row_id", "pred", "correct")
    pred = clf_run.table("predictions").set_index("row_id")
    assert info["pred"].iloc[0] == pred.loc[row_id, "pred"]


def test_explain_names_unusable_maps_instead_of_drawing_them(app, clf_run: Run, tmp_path) -> None:
    import shutil

    path = tmp_path / "nan-maps"
    shutil.copytree(clf_run.path, path)
    run = Run.open(path)
    m_nan, m_flat = run.methods[:2]
    maps, rows = run.maps(m_nan)
    run.write_maps(m_nan, np.full(maps.shape, np.nan, np.float32), rows)  # every map overflowed
    maps, rows = run.maps(m_flat)
    run.write_maps(m_flat, np.zeros(maps.shape, np.float32), rows)  # every map without signal
    run.save_meta()
    at = app(run, page="pages/explain.py")
    no_exception(at)
    warnings = [w.value.replace("\\", "") for w in at.warning]  # shown escaped (never as markup)
    assert any(w.startswith(f"{m_nan}: no usable map") and "NaN/Inf" in w for w in warnings), warnings
    assert any(w.startswith(f"{m_flat}: no usable map") and "constant map" in w for w in warnings), warnings
    assert len(at.image) == 12 + 1 + len(run.methods)  # a placeholder stands where the map would be


def test_explain_names_the_baseline_and_shows_each_methods_verdict(app, clf_run: Run, tmp_path) -> None:
    import shutil

    from audit.explain.verdicts import faithfulness_verdicts

    # a run without a verdicts table and without a recorded baseline: nothing is invented
    bare = tmp_path / "bare"
    shutil.copytree(clf_run.path, bare)
    (bare / "tables" / "faithfulness_verdicts.parquet").unlink()
    old = Run.open(bare)
    old.meta.pop("faithfulness", None)
    old.meta.get("config", {}).get("explain", {}).pop("baseline", None)
    old.meta["tables"] = [t for t in old.meta.get("tables", []) if t != "faithfulness_verdicts"]
    old.save_meta()
    at = app(old, page="pages/explain.py")
    no_exception(at)
    assert not any("random" in str(m.value) and "**" in str(m.value) for m in at.markdown)
    assert all("baseline not recorded" in t.value for t in at.text if t.value.startswith("deletion AUC"))
    path = tmp_path / "with-verdicts"
    shutil.copytree(clf_run.path, path)
    run = Run.open(path)
    v = faithfulness_verdicts(run.table("faithfulness"), run.table("sanity"), n_boot=200, n_perm=499,
                              perturbation="black")
    run.write_table("faithfulness_verdicts", v)
    run.meta["faithfulness"] = {"baseline": "black", "insertion_start": "blur", "steps": 16}
    run.save_meta()
    at = app(run, page="pages/explain.py")
    no_exception(at)
    shown = [t.value for t in at.text if t.value.startswith("deletion AUC")]
    assert len(shown) == len(run.methods) and all(", black baseline)" in t and "blur start" in t for t in shown)
    per = v.drop_duplicates("method").set_index("method")["verdict"]
    labels = [str(m.value).replace("\\", "") for m in at.markdown]
    for m in run.methods:  # next to every map
        assert f"**{m}: {per[m]}**" in labels, labels
    assert per["rollout"] == "fails the sanity check"  # the factory's rollout is flagged
    table = frame_with(at, "method", "score", "verdict", "p_adj")
    assert set(table["method"]) == set(run.methods)


def test_explain_next_and_filters(app, clf_run: Run) -> None:
    at = app(clf_run, page="pages/explain.py")
    stored = set(clf_run.maps(clf_run.methods[0])[1].tolist())
    pred = clf_run.table("predictions")
    water = pred[(pred.background == "water") & pred.row_id.isin(stored)].row_id.tolist()
    at.multiselect(key="ex_f_background").set_value(["water"]).run()
    no_exception(at)
    assert any(c.value.startswith(f"{len(water)} of {len(pred)}") for c in at.caption)
    assert next(s.value for s in at.subheader if s.value.startswith("Image #")) == f"Image #{water[0]}"
    at.button(key="ex_next").click().run()
    assert next(s.value for s in at.subheader if s.value.startswith("Image #")) == f"Image #{water[1]}"
    at.selectbox(key="ex_f_correct").set_value("wrong").run()
    no_exception(at)
    wrong = pred[(pred.background == "water") & ~pred.correct & pred.row_id.isin(stored)].row_id.tolist()
    assert any(c.value.startswith(f"{len(wrong)} of") for c in at.caption)


def test_explain_live_attention_leaves_no_hook(app, clf_run: Run) -> None:
    from audit.capture import assert_no_hooks
    from audit.explain import explain
    from dashboards import cache

    at = app(clf_run, page="pages/explain.py")
    at.toggle(key="ex_live").set_value(True).run()
    no_exception(at)
    assert not [w.value for w in at.warning if "cannot be loaded" in w.value]
    captions = "\n".join(c for i in at.image for c in i.captions)
    assert "rollout from layer 0" in captions and "head 1" in captions and "layer 1" in captions
    at.slider(key="ex_start").set_value(1).run()
    no_exception(at)
    lm = cache.live_model(str(clf_run.path))
    assert lm.ok
    assert_no_hooks(lm.adapter.model)
    row_id = int(next(s.value for s in at.subheader if s.value.startswith("Image #")).split("#")[1])
    att, roll = cache.live_attention(str(clf_run.path), row_id, start_layer=1)
    x = cache.model_input(str(clf_run.path), row_id, lm)
    ref = explain(lm.adapter, x, method="rollout", start_layer=1, keep_attention=True)
    np.testing.assert_allclose(roll, ref.grid_maps[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(att, ref.attention[0].float().numpy(), rtol=1e-3, atol=1e-4)
    assert att.shape[:2] == (2, 2)  # (layers, heads) of the tiny ViT


def test_explain_live_clip_prompt_token_relevance(app, clip_run: Run) -> None:
    at = app(clip_run, page="pages/explain.py")
    at.toggle(key="ex_live").set_value(True).run()
    no_exception(at)
    at.text_input(key="ex_prompt").set_value("a photo of a red circle").run()
    no_exception(at)
    tok = frame_with(at, "token", "relevance")
    assert tok["token"].str.strip().tolist() == ["a", "photo", "of", "a", "red", "circle"]
    assert tok["relevance"].sum() == pytest.approx(1.0, abs=1e-5)
    assert (tok["relevance"] >= 0).all()


def test_live_model_failure_is_a_message(app, control_run: Run) -> None:
    at = app(control_run, page="pages/explain.py")
    at.toggle(key="ex_live").set_value(True).run()
    no_exception(at)
    assert any("cannot be loaded" in w.value for w in at.warning)


# ----------------------------------------------------------------------------- Groups
def test_groups_numbers_equal_group_performance(app, clf_run: Run) -> None:
    at = app(clf_run, page="pages/groups.py")
    no_exception(at)
    perf = clf_run.table("group_performance")
    at.selectbox(key="gr_attribute").set_value("background").run()
    at.selectbox(key="gr_metric").set_value("accuracy").run()
    shown = frame_with(at, "group", "value", "ci_low", "ci_high", "n", "small").set_index("group")
    exp = perf[(perf.attribute == "background") & (perf.metric == "accuracy") & (perf.cls == "__all__")].set_index("group")
    assert set(shown.index) == set(exp.index)
    for g in exp.index:
        for c in ("value", "ci_low", "ci_high", "n"):
            assert shown.loc[g, c] == pytest.approx(exp.loc[g, c]), (g, c)
    # intersections: small groups are flagged
    inter = next(a for a in at.selectbox(key="gr_attribute").options if "×" in a)
    at.selectbox(key="gr_attribute").set_value(inter).run()
    no_exception(at)
    exp = perf[(perf.attribute == inter) & (perf.metric == "accuracy") & (perf.cls == "__all__")]
    if exp.small.any():
        assert any("below the minimum size" in w.value for w in at.warning)


def test_groups_disparities_use_the_chosen_correction(app, clf_run: Run) -> None:
    at = app(clf_run, page="pages/groups.py")
    disp = clf_run.table("disparities")
    d = disp[disp.attribute == "background"].set_index(["metric", "cls"])
    shown = frame_with(at, "metric", "cls", "p_holm", "significant").set_index(["metric", "cls"])
    for key, r in shown.iterrows():
        assert r["p_holm"] == pytest.approx(d.loc[key, "p_holm"], nan_ok=True)
        assert bool(r["significant"]) == bool(d.loc[key, "p_holm"] < 0.05)
    at.radio(key="gr_corr").set_value("bh").run()
    no_exception(at)
    shown = frame_with(at, "metric", "cls", "p_bh", "significant").set_index(["metric", "cls"])
    for key, r in shown.iterrows():
        assert r["p_bh"] == pytest.approx(d.loc[key, "p_bh"], nan_ok=True)
        assert bool(r["significant"]) == bool(d.loc[key, "p_bh"] < 0.05)


def test_groups_disparities_lead_with_significant_then_largest_gaps(app, clf_run: Run) -> None:
    at = app(clf_run, page="pages/groups.py")
    no_exception(at)
    shown = frame_with(at, "metric", "cls", "difference", "p_holm", "significant")
    sig = shown["significant"].astype(bool).tolist()
    assert sig == sorted(sig, reverse=True)  # every significant row before every other
    for flag in (True, False):
        gaps = shown.loc[shown["significant"].astype(bool) == flag, "difference"].tolist()
        assert gaps == sorted(gaps, reverse=True)
    assert shown["difference"].notna().all()  # untested rows are listed with their reason, not as empty rows
    selected = [t.value for t in at.text if t.value.startswith("Selected:")]
    assert selected and all("= <" not in s for s in selected), selected
    assert all(re.search(r"\bp (<|=) ", s) for s in selected), selected


def test_groups_flag_small_region_mass_groups(app, clf_run: Run) -> None:
    at = app(clf_run, page="pages/groups.py")
    no_exception(at)
    region = clf_run.table("region_mass")
    method = at.selectbox(key="gr_region_method").value
    sel = region[(region.method == method) & (region.attribute == "background")]
    shown = [f for f in frames(at) if {"group", "value", "n", "small"} <= set(f.columns)][-1]  # after performance
    assert shown["small"].astype(bool).tolist() == sel.sort_values("group")["small"].astype(bool).tolist()
    if sel["small"].any():
        assert any("fewer than" in w.value and "explained images" in w.value for w in at.warning)


def test_explain_maps_name_their_scale_and_target_and_can_be_smoothed(app, clf_run: Run) -> None:
    at = app(clf_run, page="pages/explain.py")
    no_exception(at)
    captions = [c for i in at.image for c in i.captions]
    for m in clf_run.methods:  # every map's caption names its colour scale and range
        assert any(c.startswith(f"{m} · per-image scale") for c in captions), captions
    heading = next(s.value for s in at.subheader if s.value.startswith("Image #"))
    row_id = int(heading.split("#")[1])
    pred = clf_run.table("predictions").set_index("row_id").loc[row_id]
    notes = [str(c.value).replace("\\", "") for c in at.caption if "target" in str(c.value)]
    assert len(notes) == len(clf_run.methods) and all(str(pred["pred"]) in n and "p" in n for n in notes), notes
    before = [i.value for i in at.image]
    at.toggle(key="ex_smooth").set_value(True).run()
    no_exception(at)
    assert [i.value for i in at.image] != before  # the smoothed maps are other pictures
    at.radio(key="ex_scale").set_value("run").run()
    no_exception(at)
    captions = [c for i in at.image for c in i.captions]
    assert any("run-wide scale" in c for c in captions), captions


# ----------------------------------------------------------------------------- Embeddings
def test_embeddings_tables_and_point_detail(app, clf_run: Run) -> None:
    at = app(clf_run, page="pages/embeddings.py")
    no_exception(at)
    assert at.selectbox(key="emb_colour").options[:2] == ["background", "colour"]
    probe = frame_with(at, "attribute", "balanced_accuracy", "null_p95")
    exp = clf_run.table("linear_probe")
    np.testing.assert_allclose(probe["balanced_accuracy"].to_numpy(), exp["balanced_accuracy"].to_numpy())
    stored = sorted(clf_run.maps(clf_run.methods[0])[1].tolist())
    at.number_input(key="emb_row").set_value(stored[2]).run()
    no_exception(at)
    assert any(m.value == f"**Image #{stored[2]}**" for m in at.markdown)
    assert len(at.image) == 1 + len(clf_run.methods)


def test_embeddings_association_shows_the_words(app, clip_run: Run, tmp_path) -> None:
    import shutil

    path = tmp_path / "with-words"
    shutil.copytree(clip_run.path, path)
    run = Run.open(path)
    tests = run.table("association")
    first = tests.iloc[0]
    run.meta["config"].setdefault("clip", {})["association"] = [{
        "name": str(first["test"]), "attribute": str(first["attribute"]), "x_group": str(first["X"]),
        "y_group": str(first["Y"]), "a_texts": ["a photo of something kind", "a photo of something calm"],
        "b_texts": ["a photo of something cruel", "a photo of something loud"]}]
    run.save_meta()
    at = app(run, page="pages/embeddings.py")
    no_exception(at)
    body = texts(at).replace("\\", "")
    assert f"**{first['test']}**: A = kind, calm; B = cruel, loud" in body
    assert "a photo of something" in body
    shown = frame_with(at, "test", "X", "Y", "effect_size", "p_value")
    np.testing.assert_allclose(shown["effect_size"].to_numpy(), tests["effect_size"].to_numpy())


# ----------------------------------------------------------------------------- CLIP probe
def test_clip_probe_on_a_classifier_run_explains_itself(app, clf_run: Run) -> None:
    at = app(clf_run, page="pages/clip_probe.py")
    no_exception(at)
    assert any("needs a CLIP run" in i.value for i in at.info)


def test_clip_probe_stored_tables(app, clip_run: Run) -> None:
    at = app(clip_run, page="pages/clip_probe.py")
    no_exception(at)
    hr = clip_run.table("harmful_rates")
    shown = frame_with(at, "attribute", "group", "rate", "small")
    attr = at.selectbox(key="cp_hr_attr").value
    np.testing.assert_allclose(shown["rate"].to_numpy(), hr[hr.attribute == attr]["rate"].to_numpy())


def test_clip_probe_live_zero_shot_matches_an_independent_computation(app, clip_run: Run) -> None:
    import torch

    from dashboards import cache

    at = app(clip_run, page="pages/clip_probe.py")
    at.toggle(key="cp_live").set_value(True).run()
    no_exception(at)
    labels = ["circle", "square", "criminal"]
    at.text_area(key="cp_labels").set_value("circle\nsquare\ncriminal | harmful")
    at.button[0].click()  # the form's submit button
    at.run()
    no_exception(at)
    share = frame_with(at, "circle", "square", "criminal")
    # independent: encode the prompts with the text tower, argmax over stored image embeddings
    lm = cache.live_model(str(clip_run.path))
    with torch.no_grad():
        t = lm.adapter.encode_text(lm.adapter.tokenize([f"a photo of a {x}." for x in labels])).float()
    t = (t / t.norm(dim=-1, keepdim=True)).numpy()
    emb = clip_run.arrays("embeddings")
    img = emb["image"] / np.linalg.norm(emb["image"], axis=1, keepdims=True)
    top = np.array(labels)[np.argmax(img @ t.T, axis=1)]
    groups = clip_run.table("predictions").set_index("row_id").loc[emb["row_id"], "background"].to_numpy()
    share = share.set_index("group") if "group" in share.columns else share
    for g in sorted(set(groups)):
        for lab in labels:
            assert share.loc[g, lab] == pytest.approx(np.mean(top[groups == g] == lab)), (g, lab)
    assert frame_with(at, "attribute", "difference", "p_value", "label_set") is not None  # harmful gap test
    skew = frame_with(at, "query", "skew", "ndkl")
    assert set(skew["query"]) == {"a photo of a criminal", "a photo of a shape"}


def test_clip_probe_rejects_bad_label_input(app, clip_run: Run) -> None:
    at = app(clip_run, page="pages/clip_probe.py")
    at.toggle(key="cp_live").set_value(True).run()
    at.text_area(key="cp_labels").set_value("only-one")
    at.button[0].click()
    at.run()
    no_exception(at)
    assert any("at least two labels" in e.value for e in at.error)
    at.text_area(key="cp_labels").set_value("a\nb | nasty")
    at.button[0].click()
    at.run()
    assert any("line 2: kind 'nasty'" in e.value.replace("\\", "") for e in at.error)


def test_clip_probe_warns_and_computes_no_gap_when_prompts_collide(app, clip_run: Run) -> None:
    """open_clip's tokenizer lower-cases: 'Criminal' and 'criminal' are one prompt, and a gap between
    them measures nothing (with the canary zoo's word tokenizer 'criminal' and 'thief' are both <unk>)."""
    at = app(clip_run, page="pages/clip_probe.py")
    at.toggle(key="cp_live").set_value(True).run()
    at.text_area(key="cp_labels").set_value("circle\nCriminal | harmful\ncriminal | harmful")
    at.text_area(key="cp_queries").set_value("A photo of a shape\na photo of a shape\na photo of a circle")
    at.button[0].click()
    at.run()
    no_exception(at)
    warnings = [re.sub(r"\\(.)", r"\1", str(w.value)) for w in at.warning]
    assert any("Not valid: prompts collide" in w and "'a photo of a Criminal.' and 'a photo of a criminal.' tokenize "
               "identically" in w and "open_clip:tiny-test" in w for w in warnings), warnings
    assert any("Queries left out" in w and "'A photo of a shape' and 'a photo of a shape'" in w for w in warnings)
    assert any("Harmful-label gap not computed" in i.value for i in at.info)
    gap_tables = [f for f in frames(at) if {"difference", "p_value", "label_set"} <= set(f.columns)]
    assert len(gap_tables) == 1  # the stored run's table only: no live gap over colliding prompts
    assert "not valid: prompts collide" in texts(at)
    live_skew = [f for f in frames(at) if {"query", "skew", "ndkl"} <= set(f.columns)][-1]  # after the stored one
    assert set(live_skew["query"]) == {"a photo of a circle"}


# ----------------------------------------------------------------------------- Compare
def test_compare_shows_both_runs_and_their_difference(app, clf_run: Run, control_run: Run) -> None:
    at = app(clf_run, control_run, page="pages/compare.py")
    no_exception(at)
    shown = frame_with(at, "group", "A", "B", "B − A").set_index("group")
    pa, pb = clf_run.table("group_performance"), control_run.table("group_performance")
    sel = {"attribute": at.selectbox(key="cmp_attr").value, "metric": at.selectbox(key="cmp_metric").value,
               "cls": at.selectbox(key="cmp_cls").value}

    def pick(df: pd.DataFrame) -> pd.Series:
        return df[(df.attribute == sel["attribute"]) & (df.metric == sel["metric"]) & (df.cls == sel["cls"])
                  ].set_index("group")["value"]

    a, b = pick(pa), pick(pb)
    for g in shown.index:
        assert shown.loc[g, "A"] == pytest.approx(a[g])
        assert shown.loc[g, "B"] == pytest.approx(b[g])
        assert shown.loc[g, "B − A"] == pytest.approx(b[g] - a[g])


def test_compare_with_one_run_says_so(app, clf_run: Run) -> None:
    at = app(clf_run, page="pages/compare.py")
    no_exception(at)
    assert any("needs two runs" in i.value for i in at.info)


# ----------------------------------------------------------------------------- data is never HTML
def test_hostile_strings_are_shown_as_text(app, runs_dir) -> None:
    from run_factory import make_run

    from dashboards.ui import esc

    names = ["<img src=x onerror=alert(1)>", "**bold**", "[link](http://example.com)", ":red[x] $x$"]
    bgs = ["<b>plain</b>", "grass_`x`", "water #"]
    run = make_run(runs_dir / "hostile", n=120, seed=5, class_names=names,
                   group_values={"background": bgs}, n_boot=20, n_perm=20)
    for page in PAGES:
        at = app(run, page=page)
        no_exception(at)
        for m in at.markdown:
            assert not m.allow_html, (page, m.value)
            for s in names + bgs:
                if s in m.value.replace("\\", ""):  # the data string is shown here ...
                    assert esc(s) in m.value, (page, m.value)  # ... escaped
