"""`make demo` writes all four documents per model: report.html, report.md, report.pdf and the model card
(plus audit.json), and the comparison."""

from __future__ import annotations

import pytest

from audit.demo import run_demo


@pytest.mark.slow
def test_the_demo_writes_every_document(tmp_path) -> None:
    assert run_demo(out=tmp_path, n_per_cell=6, names=("vit-biased", "vit-control")) == 0
    for name in ("vit-biased", "vit-control"):
        report = tmp_path / name / "report"
        for f in ("report.html", "report.md", "report.pdf", "audit.json", "MODEL_CARD.md"):
            assert (report / f).is_file() and (report / f).stat().st_size > 0, (name, f)
    for f in ("comparison.html", "comparison.md", "comparison.pdf", "comparison.json"):
        assert (tmp_path / "compare-vit" / f).is_file(), f
