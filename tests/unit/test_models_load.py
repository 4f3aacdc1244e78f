"""load_model dispatch, list_families and zoo resolution."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from audit.errors import ModelLoadError
from audit.models import list_families, load_model
from audit.models.checkpoints import save_state_dict
from tests.helpers_models import TINY_VIT, tiny_timm_vit


def test_list_families() -> None:
    fams = {f["family"]: f for f in list_families()}
    assert {"timm", "open_clip", "hf", "zoo"} <= set(fams)
    for f in fams.values():
        assert f["description"] and f["examples"] and all(":" in e for e in f["examples"])


def test_bad_specs() -> None:
    with pytest.raises(ModelLoadError, match="not of the form FAMILY:NAME"):
        load_model("vit_base_patch16_224")
    with pytest.raises(ModelLoadError, match="unknown model family 'keras'.*known families: hf, open_clip, timm, zoo"):
        load_model("keras:resnet")


def test_zoo_missing_is_a_model_load_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "audit.zoo", None)  # import fails
    with pytest.raises(ModelLoadError, match="canary zoo"):
        load_model("zoo:vit-biased")


def test_zoo_resolution(monkeypatch, tmp_path: Path) -> None:
    ref = tiny_timm_vit()
    path = save_state_dict(ref.model, tmp_path / "zoo.safetensors")
    opts = {k: v for k, v in TINY_VIT.items() if k != "pretrained"}
    fake = types.ModuleType("audit.zoo")
    fake.resolve = lambda name: ("timm:vit_tiny_patch16_224", str(path), {**opts, "class_names": ["a", "b", "c"]})
    monkeypatch.setitem(sys.modules, "audit.zoo", fake)
    a = load_model("zoo:vit-biased")
    assert a.spec.family == "zoo" and a.spec.name == "vit-biased" and a.class_names == ["a", "b", "c"]
    assert a.fingerprint.startswith("zoo:vit-biased@")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a.logits(x), ref.logits(x), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["vit-biased", "clip-biased"])
def test_real_zoo_models_load_and_capture(name: str) -> None:
    """The embedded canary zoo through load_model (its weights ship in the package)."""
    from audit.capture import capture
    from audit.models import ZeroShotHead

    a = load_model(f"zoo:{name}")  # the weights ship in the package: missing ones are a failure
    x = torch.zeros(1, 3, *a.preprocess.size)
    if a.kind == "clip":
        assert a.text_token_strings(a.tokenize(["circle"]))[0][-1] == "<end_of_text>"
        a = ZeroShotHead(a, a.spec.options["class_names"])
    with torch.no_grad(), capture(a) as cap:
        y = a.logits(x)
    assert y.shape == (1, len(a.class_names))
    assert {t.shape[-1] for t in cap.attentions} == {a.token_layout().n_tokens}
