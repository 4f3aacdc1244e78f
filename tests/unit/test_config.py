"""Config validation: unknown keys, wrong types and missing paths name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.config import load_config, parse_config
from audit.errors import ConfigError


def _minimal(tmp_path: Path) -> dict:
    (tmp_path / "m.csv").write_text("path,label\n", encoding="utf-8")
    return {"model": {"spec": "timm:vit_tiny_patch16_224"}, "data": {"manifest": "m.csv"}, "run": {"output": "out"}}


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "audit.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_valid_config_resolves_relative_paths(tmp_path: Path) -> None:
    _minimal(tmp_path)
    cfg = load_config(_write(tmp_path, "model: {spec: 'zoo:vit-biased'}\ndata: {manifest: m.csv}\nrun: {output: out}\n"))
    assert cfg.data.manifest == tmp_path / "m.csv"
    assert cfg.run.output == tmp_path / "out"
    assert cfg.stats.min_group_size == 50 and cfg.explain.methods == ["rollout", "gae", "gradcam"]


def test_unknown_key_names_the_field(tmp_path: Path) -> None:
    _minimal(tmp_path)
    p = _write(tmp_path, "model: {spec: 'zoo:vit-biased', chekpoint: x}\ndata: {manifest: m.csv}\nrun: {output: out}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert "model.chekpoint: unknown key" in str(exc.value)
    assert str(p) in str(exc.value)


def test_wrong_type_names_the_field_and_value(tmp_path: Path) -> None:
    data = _minimal(tmp_path)
    data["run"]["batch_size"] = "many"
    data["stats"] = {"alpha": 2}
    with pytest.raises(ConfigError) as exc:
        parse_config(data, base=tmp_path)
    text = str(exc.value)
    assert "run.batch_size" in text and "'many'" in text
    assert "stats.alpha" in text


def test_missing_paths_are_errors_naming_the_field(tmp_path: Path) -> None:
    data = _minimal(tmp_path)
    data["data"]["manifest"] = "nope.csv"
    data["model"]["checkpoint"] = "weights.safetensors"
    with pytest.raises(ConfigError) as exc:
        parse_config(data, base=tmp_path)
    assert "data.manifest" in str(exc.value) and "model.checkpoint" in str(exc.value)


def test_bad_spec_and_yaml(tmp_path: Path) -> None:
    data = _minimal(tmp_path)
    data["model"]["spec"] = "vit_base"
    with pytest.raises(ConfigError, match="model.spec"):
        parse_config(data, base=tmp_path)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "model: [unclosed\n"))


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    p = _write(tmp_path, "model: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_association_needs_texts_or_set(tmp_path: Path) -> None:
    data = _minimal(tmp_path)
    data["clip"] = {"association": [{"name": "t", "attribute": "g", "x_group": "a", "y_group": "b", "a_texts": ["x"]}]}
    with pytest.raises(ConfigError, match="clip.association.0"):
        parse_config(data, base=tmp_path)


@pytest.mark.parametrize(("section", "value", "needle"), [
    ("explain", {"methods": ["rollout", "gradcam++"]}, "explain.methods: Value error, unknown explanation method(s) "
                                                        "['gradcam++']"),
    ("stats", {"metrics": ["accuracy", "recall"]}, "stats.metrics: Value error, unknown metric(s) ['recall']"),
    ("stats", {"comparisons": ["range", "all_pairs"]}, "stats.comparisons.1"),
    ("explain", {"methods": ["rollout"], "params": {"gae": {"start_layer": 1}}}, "params given for method(s) ['gae']"),
    ("model", {"spec": "zoo:vit-biased", "preprocess": {"resize": 256, "crop_pct": 0.9}}, "resize or crop_pct"),
    ("model", {"spec": "zoo:vit-biased", "preprocess": {"interpolation": "bicubik"}}, "model.preprocess.interpolation"),
])
def test_unknown_names_are_rejected_when_the_config_is_read(tmp_path: Path, section, value, needle) -> None:
    """Before any model is loaded or image read: parse_config alone raises, naming the field."""
    cfg = _minimal(tmp_path)
    cfg[section] = value
    with pytest.raises(ConfigError) as exc:
        parse_config(cfg, base=tmp_path)
    assert needle in str(exc.value)


def test_comparisons_and_preprocess_defaults(tmp_path: Path) -> None:
    cfg = parse_config({**_minimal(tmp_path), "stats": {"comparisons": ["range", "pairwise", "range"]},
                        "model": {"spec": "zoo:vit-biased", "preprocess": {"crop_pct": 1.0, "interpolation": "bilinear"}}},
                       base=tmp_path)
    assert cfg.stats.comparisons == ["range", "pairwise"]
    assert cfg.model.preprocess.given() == {"crop_pct": 1.0, "interpolation": "bilinear"}
    assert parse_config(_minimal(tmp_path), base=tmp_path).stats.comparisons == ["range"]


def test_clip_label_set_default_is_a_shipped_set(tmp_path: Path) -> None:
    from audit.stats.sets import load_set

    cfg = parse_config(_minimal(tmp_path), base=tmp_path)
    assert load_set(cfg.clip.label_set).name == cfg.clip.label_set
    bad = {**_minimal(tmp_path), "clip": {"label_set": "fairface_harm"}}
    with pytest.raises(ConfigError, match="clip.label_set: Value error, unknown shipped set 'fairface_harm'"):
        parse_config(bad, base=tmp_path)


def test_the_annotated_example_config_parses() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "docs" / "audit.example.yaml", check_paths=False)
    assert cfg.model.preprocess.given()["crop_pct"] == 1.0 and cfg.data.columns.groups == ["skin_tone", "site"]


def test_an_unknown_key_gets_the_closest_known_one(tmp_path: Path) -> None:
    cfg = _minimal(tmp_path)
    cfg["data"]["colums"] = {"image": "file"}
    cfg["model"]["preproces"] = {}
    with pytest.raises(ConfigError) as exc:
        parse_config(cfg, base=tmp_path)
    assert "data.colums: unknown key (did you mean columns?)" in str(exc.value)
    assert "model.preproces: unknown key (did you mean preprocess?)" in str(exc.value)
    assert "vision-audit run --schema" in str(exc.value)


def test_run_schema_prints_every_key(capsys) -> None:
    import json

    from audit.cli import main

    assert main(["run", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"model", "data", "explain", "stats", "clip", "run"} <= set(schema["properties"])
    assert "PreprocessConfig" in schema["$defs"]
