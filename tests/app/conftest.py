"""Fixtures for the dashboard tests: factory runs (classifier, CLIP, control) and runs whose
model can be loaded (tiny timm ViT / tiny open_clip CLIP saved as local checkpoints)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "dashboards" / "app.py"
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from run_factory import make_run

from audit.runs import Run

N = 240  # images per factory run: small, but every group of one attribute has >= 50 rows

TINY_VIT = {"pretrained": False, "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_CLIP_CFG = {
    "embed_dim": 32,  # = the factory's embedding width, so live text embeddings meet stored image ones
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2, "mlp_ratio": 2.0},
}


def _with_model(run_path: Path, *, spec: str, options: dict, adapter, class_names: list[str] | None = None) -> Run:
    """Save ``adapter``'s weights next to the run and record the model in run.json (config.model)."""
    from safetensors.torch import save_file

    ckpt = run_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in adapter.model.state_dict().items()}, str(ckpt))
    run = Run.open(run_path)
    run.meta.setdefault("config", {})["model"] = {"spec": spec, "checkpoint": str(ckpt), "options": options,
                                                  "class_names": class_names}
    run.meta["model"]["spec"] = spec
    run.meta["model"]["checkpoint"] = str(ckpt)
    run.meta["model"]["fingerprint"] = adapter.fingerprint  # the audited weights (live probing checks it)
    run.save_meta()
    return Run.open(run_path)


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dashboard_runs")


@pytest.fixture(scope="session")
def clf_run(runs_dir: Path) -> Run:
    """Biased classifier run whose model (a tiny timm ViT, 8x8 grid on 64x64) loads for live probing."""
    from audit.models import load_model

    run = make_run(runs_dir / "vit-biased", kind="classifier", biased=True, n=N, seed=0)
    adapter = load_model("timm:vit_tiny_patch16_224", class_names=run.class_names, **TINY_VIT)
    return _with_model(run.path, spec="timm:vit_tiny_patch16_224", options=TINY_VIT, adapter=adapter,
                       class_names=run.class_names)


@pytest.fixture(scope="session")
def control_run(runs_dir: Path) -> Run:
    """Unbiased control run; its model spec (zoo:vit-control) has no checkpoint, so it cannot load."""
    return make_run(runs_dir / "vit-control", kind="classifier", biased=False, n=N, seed=3)


@pytest.fixture(scope="session")
def clip_run(runs_dir: Path) -> Run:
    """CLIP run whose model (a tiny open_clip CLIP with 32-d embeddings) loads for live probing."""
    from audit.models import load_model

    run = make_run(runs_dir / "clip-biased", kind="clip", biased=True, n=N, seed=1)
    opts = {"model_cfg": TINY_CLIP_CFG, "pretrained": False}
    adapter = load_model("open_clip:tiny-test", **opts)
    return _with_model(run.path, spec="open_clip:tiny-test", options=opts, adapter=adapter)


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Callable[..., object]:
    """``app(*runs, policy=None)`` -> an AppTest of dashboards/app.py on those runs, run once."""
    from streamlit.testing.v1 import AppTest

    def make(*runs: Run | Path | str, policy: Path | None = None, page: str | None = None):
        monkeypatch.setenv("VISION_AUDIT_RUNS", ":".join(str(getattr(r, "path", r)) for r in runs))
        if policy is None:
            monkeypatch.delenv("VISION_AUDIT_POLICY", raising=False)
        else:
            monkeypatch.setenv("VISION_AUDIT_POLICY", str(policy))
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.run()
        if page:
            at.switch_page(page).run()
        return at

    return make
