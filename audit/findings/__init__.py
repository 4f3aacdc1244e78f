"""The findings ledger: one ranked table of what a reader must know first about a run.

Every surface that states a conclusion (the CLI summary, report.html / .md / .pdf, the model
card, audit.json, the dashboard, the comparison and ``vision-audit check``) reads this table;
none composes its own headline. It is computed once, at the end of a run, from the analysis
tables the run wrote (:func:`build_findings`), and stored as the run's ``findings`` table.
Older runs without it get it computed on the fly by :meth:`audit.runs.Run.findings`, from the
same tables, so the answer is the same.

One row per tested (or untested) comparison:

========================  ===============================================================
column                    meaning
========================  ===============================================================
rank                      1 = first; significant after correction first, then by effect
kind                      performance, calibration, harmful_label, association,
                          retrieval_skew, embedding, region_mass, prediction_distribution,
                          faithfulness, sanity, slice (an error slice nobody labelled)
attribute                 the group column (intersections joined with "×"), "" if none
metric                    the metric's name (``tpr``, ``accuracy``, ``effect_size`` ...)
scope                     ``overall``, ``macro`` (mean of one-vs-rest rows), ``class:<name>``,
                          ``method:<name>``, ``test:<name>``, ``query:<text>@<k>``
family                    range (max−min over k groups), pairwise, one_vs_rest, single,
                          slice_vs_rest
worst_group / best_group  the groups at the two ends (worst by the metric's direction)
worst_value / best_value  their values
gap                       the effect: best − worst for rates (≥ 0), d for associations ...
ci_low / ci_high          95% interval of ``gap`` (NaN where the analysis gives none)
n_worst / n_best          the metric's denominator in those groups
p_value / p_adj           raw and corrected p (NaN when not tested)
correction                how p_adj was made ("holm within range (m=42)", "none" ...)
significant               p_adj < alpha
status                    significant | not significant | not tested | flagged | descriptive
effect                    magnitude on a 0–1 scale used for ranking (see :func:`_effect`)
source                    the run table the row comes from
text                      the sentence every surface prints
========================  ===============================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from audit.findings.naming import (
    DEFAULT_ALPHA,
    DEFAULT_HEADLINE,
    FINDINGS_COLUMNS,
    KIND_ORDER,
    LOWER_IS_BETTER,
    METRIC_NAMES,
    NO_DIRECTION,
    OUTCOME_KINDS,
    Tables,
    as_float,
    fmt_p,
    metric_key,
    metric_label,
    scope_of,
)
from audit.findings.sources import (
    ablation_rows,
    association_rows,
    embedding_rows,
    empty_ledger,
    faithfulness_rows,
    harmful_rows,
    performance_rows,
    prediction_rows,
    region_mass_rows,
    retrieval_rows,
    slice_rows,
)
from audit.stats.rules import MIN_GROUP_SIZE

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_HEADLINE",
    "FINDINGS_COLUMNS",
    "KIND_ORDER",
    "LOWER_IS_BETTER",
    "METRIC_NAMES",
    "NO_DIRECTION",
    "OUTCOME_KINDS",
    "SOURCE_TABLES",
    "build_findings",
    "findings_for_run",
    "fmt_p",
    "format_findings",
    "headline",
    "metric_key",
    "metric_label",
    "scope_of",
    "summary_line",
]


# --------------------------------------------------------------------------- ranking
def _effect(row: Mapping[str, Any]) -> float:
    """A 0–1 magnitude for ranking: |gap| for rates and shares, |d| / 2 for Cohen's d (whose range is
    [-2, 2]), 1 − exp(−|skew|) for a log-ratio skew, balanced accuracy above chance for a probe;
    0 for rows without a comparable magnitude (MMD², faithfulness, sanity)."""
    kind, gap = row["kind"], abs(as_float(row.get("gap")))
    if not math.isfinite(gap):
        return 0.0
    if kind in ("performance", "calibration", "harmful_label", "prediction_distribution", "region_mass", "slice"):
        return min(gap, 1.0)
    if kind == "association":
        return min(gap / 2.0, 1.0)
    if kind == "retrieval_skew":
        return 1.0 - math.exp(-gap)
    if kind == "embedding" and row["metric"] == "probe_balanced_accuracy":
        return min(gap, 1.0)
    return 0.0


def build_findings(
    tables: Tables, *, alpha: float = DEFAULT_ALPHA, min_group_size: int = MIN_GROUP_SIZE
) -> pd.DataFrame:
    """The ranked ledger from a run's analysis tables (``{name: DataFrame}``; missing ones are skipped).

    Ranking: significant findings first (after each family's correction), then flagged methods,
    then not significant, descriptive and untested rows; within each status, findings about the
    model's outputs (:data:`OUTCOME_KINDS`: performance, calibration, harmful labels, associations,
    prediction shares) before findings about its representation and explanations; then by
    :func:`_effect` (largest first), then by kind in :data:`KIND_ORDER`. Ties keep the analysis
    order, so the ledger is deterministic.

    Returns:
        DataFrame with columns :data:`FINDINGS_COLUMNS`, ``rank`` starting at 1.
    """
    rows: list[dict[str, Any]] = []
    rows += performance_rows(tables, alpha)
    rows += harmful_rows(tables, alpha)
    rows += association_rows(tables, alpha)
    rows += slice_rows(tables, alpha)
    labelled = tables.get("disparities") is not None and not tables["disparities"].empty
    if not labelled:  # with labels the same shares are the disparities' selection_rate rows (one test, not two)
        rows += prediction_rows(tables, alpha)
    rows += region_mass_rows(tables, alpha, min_group_size)
    rows += retrieval_rows(tables)
    rows += embedding_rows(tables, alpha)
    rows += faithfulness_rows(tables, alpha)
    rows += ablation_rows(tables, alpha)
    if not rows:
        return empty_ledger()
    status_order = {"significant": 0, "flagged": 1, "not significant": 2, "descriptive": 3, "not tested": 4}
    for i, r in enumerate(rows):
        r["effect"] = _effect(r)
        tier = 0 if r["kind"] in OUTCOME_KINDS else 1
        r["_order"] = (status_order.get(r["status"], 5), tier, -r["effect"], KIND_ORDER.index(r["kind"]), i)
    rows.sort(key=lambda r: r["_order"])
    df = pd.DataFrame(rows).drop(columns="_order")
    for c in FINDINGS_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    df["rank"] = np.arange(1, len(df) + 1)
    df = df[FINDINGS_COLUMNS]
    for c in ("n_worst", "n_best"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in ("worst_value", "best_value", "gap", "ci_low", "ci_high", "p_value", "p_adj", "effect"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("kind", "attribute", "metric", "scope", "family", "worst_group", "best_group", "correction",
              "status", "source", "text"):
        df[c] = df[c].fillna("").astype(str)
    df["significant"] = df["significant"].fillna(False).astype(bool)
    return df.reset_index(drop=True)


#: the tables build_findings reads
SOURCE_TABLES = ("disparities", "group_performance", "harmful_disparities", "harmful_rates", "association",
                 "prediction_disparities", "prediction_distribution", "region_mass", "retrieval_skew",
                 "linear_probe", "mmd", "faithfulness_verdicts", "sanity", "slices", "ablations")


def findings_for_run(run: Any) -> pd.DataFrame:
    """Compute the ledger of an opened :class:`~audit.runs.Run` from its tables (no model needed)."""
    tables = {t: run.table(t) for t in SOURCE_TABLES if run.has_table(t)}
    stats = run.section("stats")  # the run's own settings (config defaults for a run assembled by hand)
    return build_findings(tables, alpha=float(stats.alpha), min_group_size=int(stats.min_group_size))


def headline(findings: pd.DataFrame, n: int = DEFAULT_HEADLINE) -> list[str]:
    """The first ``n`` sentences of the ledger: what every surface leads with."""
    return [str(t) for t in findings.sort_values("rank")["text"].head(n)]


def summary_line(findings: pd.DataFrame) -> str:
    """One sentence counting the ledger, e.g. "3 of 41 findings are significant after correction"."""
    if findings.empty:
        return "No finding could be computed: the run has no group columns, labels or CLIP tests."
    tested = findings[findings["status"].isin(["significant", "not significant"])]
    sig = int(findings["significant"].sum())
    flagged = int((findings["status"] == "flagged").sum())
    untested = int((findings["status"] == "not tested").sum())
    parts = [f"{sig} of {len(tested)} tested comparisons are significant after correction"]
    if flagged:
        parts.append(f"{flagged} explanation method(s) flagged")
    if untested:
        parts.append(f"{untested} comparison(s) could not be tested")
    return "; ".join(parts) + "."


def format_findings(findings: pd.DataFrame, *, name: str, n: int = DEFAULT_HEADLINE) -> str:
    """The plain-text findings block of the CLI and the demo: the count line, then the first sentences."""
    lines = [f"{name}: {summary_line(findings)}"]
    lines += [f"  {i}. {h}" for i, h in enumerate(headline(findings, n), start=1)]
    return "\n".join(lines)
