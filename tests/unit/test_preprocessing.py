"""Explicit preprocessing: user > checkpoint record > the family's config, with per-key sources and
warnings when the values are a guess or the images are upscaled (vision-audit issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.errors import ModelLoadError, UsageError
from audit.models import load_model
from audit.models.base import PREPROCESS_KEYS, Preprocess
from audit.models.checkpoints import save_state_dict

ARCH = "vit_tiny_patch16_224"
# timm's default data config for vit_tiny_patch16_224: crop_pct 0.9, bicubic, mean = std = 0.5
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 3}
CLASSES = ["cat", "dog", "bird"]
ALL_GUESSABLE = {"crop_pct": 1.0, "resize_mode": "shortest", "interpolation": "bilinear",
                 "mean": (0.4, 0.45, 0.5), "std": (0.2, 0.25, 0.3)}


def _tiny_model(**kw) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(ARCH, pretrained=False, **{**TINY, **kw}).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A local safetensors checkpoint with no preprocessing stored with it."""
    return save_state_dict(_tiny_model(), tmp_path_factory.mktemp("ckpt") / "my.safetensors")


def _load(ckpt: Path, **kw):
    return load_model(f"timm:{ARCH}", checkpoint=str(ckpt), **{**TINY, **kw})


# ------------------------------------------------------------------ resolution and sources


def test_checkpoint_without_preprocessing_is_timms_default_with_a_warning(ckpt: Path) -> None:
    a = _load(ckpt)
    pp = a.preprocess
    assert pp.sources == {k: "timm_default" for k in PREPROCESS_KEYS}
    assert pp.size == (32, 32) and pp.crop_pct == pytest.approx(0.9) and pp.interpolation == "bicubic"
    assert pp.resize == 35  # floor(32 / 0.9), as timm
    (text,) = pp.warnings
    assert text.startswith("preprocessing for checkpoint my.safetensors was not stored with it: using timm's "
                           f"default for {ARCH} (resize 35 bicubic, centre crop 32, crop_pct 0.9, mean (0.5, 0.5, "
                           "0.5), std (0.5, 0.5, 0.5)); set model.preprocess (e.g. model.preprocess.crop_pct: 1.0, "
                           "interpolation: bilinear")
    assert text.endswith("if the model was trained otherwise")
    d = pp.to_dict()
    assert d["sources"]["crop_pct"] == "timm_default" and d["resize"] == 35 and d["size"] == [32, 32]
    assert a.describe()["preprocess"]["sources"] == pp.sources
    assert "crop_pct=timm_default" in pp.describe()


def test_random_weights_and_hub_models_give_no_warning() -> None:
    a = load_model(f"timm:{ARCH}", pretrained=False, **TINY)
    assert a.preprocess.warnings == () and set(a.preprocess.sources.values()) == {"timm_default"}


def test_user_values_win_and_are_sourced_user(ckpt: Path) -> None:
    a = _load(ckpt, preprocess=ALL_GUESSABLE)
    pp = a.preprocess
    assert pp.crop_pct == 1.0 and pp.interpolation == "bilinear" and pp.mean == (0.4, 0.45, 0.5)
    assert pp.std == (0.2, 0.25, 0.3) and pp.resize == 32
    assert {k: pp.sources[k] for k in ALL_GUESSABLE} == {k: "user" for k in ALL_GUESSABLE}
    assert pp.sources["input_size"] == "timm_default" and pp.sources["resize"] == "user"
    assert pp.warnings == ()  # nothing left to guess (the model was built for its input size)


def test_partly_given_values_warn_about_the_rest(ckpt: Path) -> None:
    pp = _load(ckpt, preprocess={"crop_pct": 1.0, "interpolation": "bilinear"}).preprocess
    (text,) = pp.warnings
    assert "was not stored with it: resize_mode, mean, std from timm's default" in text
    assert "set model.preprocess.resize_mode / mean / std (explain: --resize-mode / --mean / --std)" in text


def test_transform_uses_the_resolved_values(ckpt: Path) -> None:
    from PIL import Image
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(60, 50, 3), dtype=np.uint8))  # W 50, H 60
    a = _load(ckpt, preprocess={"resize": 40, "interpolation": "bilinear", "mean": (0.4, 0.45, 0.5),
                                "std": (0.2, 0.25, 0.3)})
    ref = T.Compose([T.Resize(40, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(32), T.ToTensor(),
                     T.Normalize((0.4, 0.45, 0.5), (0.2, 0.25, 0.3))])
    torch.testing.assert_close(a.preprocess.transform()(img), ref(img), atol=1e-5, rtol=0)
    # the default (a guess) differs: bicubic to 35, mean = std = 0.5
    default = T.Compose([T.Resize(35, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                         T.Normalize((0.5,) * 3, (0.5,) * 3)])
    torch.testing.assert_close(_load(ckpt).preprocess.transform()(img), default(img), atol=1e-5, rtol=0)
    sq = _load(ckpt, preprocess={"resize_mode": "squash", "crop_pct": 1.0}).preprocess.transform()(img)
    squash = T.Compose([T.Resize((32, 32), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                        T.Normalize((0.5,) * 3, (0.5,) * 3)])
    torch.testing.assert_close(sq, squash(img), atol=1e-5, rtol=0)


def test_resize_and_crop_pct_are_one_rule(ckpt: Path) -> None:
    by_resize = _load(ckpt, preprocess={"resize": 40}).preprocess
    by_crop = _load(ckpt, preprocess={"crop_pct": 0.8}).preprocess
    assert by_resize == by_crop and by_resize.crop_pct == pytest.approx(0.8) and by_crop.resize == 40
    assert by_resize.values() == by_crop.values()
    odd = _load(ckpt, preprocess={"resize": 35}).preprocess  # crop_pct 32/35 does not round-trip in floats
    assert odd.resize == 35 and odd.values()["resize"] == 35 and odd.sources["resize"] == "user"
    with pytest.raises(UsageError, match="resize 20 .* is smaller than the input size 32"):
        _load(ckpt, preprocess={"resize": 20})
    with pytest.raises(UsageError, match="give resize or crop_pct, not both"):
        _load(ckpt, preprocess={"resize": 40, "crop_pct": 0.8})
    with pytest.raises(UsageError, match="unknown|Extra inputs"):
        _load(ckpt, preprocess={"crop": 0.8})


def test_input_size_must_be_supported(ckpt: Path) -> None:
    with pytest.raises(UsageError, match=r"model.preprocess.input_size .* 48x48 .*dynamic_img_size: true"):
        _load(ckpt, preprocess={"input_size": 48})
    a = _load(ckpt, dynamic_img_size=True, preprocess={"input_size": 48})
    assert a.preprocess.size == (48, 48) and a.preprocess.sources["input_size"] == "user"
    assert a.token_layout().grid == (6, 6)
    with torch.no_grad():
        assert a.logits(torch.zeros(1, 3, 48, 48)).shape == (1, 3)


def test_pretrained_cfg_overlay_still_works_as_the_users(ckpt: Path) -> None:
    overlay = {"mean": (0.1, 0.2, 0.3), "std": (0.3, 0.3, 0.3), "interpolation": "bilinear", "crop_pct": 1.0}
    pp = _load(ckpt, pretrained_cfg_overlay=overlay).preprocess
    assert pp.mean == (0.1, 0.2, 0.3) and pp.crop_pct == 1.0 and pp.interpolation == "bilinear"
    assert pp.sources["mean"] == "user" and pp.sources["resize_mode"] == "timm_default"


# ------------------------------------------------------------------ preprocessing stored with the weights


def test_preprocessing_stored_in_safetensors_metadata(tmp_path: Path) -> None:
    p = save_state_dict(_tiny_model(), tmp_path / "rec.safetensors", preprocess=ALL_GUESSABLE)
    pp = _load(p).preprocess
    assert pp.crop_pct == 1.0 and pp.interpolation == "bilinear" and pp.mean == (0.4, 0.45, 0.5)
    assert {k: pp.sources[k] for k in ALL_GUESSABLE} == {k: "checkpoint" for k in ALL_GUESSABLE}
    assert pp.warnings == ()
    # the user still wins over the record
    assert _load(p, preprocess={"crop_pct": 0.5}).preprocess.sources["crop_pct"] == "user"
    part = save_state_dict(_tiny_model(), tmp_path / "part.safetensors", preprocess={"crop_pct": 1.0})
    (text,) = _load(part).preprocess.warnings
    assert "the preprocessing stored with checkpoint part.safetensors lacks resize_mode, interpolation, mean, std" in text


def test_timm_pretrained_cfg_in_a_pth_container_and_hub_config_json(tmp_path: Path) -> None:
    sd = _tiny_model().state_dict()
    cfg = {"input_size": [3, 32, 32], "crop_pct": 1.0, "crop_mode": "center", "interpolation": "bilinear",
           "mean": [0.1, 0.1, 0.1], "std": [0.2, 0.2, 0.2], "num_classes": 3, "hf_hub_id": "x/y"}
    p = tmp_path / "train.pth"
    torch.save({"state_dict": sd, "pretrained_cfg": cfg}, p)
    pp = _load(p).preprocess
    assert pp.mean == (0.1, 0.1, 0.1) and pp.sources["mean"] == "checkpoint" and pp.warnings == ()
    hub = tmp_path / "hub"
    save_state_dict(_tiny_model(), hub / "model.safetensors")
    (hub / "config.json").write_text(json.dumps({"architecture": ARCH, "pretrained_cfg": cfg}))
    pp = _load(hub / "model.safetensors").preprocess
    assert pp.interpolation == "bilinear" and pp.sources["interpolation"] == "checkpoint" and pp.warnings == ()
    bad = save_state_dict(_tiny_model(), tmp_path / "bad.safetensors", preprocess={"crop_pct": 1.0})
    from safetensors.torch import load_file, save_file

    save_file(load_file(bad), str(bad), metadata={"preprocess": json.dumps({"resize_mode": "longest"})})
    with pytest.raises(ModelLoadError, match="bad.safetensors.*resize_mode"):
        _load(bad)


# ------------------------------------------------------------------ other families


def test_hf_processor_config_is_hf_config(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    from tests.helpers_models import tiny_hf_vit

    a = tiny_hf_vit(tmp_path)
    assert set(a.preprocess.sources.values()) == {"hf_config"} and a.preprocess.warnings == ()
    b = load_model(f"hf:{tmp_path / 'hf_vit'}", preprocess={"interpolation": "bilinear", "input_size": 40})
    assert b.preprocess.sources["interpolation"] == "user" and b.preprocess.size == (40, 40)
    assert b.token_layout().grid == (5, 5)
    torch.manual_seed(0)
    bare = tmp_path / "bare"
    ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64, num_labels=3)).save_pretrained(bare)
    (text,) = load_model(f"hf:{bare}").preprocess.warnings
    assert text.startswith(f"preprocessing for hf:{bare} was not stored with it: using transformers' "
                           "ViTImageProcessor defaults (no preprocessor_config.json")


def test_open_clip_config_and_checkpoint(tmp_path: Path) -> None:
    from tests.helpers_models import TINY_CLIP_CFG, tiny_open_clip

    a = tiny_open_clip()
    assert set(a.preprocess.sources.values()) == {"open_clip_config"} and a.preprocess.warnings == ()
    p = save_state_dict(a.model, tmp_path / "clip.safetensors")
    b = load_model("open_clip:tiny-clip", model_cfg=TINY_CLIP_CFG, checkpoint=str(p))
    (text,) = b.preprocess.warnings
    assert text.startswith("preprocessing for checkpoint clip.safetensors was not stored with it: using open_clip's "
                           "CLIP defaults (model_cfg has no preprocess_cfg)")
    c = load_model("open_clip:tiny-clip", model_cfg=TINY_CLIP_CFG, preprocess={"size": [32, 32], "mean": [0.5] * 3})
    assert c.preprocess.sources["input_size"] == "user" and c.preprocess.sources["mean"] == "user"
    assert c.preprocess.sources["std"] == "open_clip_config"
    with pytest.raises(UsageError, match="open_clip image towers accept the size they were built for only"):
        load_model("open_clip:tiny-clip", model_cfg=TINY_CLIP_CFG, preprocess={"input_size": 64})


@pytest.mark.parametrize("name", ["vit-biased", "clip-biased"])
def test_zoo_canaries_report_zoo_and_no_warning(name: str) -> None:
    pp = load_model(f"zoo:{name}").preprocess
    assert pp.sources == {k: "zoo" for k in PREPROCESS_KEYS} and pp.warnings == ()
    assert pp.size == (64, 64) and pp.crop_pct == 1.0 and pp.interpolation == "bilinear"
    user = load_model(f"zoo:{name}", preprocess={"interpolation": "bicubic"}).preprocess
    assert user.sources["interpolation"] == "user" and user.sources["mean"] == "zoo"


# ------------------------------------------------------------------ upscaling


def test_upscale_warning() -> None:
    pp = Preprocess(size=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.95)
    assert pp.upscale_warning([(300, 240), (235, 500)]) is None
    text = pp.upscale_warning([(300, 240), (224, 224)], names=["a.png", "b.png"])
    assert text is not None and text.startswith("1 of 2 images checked are smaller than the resize size, so they "
                                                "are upscaled: e.g. a 224x224 image (b.png) is enlarged 1.05x to "
                                                "235 px (shorter side)")
    assert "model.preprocess.crop_pct: 1.0" in text
    assert Preprocess(size=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3).upscale_warning([(224, 224)]) is None


# ------------------------------------------------------------------ runs


def _manifest(root: Path, n: int, size: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = ["path,label,group"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,{CLASSES[i % 3]},{'ab'[i % 2]}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def _config(manifest: Path, out: Path, ckpt: Path, preprocess: dict | None = None):
    from audit.config import parse_config

    return parse_config({
        "model": {"spec": f"timm:{ARCH}", "checkpoint": str(ckpt), "class_names": CLASSES, "options": TINY,
                  **({"preprocess": preprocess} if preprocess else {})},
        "data": {"manifest": str(manifest), "columns": {"image": "path", "label": "label", "groups": ["group"]}},
        "explain": {"methods": [], "faithfulness": False, "sanity": False},
        "stats": {"n_boot": 50, "n_perm": 50, "embeddings": False, "intersections": False},
        "run": {"output": str(out), "batch_size": 6, "shard_size": 6, "num_workers": 0},
    })


def test_run_records_preprocessing_and_warns(tmp_path: Path, ckpt: Path) -> None:
    from audit.pipeline import run_audit
    from audit.runs import Run

    manifest = _manifest(tmp_path / "data", 6, size=34)  # smaller than resize 35: upscaled
    lines: list[str] = []
    run = run_audit(_config(manifest, tmp_path / "run", ckpt), log=lines.append)
    rec = run.meta["preprocessing"]
    assert rec["values"] == {"input_size": [32, 32], "resize": 35, "crop_pct": pytest.approx(0.9),
                             "resize_mode": "shortest", "interpolation": "bicubic", "mean": [0.5] * 3,
                             "std": [0.5] * 3}
    assert rec["sources"] == {k: "timm_default" for k in PREPROCESS_KEYS}
    guess, up = rec["warnings"]
    assert guess.startswith("preprocessing for checkpoint my.safetensors was not stored with it")
    assert up.startswith("6 of 6 images checked are smaller than the resize size") and "(0.png)" in up
    assert [s for s in lines if s.startswith("warning: ")] == [f"warning: {guess}", f"warning: {up}"]
    on_disk = json.loads((Path(run.path) / "run.json").read_text())["preprocessing"]
    assert on_disk["sources"] == rec["sources"] and on_disk["warnings"] == rec["warnings"]
    assert Run.open(run.path).meta["preprocessing"]["values"]["resize"] == 35

    run2 = run_audit(_config(manifest, tmp_path / "run2", ckpt, preprocess=ALL_GUESSABLE), log=lines.append)
    rec2 = run2.meta["preprocessing"]
    assert rec2["values"]["crop_pct"] == 1.0 and rec2["values"]["resize"] == 32 and rec2["warnings"] == []
    assert rec2["sources"]["interpolation"] == "user" and rec2["sources"]["input_size"] == "timm_default"


def test_config_fingerprint_changes_with_preprocessing(tmp_path: Path, ckpt: Path) -> None:
    from audit.pipeline import config_fingerprint

    manifest = _manifest(tmp_path, 1, size=32)
    base = config_fingerprint(_config(manifest, tmp_path / "r", ckpt))
    crop = config_fingerprint(_config(manifest, tmp_path / "r", ckpt, preprocess={"crop_pct": 1.0}))
    interp = config_fingerprint(_config(manifest, tmp_path / "r", ckpt, preprocess={"interpolation": "bilinear"}))
    assert len({base, crop, interp}) == 3
    assert crop == config_fingerprint(_config(manifest, tmp_path / "r", ckpt, preprocess={"crop_pct": 1.0}))


# ------------------------------------------------------------------ vision-audit explain


def test_explain_cli_preprocessing_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from audit.cli import main

    rng = np.random.default_rng(1)
    paths = []
    for i in range(2):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    out = tmp_path / "grid.png"
    code = main(["explain", *paths, "--model", "zoo:vit-biased", "--crop-pct", "1.0", "--interpolation", "bilinear",
                 "--method", "rollout", "--steps", "4", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0 and out.is_file()
    (line,) = [s for s in err.splitlines() if s.startswith("preprocessing: ")]
    assert "crop_pct=user" in line and "interpolation=user" in line and "mean=zoo" in line
    assert "warning:" not in err  # 64x64 images at 64 with no crop: neither a guess nor upscaled


def test_explain_cli_loads_a_local_checkpoint_like_a_config(tmp_path: Path, ckpt: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from audit.cli import main

    paths = []
    for i in range(2):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(np.full((20, 20, 3), 40 * i, dtype=np.uint8)).save(p)
        paths.append(str(p))
    opts = [f"--option={k}={v}" for k, v in TINY.items() if k != "num_classes"]
    code = main(["explain", *paths, "--model", f"timm:{ARCH}", "--checkpoint", str(ckpt), *opts,
                 "--num-classes", "3", "--class-names", "cat,dog,bird", "--option", "dynamic_img_size=true",
                 "--input-size", "24", "--mean", "0.4,0.4,0.4", "--target", "dog", "--steps", "4",
                 "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "input_size=user" in err and "mean=user" in err and "crop_pct=timm_default" in err
    assert "warning: preprocessing for checkpoint my.safetensors was not stored with it" in err
    assert "warning: 2 of 2 images checked are smaller than the resize size" in err  # 20 px < resize 26
