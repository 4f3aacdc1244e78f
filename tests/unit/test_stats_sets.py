"""Shipped sets load and validate; user files get specific errors; the bench runs scaled down."""

from __future__ import annotations

import pytest

from audit.errors import ConfigError
from audit.stats.sets import LabelSet, QuerySet, TemplateSet, WeatSet, load_set, shipped_sets


def test_shipped_sets_load():
    assert {"fairface_harmful", "occupations", "weat_caliskan", "prompt_templates"} <= set(shipped_sets())
    ff = load_set("fairface_harmful")
    assert isinstance(ff, LabelSet)
    df = ff.to_frame()
    assert (df.kind == "group").sum() == 14
    assert {"a photo of a gorilla", "a photo of a thief", "a photo of a suspicious person"} <= set(df.label)
    w = load_set("weat_caliskan")
    assert isinstance(w, WeatSet) and len(w.sets["pleasant"]) == 25 and len(w.sets["career"]) == 8
    assert isinstance(load_set("occupations"), QuerySet) and load_set("occupations").texts()[0] == "a photo of a doctor"
    assert isinstance(load_set("prompt_templates"), TemplateSet)


def test_user_file_errors_name_file_and_field(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("type: labels\nname: x\nsource: s\nlabels: [{text: a, kind: group}, {text: b, kind: evil}]\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: invalid set: labels\.1\.kind"):
        load_set(p)
    p.write_text("type: weat\nname: x\nsource: s\nsets: {a: [x, y]}\ntests: [{test: t, X: a, A: a, B: zz}]\n")
    with pytest.raises(ConfigError, match="B='zz' is not one of the sets"):
        load_set(str(p))
    with pytest.raises(ConfigError, match="unknown set 'nope'"):
        load_set("nope")
    with pytest.raises(ConfigError, match="not found"):
        load_set(tmp_path / "missing.yaml")
    ok = tmp_path / "ok.yaml"
    ok.write_text("type: queries\nname: q\nsource: me\ntemplate: 'an image of {}'\nqueries: [nurse]\n")
    assert load_set(ok).texts() == ["an image of nurse"]


def test_bench_stats_runs_scaled_down(capsys):
    from audit.bench.stats import main

    assert main(["--rows", "2000", "--emb-rows", "400", "--dim", "16", "--n-boot", "50", "--n-perm", "50",
                 "--probe-perm", "2"]) == 0
    out = capsys.readouterr().out
    assert "group_performance" in out and "linear_probe" in out and ("pass" in out or "miss" in out)
