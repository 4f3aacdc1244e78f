"""The pipeline's slice stage: config, tables, run.json, the vocabulary guard, label-free runs, an embedder."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.config import parse_config
from audit.errors import ConfigError, UsageError
from audit.runs import Run
from audit.slices.stage import search_note, usable_vocabulary
from audit.slices.vocabulary import Vocabulary

from .conftest import config_dict, make_dataset


def test_slices_config_defaults_and_errors(tmp_path: Path) -> None:
    csv = make_dataset(tmp_path, 4)
    cfg = parse_config(config_dict(csv, tmp_path / "out"))
    assert cfg.slices.enabled and cfg.slices.embedder is None and cfg.slices.vocabulary == ["default"]
    assert cfg.slices.fdr == 0.05 and cfg.slices.discover_on == "model" and cfg.slices.seed is None
    bad = config_dict(csv, tmp_path / "out")
    bad["slices"] = {"discover_on": "embedder"}
    with pytest.raises(ConfigError, match="slices.embedder"):
        parse_config(bad)
    bad["slices"] = {"fdr": 1.5}
    with pytest.raises(ConfigError, match="fdr"):
        parse_config(bad)


def test_vocabulary_paths_resolve_and_are_checked(tmp_path: Path) -> None:
    from audit.config import load_config

    csv = make_dataset(tmp_path, 4)
    cfg_path = tmp_path / "audit.yaml"
    cfg_path.write_text(f"model: {{spec: 'zoo:vit-biased'}}\ndata: {{manifest: {csv}}}\nrun: {{output: out}}\n"
                        "slices: {vocabulary: [default, words.yaml]}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"slices.vocabulary\[1\]: .*words.yaml does not exist"):
        load_config(cfg_path)
    cfg = load_config(cfg_path, check_paths=False)
    assert cfg.slices.vocabulary == ["default", str(tmp_path / "words.yaml")]


def test_usable_vocabulary_leaves_out_what_the_tokenizer_cannot_read() -> None:
    from audit.models import load_model

    clip = load_model("zoo:clip-control")  # a word-level tokenizer: unknown words become <unk>
    vocab = Vocabulary.from_words(["a triangle", "dotted", "a zebra", "a triangle!", "striped zebra"],
                                  template="a photo of {}")
    kept, dropped = usable_vocabulary(clip, vocab)
    assert list(kept.concepts) == ["a triangle", "dotted"]
    assert dropped == ["a zebra", "a triangle!", "striped zebra"]  # unknown word; same ids as 'a triangle'; unknown
    with pytest.raises(UsageError, match="cannot read any"):
        usable_vocabulary(clip, Vocabulary.from_words(["zebra", "giraffe"]))


def test_run_writes_slice_tables_and_meta(tmp_path: Path) -> None:
    from audit.pipeline import run_audit

    csv = make_dataset(tmp_path, 24)
    run = run_audit(parse_config(config_dict(csv, tmp_path / "out")))
    assert run.has_table("slices") and run.has_table("slice_members")
    meta = run.meta["slices"]
    assert meta["enabled"] and meta["named_by"] is None and meta["options"]["fdr"] == 0.05
    assert meta["n_candidates"] == len(run.table("slices"))
    # 24 random images: far too few rows for a candidate slice; the run says how it searched
    assert not run.table("slices")["confirmed"].any()
    assert "tested once on the other half" in search_note(meta)
    assert Run.open(run.path).findings() is not None


def test_label_free_run_records_why_no_slices(tmp_path: Path) -> None:
    from audit.pipeline import run_audit

    csv = make_dataset(tmp_path, 12)
    cfg = config_dict(csv, tmp_path / "out")
    cfg["data"]["columns"]["label"] = None
    run = run_audit(parse_config(cfg))
    assert not run.has_table("slices")
    assert run.meta["slices"] == {"enabled": True, "skipped": "no labels"}
    assert any("Error slices were not searched" in x for x in run.meta["limitations"])
    assert search_note(run.meta["slices"]) == "Error slices were not searched: no labels."


def test_disabled_and_embedder_must_be_a_clip(tmp_path: Path) -> None:
    from audit.pipeline import run_audit

    csv = make_dataset(tmp_path, 12)
    cfg = config_dict(csv, tmp_path / "off")
    cfg["slices"] = {"enabled": False}
    run = run_audit(parse_config(cfg))
    assert not run.has_table("slices") and run.meta["slices"] == {"enabled": False}
    cfg = config_dict(csv, tmp_path / "bad")
    cfg["slices"] = {"embedder": {"spec": "zoo:vit-control"}}
    with pytest.raises(ConfigError, match="not a CLIP model"):
        run_audit(parse_config(cfg))
