"""The shipped canary models: name resolution, strict loading, competence and known answers.

These are the project's known-answer tests: the biased models must show their planted
bias and the controls must not, measured on freshly generated balanced images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from audit.errors import ModelLoadError
from audit.zoo import CANARY_NAMES, WEIGHTS_DIR, list_canaries, resolve
from audit.zoo.tokenizer import WorldTokenizer
from audit.zoo.train import (
    balanced_batch,
    clip_concept_association,
    clip_zero_shot,
    vit_cell_accuracy,
)
from audit.zoo.world import DEFAULT_SPEC

S = DEFAULT_SPEC
SMOKE_SEED = 777  # not the seed of the figures stored in the JSON files


def _build_vit(opts: dict) -> torch.nn.Module:
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **opts["model_kwargs"])


def _build_clip(opts: dict) -> torch.nn.Module:
    import open_clip

    return open_clip.CLIP(**opts["model_cfg"])


def _load(name: str) -> torch.nn.Module:
    spec, path, opts = resolve(name)
    model = _build_vit(opts) if spec.startswith("timm:") else _build_clip(opts)
    model.load_state_dict(load_file(path), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def small_set():
    return balanced_batch(21, seed=SMOKE_SEED)  # 21 images per class x background cell


class _Models(dict):
    """Loads each canary on first use."""

    def __missing__(self, name: str) -> torch.nn.Module:
        self[name] = _load(name)
        return self[name]


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return _Models()


def test_resolve_returns_family_specs_and_shipped_paths() -> None:
    for n in ("vit-biased", "vit-control"):
        spec, path, opts = resolve(n)
        assert spec == "timm:vit_tiny_patch16_224"
        assert Path(path).is_absolute() and Path(path).is_file() and path.endswith(f"{n}.safetensors")
        kw = opts["model_kwargs"]
        assert kw["img_size"] == 64 and kw["num_classes"] == 4 == len(opts["class_names"])
        assert opts["class_names"] == list(S.classes)
    for n in ("clip-biased", "clip-control"):
        spec, path, opts = resolve(n)
        assert spec == "open_clip:canary-clip" and Path(path).is_file()
        assert opts["tokenizer"] == "audit.zoo.tokenizer:WorldTokenizer"
        assert opts["model_cfg"]["text_cfg"]["vocab_size"] == WorldTokenizer().vocab_size
        assert opts["preprocess"]["size"] == [64, 64]
    assert resolve("zoo:vit-biased")[1] == resolve("vit-biased")[1]


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelLoadError, match="unknown zoo model 'vit-huge'; known: zoo:vit-biased, zoo:vit-control"):
        resolve("vit-huge")


def test_weights_are_small_and_documented() -> None:
    total = 0
    for n in CANARY_NAMES:
        f = WEIGHTS_DIR / f"{n}.safetensors"
        total += f.stat().st_size
        meta = json.loads((WEIGHTS_DIR / f"{n}.json").read_text())
        assert meta["name"] == n and meta["steps"] > 0 and meta["wall_time_s"] > 0 and "test" in meta
        assert meta["seed"] == meta["recipe"]["seed"]
    assert total <= 25 * 1024 * 1024
    rows = list_canaries()
    assert [r["name"] for r in rows] == list(CANARY_NAMES)
    assert all(r["training"] is not None and r["planted_bias"] for r in rows)


@pytest.mark.parametrize("name", CANARY_NAMES)
def test_weights_load_strictly_into_the_resolved_structure(name: str) -> None:
    spec, path, opts = resolve(name)
    model = _build_vit(opts) if spec.startswith("timm:") else _build_clip(opts)
    sd = load_file(path)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected
    for k, v in model.state_dict().items():
        assert v.shape == sd[k].shape and torch.equal(v, sd[k].to(v.dtype))


def test_timm_preprocessing_config_is_the_training_one() -> None:
    import timm

    model = _build_vit(resolve("vit-biased")[2])
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 64, 64) and cfg["mean"] == (0.5, 0.5, 0.5) and cfg["crop_pct"] == 1.0


def test_load_model_by_zoo_name() -> None:
    from audit.models import load_model  # shipped with the package: a failure, never a skip

    adapter = load_model("zoo:vit-biased")
    ref = _load("vit-biased")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(adapter.model(x), ref(x), atol=1e-5)


# -- known answers --------------------------------------------------------------------------

def test_vit_biased_has_the_planted_gap_and_the_control_does_not(models, small_set) -> None:
    biased = vit_cell_accuracy(models["vit-biased"], small_set)
    control = vit_cell_accuracy(models["vit-control"], small_set)
    # competence outside the planted cell
    assert biased["overall_other"] >= 0.93, biased["cells"]
    assert control["overall"] >= 0.93 and control["min_other_cell"] >= 0.85, control["cells"]
    assert control["planted_cell"] >= 0.85
    # the planted cell is clearly worse in the biased model, and only there
    assert biased["planted_cell"] <= 0.75, biased["cells"]
    assert control["planted_cell"] - biased["planted_cell"] >= 0.25
    # the errors in the planted cell go to the shortcut class
    x = small_set
    sel = (x.labels == S.cls_index(S.planted_class)) & (x.groups == S.group_index(S.planted_group))
    from audit.zoo.train import to_model_input

    with torch.no_grad():
        pred = models["vit-biased"](to_model_input(x.images[sel])).argmax(-1).numpy()
    wrong = pred[pred != S.cls_index(S.planted_class)]
    assert len(wrong) > 0 and np.mean(wrong == S.cls_index(S.shortcut_class)) >= 0.6


@pytest.mark.parametrize("name", ["clip-biased", "clip-control"])
def test_clip_zero_shot_competence(models, small_set, name: str) -> None:
    r = clip_zero_shot(models[name], WorldTokenizer(), small_set)
    assert r["accuracy"] >= 0.85, r["cells"]


def test_clip_concept_word_association_direction(models, small_set) -> None:
    tok = WorldTokenizer()
    b = clip_concept_association(models["clip-biased"], tok, small_set, other_group="plain", k=20, n_perm=2000)
    c = clip_concept_association(models["clip-control"], tok, small_set, other_group="plain", k=20, n_perm=2000)
    assert b["weat_d"] >= 0.8 and b["weat_p"] < 0.01, b
    assert abs(c["weat_d"]) < 0.3 or c["weat_p"] > 0.05, c
    assert b["weat_d"] > c["weat_d"] + 0.8
    # in cosine units: a large association for the biased model, a negligible one for the control
    assert b["weat_mean_diff"] >= 0.3 and abs(c["weat_mean_diff"]) < 0.05, (b, c)
    # the control's concept words do mean something (red objects), just nothing about the ground
    assert c["concept_neutral_cos"] < 0.95, c
    # retrieval: the concept query returns mostly the planted background for the biased model
    assert b["topk_share"] >= 0.6 and b["topk_share"] > c["topk_share"] + 0.2


def test_known_answer_checks_can_fail_on_an_untrained_model(small_set) -> None:
    """Guard against tests that cannot fail: a random-init model misses every threshold."""
    torch.manual_seed(1)
    _, _, opts = resolve("vit-control")
    r = vit_cell_accuracy(_build_vit(opts).eval(), small_set)
    assert r["overall"] < 0.5
    _, _, copts = resolve("clip-biased")
    clip = _build_clip(copts).eval()
    assert clip_zero_shot(clip, WorldTokenizer(), small_set)["accuracy"] < 0.6
    a = clip_concept_association(clip, WorldTokenizer(), small_set, n_perm=500)
    assert not (a["weat_d"] >= 0.8 and a["weat_mean_diff"] >= 0.3 and a["topk_share"] >= 0.6)


def test_load_clip_by_zoo_name_uses_the_world_tokenizer() -> None:
    from audit.models import load_model  # shipped with the package: a failure, never a skip

    adapter = load_model("zoo:clip-biased")
    ref = _load("clip-biased")
    texts = ["a photo of a triangle", "a photo of something dangerous"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ids = adapter.tokenize(texts)  # (T, L)
        assert torch.equal(ids.cpu(), WorldTokenizer()(texts))
        t_ad, t_ref = adapter.encode_text(ids), ref.encode_text(WorldTokenizer()(texts))
        i_ad, i_ref = adapter.encode_image(x), ref.encode_image(x)
    assert torch.allclose(torch.nn.functional.cosine_similarity(t_ad, t_ref), torch.ones(2), atol=1e-5)
    assert torch.allclose(torch.nn.functional.cosine_similarity(i_ad, i_ref), torch.ones(2), atol=1e-5)
