"""timm adapter: strict local checkpoints, safe loading, no-network errors, model specifics."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import pytest
import torch

from audit.errors import ModelLoadError, UnsafeCheckpointError
from audit.models import load_model
from audit.models.checkpoints import load_state_dict_file, save_state_dict
from tests.helpers_models import CLASS_NAMES, TINY_VIT, tiny_deit_distilled, tiny_timm_vit, tiny_vit_avgpool

SPEC = "timm:vit_tiny_patch16_224"
ARCH = {k: v for k, v in TINY_VIT.items() if k not in ("pretrained", "num_classes")}


class _Payload:
    """A pickle that, if unpickled with full pickle, would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def no_network(monkeypatch):
    """Make every socket connection fail the way a machine without network does."""

    def refuse(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_checkpoint_roundtrip(tmp_path: Path, suffix: str) -> None:
    a = tiny_timm_vit()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_state_dict(a.model, path)
    else:
        torch.save({"state_dict": a.model.state_dict(), "epoch": 3} if suffix == ".pth" else a.model.state_dict(),
                   path)
    torch.manual_seed(123)  # a different random init before loading
    b = load_model(SPEC, checkpoint=str(path), num_classes=3, class_names=CLASS_NAMES, **ARCH)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b.logits(x), a.logits(x), atol=0, rtol=0)
    assert b.fingerprint.split("@")[1] == a.fingerprint.split("@")[1]
    assert b.spec.checkpoint == str(path)


def test_head_mismatch_names_shapes_and_fix(tmp_path: Path) -> None:
    a = tiny_timm_vit()  # 3 classes
    path = save_state_dict(a.model, tmp_path / "w.safetensors")
    with pytest.raises(ModelLoadError) as e:
        load_model(SPEC, checkpoint=str(path), num_classes=5, **ARCH)
    msg = str(e.value)
    assert "head.weight: model expects (5, 32), checkpoint has (3, 32)" in msg
    assert "num_classes=3" in msg and str(path) in msg
    # default timm num_classes (1000) is also a mismatch, not a silently dropped head
    with pytest.raises(ModelLoadError, match="classification head mismatch"):
        load_model(SPEC, checkpoint=str(path), **ARCH)


def test_architecture_mismatch_is_explained(tmp_path: Path) -> None:
    path = save_state_dict(tiny_timm_vit().model, tmp_path / "w.safetensors")
    with pytest.raises(ModelLoadError, match=r"missing keys \(e\.g\. blocks\.2\."):
        load_model(SPEC, checkpoint=str(path), num_classes=3, **{**ARCH, "depth": 3})


def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"head.weight": _Payload(marker)}, f)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_model(SPEC, checkpoint=str(path), num_classes=3, **ARCH)
    assert not marker.exists()
    msg = str(e.value)
    assert "would run Python code" in msg and "safetensors" in msg and str(path) in msg
    # the same through torch.save (zip format)
    path2 = tmp_path / "evil2.pt"
    torch.save({"x": _Payload(marker)}, path2)
    with pytest.raises(UnsafeCheckpointError):
        load_state_dict_file(path2)
    assert not marker.exists()


def test_bad_checkpoint_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unknown file type '.onnx'"):
        load_state_dict_file(tmp_path / "w.onnx")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_state_dict_file(tmp_path / "bad.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ModelLoadError, match="expected a state dict"):
        load_state_dict_file(tmp_path / "list.pth")


def test_hub_name_without_network_points_to_checkpoint(no_network) -> None:
    with pytest.raises(ModelLoadError) as e:
        load_model("timm:test_vit")
    msg = str(e.value)
    assert "no network access" in msg and "--checkpoint PATH" in msg and "checkpoint=PATH" in msg


@pytest.mark.network
def test_hub_download_real() -> None:  # pragma: no cover - needs internet
    a = load_model("timm:test_vit.r160_in1k")
    assert a.class_names is not None and len(a.class_names) == 1000


def test_unknown_model_and_class_names_mismatch() -> None:
    with pytest.raises(ModelLoadError, match="timm has no model named 'vit_nonexistent_xyz'"):
        load_model("timm:vit_nonexistent_xyz", pretrained=False)
    with pytest.raises(ModelLoadError, match="2 class_names given but the model has 3 classes"):
        load_model(SPEC, class_names=["a", "b"], **TINY_VIT)


def test_distilled_deit_logits_are_mean_of_both_heads() -> None:
    a = tiny_deit_distilled()
    m = a.model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = m.forward_features(x)  # (B, N, C): cls at 0, dist at 1
        expected = (m.head(feats[:, 0]) + m.head_dist(feats[:, 1])) / 2
        torch.testing.assert_close(a.logits(x), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(a.encode_image(x), (feats[:, 0] + feats[:, 1]) / 2, atol=1e-6, rtol=0)
    assert a.token_layout().prefix_kinds == ("cls", "dist")
    # DeiT's data config uses ImageNet statistics
    assert a.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))


def test_encode_image_is_pre_logits_and_gradcam_layer() -> None:
    a = tiny_timm_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        emb = a.encode_image(x)
        torch.testing.assert_close(a.model.head(emb), a.logits(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(emb, a.model.forward_features(x)[:, 0], atol=1e-6, rtol=0)
    assert a.gradcam_layer() is a.model.blocks[-1].norm1
    avg = tiny_vit_avgpool()
    assert avg.gradcam_layer() is avg.model.blocks[-1]
    with torch.no_grad():
        # mean over patch tokens, then timm's fc_norm (global_pool='avg' uses fc_norm)
        pooled = avg.model.fc_norm(avg.model.forward_features(x).mean(1))
        torch.testing.assert_close(avg.encode_image(x), pooled, atol=1e-6, rtol=0)


def test_preprocess_from_data_config_and_dynamic_sizes() -> None:
    a = tiny_timm_vit(dynamic_img_size=True)
    assert a.preprocess.size == (32, 32)
    assert a.preprocess.interpolation == "bicubic" and a.preprocess.crop_pct == pytest.approx(0.9)
    assert set(a.preprocess.sources.values()) == {"timm_default"} and a.preprocess.warnings == ()  # random init
    assert a.supports_input_size((32, 48)) and not a.supports_input_size((30, 48))
    assert a.token_layout((16, 40)).grid == (2, 5)
    fixed = tiny_timm_vit()
    assert not fixed.supports_input_size((32, 48))


@pytest.mark.parametrize(
    ("arch", "prefix", "pooled"),
    [
        ("vit_base_patch16_clip_224", ("cls",), 0),  # CLIP vision tower (pre-norm)
        ("vit_base_patch16_reg4_gap_256", ("reg",) * 4, None),  # registers, no CLS, mean-pooled
        ("vit_small_patch14_reg4_dinov2", ("cls",) + ("reg",) * 4, 0),  # CLS + registers
        ("deit_tiny_distilled_patch16_224", ("cls", "dist"), 0),
    ],
)
def test_real_timm_architectures_layout_and_capture(arch: str, prefix: tuple[str, ...], pooled: int | None) -> None:
    from audit.capture import assert_no_hooks, capture

    torch.manual_seed(0)
    a = load_model(f"timm:{arch}", **TINY_VIT)
    lay = a.token_layout()
    assert (lay.prefix_kinds, lay.pooled, lay.grid) == (prefix, pooled, (4, 4))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = a.logits(x)
        with capture(a) as cap:
            got = a.logits(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert [t.shape[-1] for t in cap.attentions] == [lay.n_tokens] * 2
    assert_no_hooks(a.model)
