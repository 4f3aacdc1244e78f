"""MODEL_CARD.md from huggingface_hub's template, and updating an existing card in place."""

from __future__ import annotations

import re

import pytest
from huggingface_hub import ModelCard

from audit.report import build_summary, fmt
from audit.report.modelcard import replace_section, write_model_card
from tests.run_factory import shared_run


def _section(text: str, heading: str) -> str:
    m = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, heading
    return m.group(1)


@pytest.fixture(scope="module")
def summary():
    return build_summary(shared_run(kind="classifier", biased=True))


def test_default_template_sections_filled(summary, tmp_path) -> None:
    path = write_model_card(summary, tmp_path / "MODEL_CARD.md")
    text = path.read_text(encoding="utf-8")
    card = ModelCard(text)
    assert "vision-audit" in card.data.tags
    bias = _section(text, "Bias, Risks, and Limitations")
    ev = _section(text, "Evaluation")
    assert "[More Information Needed]" not in bias and "[More Information Needed]" not in ev
    bg = next(d for d in summary.disparities if d.attribute == "background" and d.metric == "accuracy")
    assert fmt(bg.difference) in bias and "significant after Holm correction" in bias
    assert "rollout failed the model" in bias
    assert "#### Testing Data" in ev and "### Results" in ev
    for r in summary.performance:
        if r.attribute == "background" and r.metric == "accuracy":
            assert f"| {fmt(r.value)} | [{fmt(r.ci_low)}, {fmt(r.ci_high)}] | {r.n} |" in ev
    assert "## Model Details" in text  # the rest of the template is still there
    # every section the run can fill is filled; what only the owner can write is listed once
    assert "[More Information Needed]" not in text
    for heading in ["Uses", "How to Get Started with the Model", "Model Examination", "Technical Specifications",
                    "Glossary", "More Information", "Model Card Authors"]:
        assert _section(text, heading).strip(), heading
    owner = _section(text, "Information only the model owner can give")
    for item in ["Training Details", "Citation", "Model Card Contact", "licence"]:
        assert item in owner, item
    details = _section(text, "Model Details")
    assert summary.provenance.fingerprint in details.replace("\\", "") and "Classes:" in details
    assert f"load_model({summary.provenance.model_spec!r}" in _section(text, "How to Get Started with the Model")
    exam = _section(text, "Model Examination")
    for v in summary.verdicts:
        if v.score == "deletion_auc":
            assert f"| {fmt(v.value)} | {fmt(v.random_value)} |" in exam and v.verdict in exam


def test_existing_card_keeps_other_sections(summary, tmp_path) -> None:
    base = tmp_path / "README.md"
    base.write_text("---\nlicense: apache-2.0\ntags:\n- image-classification\n---\n\n# My model\n\nIntro kept.\n\n"
                    "## Uses\n\nUses kept.\n\n## Bias, Risks, and Limitations\n\nOLD BIAS\n\n### Recommendations\n\n"
                    "OLD RECS\n\n## Evaluation\n\nOLD EVAL\n\n## Citation\n\nCitation kept.\n", encoding="utf-8")
    text = write_model_card(summary, tmp_path / "out.md", base=base).read_text(encoding="utf-8")
    assert "OLD BIAS" not in text and "OLD RECS" not in text and "OLD EVAL" not in text
    for kept in ["# My model", "Intro kept.", "## Uses", "Uses kept.", "## Citation", "Citation kept."]:
        assert kept in text
    assert ModelCard(text).data.license == "apache-2.0"
    assert text.index("## Uses") < text.index("## Bias, Risks") < text.index("## Evaluation") < text.index("## Citation")


def test_replace_section_appends_when_missing() -> None:
    out = replace_section("# T\n\n## Uses\n\nx\n", "Evaluation", "new body")
    assert out.endswith("## Evaluation\n\nnew body\n\n") and "## Uses\n\nx" in out
    # a level-3 heading with the same words is not the section
    out = replace_section("## A\n\n### Evaluation\n\nkeep\n\n## Evaluation\n\nold\n## B\n", "Evaluation", "new")
    assert "### Evaluation\n\nkeep" in out and "old" not in out and "## B" in out
