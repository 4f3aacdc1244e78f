"""The statistics rules that every group statistic shares: one setting each, defined here only.

Every stats function, the config (``stats.min_group_size`` / ``stats.alpha``), the findings
ledger, the report summary and the dashboard take their defaults from these constants. This
module imports nothing, so a reader of the defaults (the config, the CLI) pays for no library.
"""

from __future__ import annotations

__all__ = ["ALPHA", "MIN_GROUP_SIZE"]

#: groups whose metric denominator is below this are flagged and left out of comparisons
MIN_GROUP_SIZE: int = 50
#: 1 - interval coverage, and the significance level after correction
ALPHA: float = 0.05
