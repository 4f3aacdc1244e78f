"""Registrations carry metadata; registries find their modules by package discovery.

A method or family is one module that registers itself: no hand-kept list of modules, no table of
target-free names. A throwaway method registered in a test shows up in ``list_methods()`` and in
``vision-audit explain --list-methods``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

import audit.explain
from audit.cli import main
from audit.errors import UsageError
from audit.registry import ADAPTERS, METHODS, Registry, discover

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def throwaway():
    """Registers ``test_throwaway`` (target-free, needs attention, gradient) and removes it afterwards."""
    calls: list[object] = []

    def fn(adapter, images, *, target=None, **params):
        """A constant map on the patch grid."""
        calls.append(target)
        gh, gw = adapter.token_layout(tuple(images.shape[-2:])).grid
        return torch.ones(images.shape[0], gh, gw)

    METHODS.names()  # the built-in methods first
    METHODS.register("test_throwaway", fn, target_free=True, needs_attention=True, gradient=True,
                     description="a throwaway method registered by a test")
    try:
        yield calls
    finally:
        METHODS.unregister("test_throwaway")
    assert "test_throwaway" not in METHODS


def test_a_registered_method_is_listed_everywhere(throwaway, capsys: pytest.CaptureFixture[str]) -> None:
    assert "test_throwaway" in audit.explain.list_methods()
    meta = {m["name"]: m for m in audit.explain.method_metadata()}["test_throwaway"]
    assert meta["target_free"] and meta["needs_attention"] and meta["gradient"] and meta["families"] is None
    assert main(["explain", "--list-methods"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("test_throwaway "))
    assert re.search(r"ignored\s+needs\s+yes\s+all\s+a throwaway method registered by a test", line), line
    for name in METHODS.names():  # every method has its line
        assert re.search(rf"^{name}\s", out, re.MULTILINE), name


def test_list_methods_needs_no_images_or_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--list-methods"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^rollout\s+ignored\s+needs\s+no\s", out, re.MULTILINE)
    assert re.search(r"^gae\s+used\s+needs\s+yes\s", out, re.MULTILINE)
    assert re.search(r"^occlusion\s+used\s+-\s+no\s", out, re.MULTILINE)
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--model", "zoo:vit-biased"])  # images are still required without --list-methods
    assert exc.value.code == 2


def test_target_free_comes_from_the_registration(throwaway) -> None:
    from tests.helpers_models import tiny_timm_vit

    a = tiny_timm_vit()
    e = audit.explain.explain(a, torch.randn(2, 3, 32, 32), method="test_throwaway")
    assert throwaway == [None] and e.target == {"kind": "none"}  # no target resolved for a target-free method


def test_builtin_method_metadata() -> None:
    meta = {m["name"]: m for m in audit.explain.method_metadata()}
    assert {n for n, m in meta.items() if m["target_free"]} == {"rollout", "attention"}
    assert {n for n, m in meta.items() if m["needs_attention"]} == {"rollout", "attention", "gae"}
    assert {n for n, m in meta.items() if not m["gradient"]} == {"rollout", "attention", "occlusion",
                                                                  "feature_ablation"}
    assert all(m["description"] for m in meta.values())


def test_captum_methods_are_one_table() -> None:
    from audit.explain import captum_methods as cm

    names = [row.name for row in cm.CAPTUM_METHODS]
    assert names == ["ig", "gradient_shap", "saliency", "input_x_gradient", "smoothgrad", "occlusion",
                     "feature_ablation"]
    for row in cm.CAPTUM_METHODS:
        assert METHODS.get(row.name) is cm.MAP_METHODS[row.name]
        assert METHODS.meta(row.name)["captum"] == row.captum
        assert METHODS.meta(row.name)["gradient"] is row.gradient


def test_an_unknown_captum_parameter_is_named() -> None:
    from audit.errors import ExplainError
    from audit.explain import captum_methods as cm
    from tests.helpers_models import tiny_timm_vit

    with pytest.raises(ExplainError, match=r"'ig' has no parameter\(s\) \['n_step'\]; its parameters: n_steps"):
        cm.ig_attr(tiny_timm_vit(), torch.randn(1, 3, 32, 32), n_step=3)
    with pytest.raises(ExplainError, match="smoothgrad base 'occlusion' is not supported"):
        cm.smoothgrad_attr(tiny_timm_vit(), torch.randn(1, 3, 32, 32), base="occlusion")


def test_families_and_needs_attention_decide_which_methods_apply() -> None:
    def fn(adapter, images, *, target=None):
        raise AssertionError("not called")

    METHODS.names()
    ADAPTERS.names()
    METHODS.register("test_timm_only", fn, families=("timm",))
    ADAPTERS.register("test_family", type("NoAttention", (), {"load": None}), example="test_family:x")
    try:
        assert "test_timm_only" in audit.explain.list_methods(family="timm")
        assert "test_timm_only" not in audit.explain.list_methods(family="hf")
        without = audit.explain.list_methods(family="test_family")  # a family that declares no attention
        assert "rollout" not in without and "gae" not in without and "gradcam" in without
        assert set(audit.explain.list_methods(family="open_clip")) >= {"rollout", "gae", "attention"}
    finally:
        METHODS.unregister("test_timm_only")
        ADAPTERS.unregister("test_family")


def test_models_command_prints_example_and_methods(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for family in ("timm", "open_clip", "hf", "zoo"):
        example = ADAPTERS.meta(family)["example"]
        assert example.startswith(f"{family}:") and example in out
        assert ADAPTERS.meta(family)["attention"] is True
    # every family lists the methods that apply: one "methods:" line, or one line per architecture group
    # (timm and hf: ViTs with every method, Swin / ConvNeXt without the attention methods)
    blocks = re.split(r"\n(?=\S)", out.split("\nA local checkpoint")[0])
    assert [b.split()[0] for b in blocks] == ADAPTERS.names()
    for b in blocks:
        lines = [ln for ln in b.splitlines() if "gradcam" in ln]
        assert lines and any("rollout" in ln and "do not apply" not in ln for ln in lines), b
    assert "timm Swin (v1/v2): " in out and "(no attention maps: rollout, gae, attention do not apply)" in out


def _registering_modules(package_dir: Path, call: str) -> set[str]:
    return {p.stem for p in package_dir.glob("*.py") if call in p.read_text(encoding="utf-8")}


def test_every_registering_module_is_discovered_without_a_list() -> None:
    import audit.explain as pkg_explain
    import audit.models as pkg_models

    explain_dir = Path(pkg_explain.__file__).parent
    models_dir = Path(pkg_models.__file__).parent
    assert not hasattr(pkg_explain, "_METHOD_MODULES") and not hasattr(pkg_models, "_ADAPTER_MODULES")
    found = {m.rsplit(".", 1)[-1] for m in discover("audit.explain")}
    assert _registering_modules(explain_dir, "@METHODS.register(") <= found
    found = {m.rsplit(".", 1)[-1] for m in discover("audit.models")}
    assert _registering_modules(models_dir, "@ADAPTERS.register(") <= found
    fams = {ADAPTERS.get(n).__module__.rsplit(".", 1)[-1] for n in ADAPTERS.names()}
    assert fams == _registering_modules(models_dir, "@ADAPTERS.register(")


def test_a_module_dropped_into_the_package_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "zz_dropped_method.py").write_text(
        "from audit.registry import METHODS\n\n"
        "@METHODS.register('test_dropped', target_free=True)\n"
        "def dropped(adapter, images, *, target=None):\n"
        "    '''Dropped into the package.'''\n"
    )
    monkeypatch.setattr(audit.explain, "__path__", [*audit.explain.__path__, str(tmp_path)])
    try:
        assert "audit.explain.zz_dropped_method" in discover("audit.explain")
        assert "test_dropped" in METHODS and METHODS.meta("test_dropped")["target_free"] is True
    finally:
        METHODS.unregister("test_dropped")
        sys.modules.pop("audit.explain.zz_dropped_method", None)


def test_a_fresh_registry_discovers_its_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "va_test_home"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from audit.registry import Registry\nTHINGS = Registry('thing', "
                                     "home='va_test_home', defaults={'fast': False})\n")
    (pkg / "alpha.py").write_text("from va_test_home import THINGS\nTHINGS.register('a', 1, fast=True)\n")
    (pkg / "beta.py").write_text("from va_test_home import THINGS\nTHINGS.register('b', 2)\n")
    (pkg / "_private.py").write_text("raise RuntimeError('modules starting with _ are not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import va_test_home

        things = va_test_home.THINGS
        assert things.names() == ["a", "b"]  # found by discovery: no module list anywhere
        assert things.meta("a") == {"fast": True} and things.meta("b") == {"fast": False}
        with pytest.raises(UsageError, match="unknown thing 'c'; known: a, b"):
            things.get("c")
        with pytest.raises(ValueError, match="thing 'a' is already registered"):
            things.register("a", 3)
    finally:
        for name in [m for m in sys.modules if m.startswith("va_test_home")]:
            sys.modules.pop(name)


def test_meta_falls_back_to_attributes_of_the_object() -> None:
    r: Registry = Registry("thing", defaults={"target_free": False, "description": ""})

    def fn():
        pass

    fn.target_free = True  # type: ignore[attr-defined]
    r.register("f", fn)
    r.register("g", fn, target_free=False, extra=1)
    assert r.meta("f") == {"target_free": True, "description": ""}
    assert r.meta("g") == {"target_free": False, "description": "", "extra": 1}


def test_architecture_how_to_names_one_file_each() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for head, path in (("A model family.", "audit/models/<family>.py"),
                       ("An explanation method.", "audit/explain/<method>.py"),
                       ("A dashboard page.", "dashboards/pages/<page>.py")):
        para = text.split(f"**{head}**", 1)[1].split("\n\n", 1)[0]
        assert path in para, head
