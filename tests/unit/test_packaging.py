"""The wheel carries everything a user needs without the source checkout: the dashboard app and its
pages, the canary weights, the shipped sets, the report templates."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    (whl,) = out.glob("vision_audit-*.whl")
    return whl


def test_the_wheel_holds_the_dashboard_and_the_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    pages = {p.name for p in (ROOT / "dashboards" / "pages").glob("*.py")}
    assert {f"dashboards/pages/{p}" for p in pages} <= names
    for f in ("dashboards/app.py", "dashboards/launch.py", "dashboards/.streamlit/config.toml",
              "audit/zoo/weights/vit-biased.safetensors", "audit/stats/data/weat_caliskan.yaml",
              "audit/slices/data/vocabulary.yaml",
              "audit/report/templates/report.html.j2"):
        assert f in names, f


def test_an_installed_copy_finds_its_own_dashboard(wheel: Path, tmp_path: Path) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from audit.dashboard_command import dashboard_app; "
            "print(dashboard_app())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, capture_output=True, text=True,
                         cwd=tmp_path).stdout.strip()
    assert Path(out) == tmp_path / "dashboards" / "app.py"
