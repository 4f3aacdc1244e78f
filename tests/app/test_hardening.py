"""Dashboard hardening that AppTest cannot drive: the launch command and label-set uploads."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from audit.cli import main
from audit.errors import ConfigError
from audit.runs import Run
from dashboards.labelsets import MAX_UPLOAD, parse_label_lines, read_uploaded_set

GOOD = b"""type: labels
name: mine
source: test
labels:
  - {text: a photo of a cat, kind: class}
  - {text: a photo of a thief, kind: harmful}
"""


def _launch(monkeypatch: pytest.MonkeyPatch, *argv: str) -> list[str]:
    import audit.dashboard_command as dc

    seen: list[list[str]] = []
    monkeypatch.setattr(dc, "run_forwarding_signals", lambda cmd: seen.append(list(cmd)) or 0)
    assert main(["dashboard", *argv]) == 0
    (cmd,) = seen
    return cmd


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_dashboard_binds_localhost_and_caps_uploads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    run = Run.create(tmp_path / "r")
    cmd = _launch(monkeypatch, str(run.path))
    assert _flag(cmd, "--server.address") == "127.0.0.1"
    assert _flag(cmd, "--server.maxUploadSize") == "1"
    assert _flag(cmd, "--server.enableXsrfProtection") == "true"
    assert _flag(cmd, "--client.showErrorDetails") == "type"
    assert cmd[cmd.index("--") + 1:] == [str(run.path.resolve())]  # only the runs given at start
    cmd = _launch(monkeypatch, "--host", "0.0.0.0", str(run.path))
    assert _flag(cmd, "--server.address") == "0.0.0.0"


def test_dashboard_refuses_a_directory_that_is_not_a_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import audit.dashboard_command as dc

    monkeypatch.setattr(dc, "run_forwarding_signals", lambda *a, **k: pytest.fail("server must not start"))
    assert main(["dashboard", str(tmp_path)]) == 2
    assert "holds no run (no run.json in it or its subdirectories)" in capsys.readouterr().err


def test_dashboard_opens_every_run_of_a_parent_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a, b = Run.create(tmp_path / "demo" / "a"), Run.create(tmp_path / "demo" / "b")
    cmd = _launch(monkeypatch, str(tmp_path / "demo"))
    assert cmd[cmd.index("--") + 1:] == [str(a.path.resolve()), str(b.path.resolve())]


def test_stopping_the_dashboard_command_stops_the_server(tmp_path: Path) -> None:
    """SIGTERM to `vision-audit dashboard` reaches the server it started, and the command waits for it."""
    import os
    import signal
    import sys
    import time

    pidfile = tmp_path / "child.pid"
    child = (f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", "import sys; from audit.dashboard_command import "
                               f"run_forwarding_signals; sys.exit(run_forwarding_signals([sys.executable, '-c', {child!r}]))"])
    deadline = time.monotonic() + 60
    while not (pidfile.is_file() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child_pid = int(pidfile.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) != 0  # the child's signal exit, passed on
    for _ in range(100):  # the child is gone (reaped by the parent before it exited)
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the server child outlived the dashboard command")


def test_uploaded_label_set_is_checked() -> None:
    labels, name = read_uploaded_set(GOOD, "mine.yaml")
    assert name == "mine" and labels["kind"].tolist() == ["class", "harmful"]
    assert labels["prompt"].tolist() == labels["label"].tolist() == ["a photo of a cat", "a photo of a thief"]
    with pytest.raises(ValueError, match=r"evil\.py: a label set must be a \.yaml or \.yml file"):
        read_uploaded_set(GOOD, "evil.py")
    with pytest.raises(ValueError, match=f"at most {MAX_UPLOAD:,} bytes"):
        read_uploaded_set(GOOD + b"#" * MAX_UPLOAD, "big.yaml")
    with pytest.raises(ValueError, match=r"not UTF-8 text \(byte 0\)"):
        read_uploaded_set(b"\xff\xfe", "x.yaml")
    with pytest.raises(ConfigError, match="uploaded file x.yaml: invalid YAML"):  # safe loader: no python tags
        read_uploaded_set(b"!!python/object/apply:os.system ['echo pwned']", "x.yaml")
    with pytest.raises(ConfigError, match=r"uploaded file x\.yaml: invalid set: labels\.1\.kind"):
        read_uploaded_set(GOOD.replace(b"kind: harmful", b"kind: evil"), "x.yaml")
    with pytest.raises(ValueError, match="is a WeatSet, not a label set"):
        read_uploaded_set((Path(__file__).parents[2] / "audit/stats/data/weat_caliskan.yaml").read_bytes(), "w.yaml")


def test_typed_label_lines_name_the_bad_line() -> None:
    assert parse_label_lines("cat\n# comment\nthief | harmful\n")["kind"].tolist() == ["class", "harmful"]
    with pytest.raises(ValueError, match="line 2: kind 'evil'"):
        parse_label_lines("cat\ndog | evil\n")
    with pytest.raises(ValueError, match="distinct"):
        parse_label_lines("cat\ncat\n")


def test_fit_table_sizes_a_text_column_of_missing_values() -> None:
    """An Int64 / string / object column with only missing values (a tiny run's ledger) gets a width,
    not ``int(NaN)``."""
    from streamlit.testing.v1 import AppTest

    def page() -> None:
        import pandas as pd

        from dashboards.ui import fit_table

        fit_table(pd.DataFrame({"n": pd.array([pd.NA, pd.NA], dtype="Int64"),
                                "s": pd.array([None, None], dtype="string"), "o": [None, "abc"]}))

    at = AppTest.from_function(page).run()
    assert not at.exception
    assert len(at.dataframe) == 1 and list(at.dataframe[0].value.columns) == ["n", "s", "o"]
