"""The Components page: heads x layers effects, a component's role, the random-heads table."""

from __future__ import annotations

import pandas as pd

from audit.components.ablate import ABLATION_COLUMNS
from audit.components.run import COMPONENT_COLUMNS
from audit.runs import Run


def _tables(run: Run) -> None:
    rows = []
    for layer in (1, 2):
        for head in (0, 1, -1):
            eff = 0.9 if (layer, head) == (2, 1) else 0.01 * (layer + head + 2)
            rows.append({"finding": "concept", "component": f"L{layer}." + ("MLP" if head < 0 else f"H{head}"),
                         "layer": layer, "head": head, "kind": "mlp" if head < 0 else "head", "n": 100,
                         "before": 1.5, "after": 1.5 - eff, "effect": eff, "ci_low": eff - 0.05,
                         "ci_high": eff + 0.05, "rank": 0, "roles": "stripes, <b>dots</b>" if eff > 0.5 else ""})
    comp = pd.DataFrame(rows, columns=COMPONENT_COLUMNS)
    comp["rank"] = comp["effect"].rank(ascending=False, method="first").astype(int)
    run.write_table("components", comp)
    abl = pd.DataFrame([{"finding": "concept", "k": 1, "components": "L2.H1", "n_test": 50, "before": 1.5,
                         "after": 0.6, "change": -0.9, "reduction": 0.9, "random_mean": 0.2, "random_q95": 0.5,
                         "n_random": 4, "exact": True, "random_p": 0.25, "p_adj": 0.25, "significant": False,
                         "accuracy_before": 0.9, "accuracy_after": 0.88}], columns=ABLATION_COLUMNS)
    run.write_table("ablations", abl)


def test_components_page_shows_the_run_tables(app, clip_run: Run) -> None:
    _tables(clip_run)
    at = app(clip_run, page="pages/components.py")
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Where a finding is carried"
    grid = at.dataframe[0].value
    grid = getattr(grid, "data", grid)
    assert list(grid.columns) == ["H0", "H1", "MLP"] and grid.loc["L2", "H1"] == 0.9
    assert at.selectbox(key="co_pick").value == "L2.H1"  # ranked first
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["rank"] == "1" and metrics["effect on d (95% CI)"].startswith("0.900")
    md = "\n".join(str(m.value) for m in at.markdown)
    assert "stripes" in md and "<b>dots</b>" not in md  # data is text, never HTML
    assert "0 of 1 significant after Holm" in md


def test_components_page_without_tables_says_why(app, clf_run: Run) -> None:
    at = app(clf_run, page="pages/components.py")
    assert not at.exception
    assert any("components.enabled" in str(i.value) for i in at.info)
