"""A run on a tiny ViT with a planted high-norm artefact token writes artifact_tokens / artifact_images,
puts the caveat on the affected images and in the run's limitations; a plain tiny ViT writes empty tables."""

from __future__ import annotations

from pathlib import Path

import torch

from audit.config import parse_config
from audit.models import load_model
from audit.models.checkpoints import save_state_dict
from audit.pipeline import run_audit
from tests.helpers_models import CLASS_NAMES, TINY_PP, TINY_VIT
from tests.unit.test_explain_artifacts import plant_artifact

from .conftest import config_dict, make_dataset


def _cfg(tmp_path: Path, model: dict | None = None, n: int = 16, min_group_size: int | None = None) -> dict:
    manifest = make_dataset(tmp_path / "data", n)
    cfg = config_dict(manifest, tmp_path / "run", batch_size=8)
    if min_group_size is not None:  # 16 images: groups this small still get a worst group (and a gallery)
        cfg["stats"]["min_group_size"] = min_group_size
    if model is not None:
        cfg["model"] = model
    cfg["explain"] = {"methods": ["rollout", "gradcam"], "max_images": min(n, 6), "faithfulness": True,
                      "faithfulness_steps": 4, "sanity": False}
    cfg["slices"] = {"enabled": False}
    return cfg


def _planted_run(tmp_path: Path, n: int = 16):
    torch.manual_seed(0)
    opts = dict(TINY_VIT)
    a = load_model("timm:vit_tiny_patch16_224", class_names=CLASS_NAMES, **opts)
    plant_artifact(a, torch.randn(8, 3, 32, 32), ratio=200.0)
    ckpt = tmp_path / "planted.safetensors"
    save_state_dict(a.model, ckpt, preprocess=TINY_PP)
    model = {"spec": "timm:vit_tiny_patch16_224", "checkpoint": str(ckpt), "class_names": CLASS_NAMES,
             "options": {k: v for k, v in opts.items() if k != "pretrained"}}
    return run_audit(parse_config(_cfg(tmp_path, model, n, min_group_size=2)))


def test_run_with_planted_artifact_writes_tables_and_caveat(tmp_path: Path) -> None:
    run = _planted_run(tmp_path)
    assert run.meta["status"] == "complete"
    tok, per = run.table("artifact_tokens"), run.table("artifact_images")
    assert len(per) == 6 and per["affected"].all()
    assert set(zip(tok["token_row"], tok["token_col"])) == {(1, 1)}
    assert (tok["norm_ratio"] > 10).all() and set(tok["row_id"]) == set(per["row_id"])
    assert per["caveat"].str.match(r"attention map dominated by 1 high-norm artefact token \(\d+% of the CLS attention\); "
                                   r"read with care").all()
    assert run.meta["artifacts"]["n"] == 6 and run.meta["artifacts"]["n_affected"] == 6
    v = run.table("faithfulness_verdicts").drop_duplicates("method").set_index("method")["reason"]
    assert v["rollout"].endswith("on 6 of 6 images the attention map is dominated by high-norm artefact tokens "
                                 f"({run.meta['artifacts']['mean_attention_share']:.0%} of the pooled token's attention "
                                 "on average; table artifact_images); read those maps with care")
    assert "artefact" not in v["gradcam"]
    lim = " ".join(run.meta["limitations"])
    assert "High-norm artefact tokens (Darcet et al. 2024) in 6 of 6 explained images" in lim
    # the report's gallery panels carry each image's caveat (HTML, Markdown, PDF read the same field)
    from audit.report.summary import build_summary

    items = build_summary(run).gallery.items
    assert items, "the planted run has a gallery"
    caveat = dict(zip(per["row_id"], per["caveat"]))
    assert all(it.caveat == caveat[it.row_id] and it.caveat for it in items)


def test_run_on_plain_vit_has_no_artifacts(tmp_path: Path) -> None:
    run = run_audit(parse_config(_cfg(tmp_path)))
    assert len(run.table("artifact_tokens")) == 0
    per = run.table("artifact_images")
    assert len(per) == 6 and not per["affected"].any() and (per["caveat"] == "").all()
    assert "artefact" not in " ".join(run.meta["limitations"])


def test_dashboard_explain_page_outlines_artifact_tokens(tmp_path: Path, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    run = _planted_run(tmp_path, n=6)  # every image explained: the first one shown is affected
    monkeypatch.setenv("VISION_AUDIT_RUNS", str(run.path))
    monkeypatch.delenv("VISION_AUDIT_POLICY", raising=False)
    at = AppTest.from_file(str(Path(__file__).parents[2] / "dashboards" / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/explain.py").run()
    assert not at.exception
    legends = [c.value.replace("\\", "") for c in at.caption if "artefact token" in c.value]
    assert len(legends) == 1 and "n = 1" in legends[0]  # rollout only, not gradcam
    assert legends[0].startswith("□ high-norm artefact token (n = 1, ")
    assert any("attention map dominated by 1 high-norm artefact token" in w.value.replace("\\", "")
               for w in at.warning)
