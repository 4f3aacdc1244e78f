"""Number formatting for everything a reader sees: reports, the findings ledger's sentences,
figures and the CLI. One formatter, so a number reads the same on every surface."""

from __future__ import annotations

import math
from typing import Any, Literal

NumKind = Literal["rate", "p", "int", "diff", "effect", "share", "sig"]


def fmt(value: Any, kind: NumKind = "rate") -> str:
    """Format one number for display; the only number formatter of the reports.

    Args:
        value: a number, or None/NaN (shown as "n/a").
        kind: "rate" / "effect" / "share" (3 decimals), "diff" (signed, 3 decimals),
            "p" (3 decimals, or 2 significant digits in scientific notation below 0.001),
            "int" (integer), "sig" (3 significant digits, for small statistics such as MMD²).

    Returns:
        Text that ``float()`` parses back to the value within the shown precision
        (except "n/a").

    Example:
        >>> fmt(0.12345), fmt(0.00012, "p"), fmt(-0.05, "diff"), fmt(None)
        ('0.123', '1.2e-04', '-0.050', 'n/a')
    """
    if value is None:
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "n/a"
    if kind == "int":
        return str(int(round(v)))
    if kind == "p":
        return f"{v:.3f}" if v >= 0.001 or v == 0 else f"{v:.1e}"
    if kind == "diff":
        return f"{v:+.3f}"
    if kind == "sig":
        return f"{v:.3g}"
    return f"{v:.3f}"


def fmt_ci(low: Any, high: Any, kind: NumKind = "rate") -> str:
    """An interval as "[low, high]" using :func:`fmt` for both ends."""
    if low is None and high is None:
        return "n/a"
    return f"[{fmt(low, kind)}, {fmt(high, kind)}]"
