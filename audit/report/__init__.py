"""Reports of a run: HTML, Markdown, PDF, audit.json, model card, comparison and the policy gate.

Example:
    >>> from audit.report import write_report                     # doctest: +SKIP
    >>> paths = write_report(["runs/demo/vit-biased"])            # doctest: +SKIP
    >>> paths["html"]                                              # doctest: +SKIP
"""

from __future__ import annotations

from audit.report.summary import SUMMARY_SCHEMA_VERSION, AuditSummary, build_summary, fmt, fmt_ci
from audit.report.writer import write_report

__all__ = ["SUMMARY_SCHEMA_VERSION", "AuditSummary", "build_summary", "fmt", "fmt_ci", "write_report"]
