"""`vision-audit bench explain` on a ConvNeXt (no attention maps): Grad-CAM and IG rows against
pytorch-grad-cam and raw captum, rollout/GAE left out with the refusal (a smoke run: 1 repeat, 32x32)."""

from __future__ import annotations

import pytest

from audit.bench.explain import main


def test_bench_explain_convnext_skips_attention_and_times_gradcam_ig(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "convnext_atto", "--batch", "2", "--size", "64", "--repeats", "1", "--ig-steps", "2",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "rollout/GAE left out: ConvNeXt is a convolutional network" in out
    rows = [ln for ln in out.splitlines() if ln.startswith(("IG ", "Grad-CAM"))]
    assert len(rows) == 2 and "pytorch-grad-cam" in rows[1] and "raw captum IG" in rows[0]
    assert not any(ln.startswith(("capture + rollout", "GAE ")) for ln in out.splitlines())
