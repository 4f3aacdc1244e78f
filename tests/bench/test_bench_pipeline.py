"""``vision-audit bench pipeline`` end to end on a tiny configuration (a smoke test, not a timing:
it runs real runs, JPEG decoding and the peak-RSS children, so it is marked slow)."""

from __future__ import annotations

import pytest

from audit.bench import run


@pytest.mark.slow
def test_bench_pipeline_smoke(capsys, tmp_path) -> None:
    """Every part of ``bench pipeline`` runs on a tiny configuration and prints its figure and goal."""
    argv = ["--model", "tiny-64", "--images", "16", "--repeats", "1", "--batch-size", "8", "--workers", "1",
            "--skip", "ray", "--rss-sizes", "16,24", "--workdir", str(tmp_path), "--json", str(tmp_path / "f.json")]
    assert run("pipeline", argv) == 0
    out = capsys.readouterr().out
    assert "JPEG on disk -> embeddings (1 workers) / in-memory loop" in out and ">= 0.90" in out
    assert "peak RSS 24 / 16 images" in out and "<= 1.20" in out
    assert "timed model: tiny-64" in out
    import json

    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["throughput"]["n"] == 16 and figures["throughput"]["disk_ips"] > 0
    assert [r["n"] for r in figures["rss"]] == [16, 24] and all(r["n_used"] == r["n"] for r in figures["rss"])
