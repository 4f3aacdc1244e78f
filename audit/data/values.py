"""Cell values of a manifest as text: missing cells, numbers and booleans, mixed-type columns.

Label and group values are compared as text; :func:`normalise` decides that text once
(``1`` -> ``"1"``, ``1.0`` -> ``"1"``, ``True`` -> ``"True"``, an empty cell -> missing), and
:func:`mixing_checks` names columns whose values would collide or compare surprisingly.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Column", "is_missing", "mixing_checks", "normalise", "normalise_column", "unknown_column_message"]


def is_missing(v: Any) -> bool:
    """None, NA, NaT and NaN are missing (an empty text is too, see :func:`normalise`)."""
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return bool(isinstance(v, np.floating) and np.isnan(v))


def normalise(v: Any) -> tuple[str | None, str]:
    """A cell value as text, and its kind: "missing", "str", "number" or "bool"."""
    if is_missing(v):
        return None, "missing"
    if isinstance(v, (bool, np.bool_)):
        return ("True" if bool(v) else "False"), "bool"
    if isinstance(v, numbers.Integral):
        return str(int(v)), "number"
    if isinstance(v, numbers.Real):
        f = float(v)
        if math.isinf(f):
            return ("inf" if f > 0 else "-inf"), "number"
        return (str(int(f)) if f.is_integer() else repr(f)), "number"
    if isinstance(v, bytes):
        try:
            s = v.decode("utf-8")
        except UnicodeDecodeError:
            s = repr(v)
    else:
        s = str(v)
    s = s.strip()
    if not s:
        return None, "missing"
    return s, "str"


@dataclass
class Column:
    """One source column normalised: per row its text (``None`` when missing) and its kind."""

    text: list[str | None]
    kinds: list[str]


def normalise_column(values: Sequence[Any]) -> Column:
    """:func:`normalise` every cell of a column."""
    text, kinds = [], []
    for v in values:
        t, k = normalise(v)
        text.append(t)
        kinds.append(k)
    return Column(text, kinds)


def _as_number(s: str) -> float | None:
    try:
        f = float(s)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def mixing_checks(name: str, role: str, col: Column, row_label: Callable[[int], str]) -> tuple[list[str], list[str]]:
    """Table-level problems and notes about mixed value types in one label/group column."""
    problems: list[str] = []
    notes: list[str] = []
    by_text: dict[str, dict[str, list[int]]] = {}
    for i, (t, k) in enumerate(zip(col.text, col.kinds)):
        if t is not None:
            by_text.setdefault(t, {}).setdefault(k, []).append(i)
    for t, kinds in by_text.items():
        if len(kinds) > 1:
            desc = " and ".join(
                f"the {'string ' + repr(t) if k == 'str' else k + ' ' + t} "
                f"({', '.join(row_label(r) for r in rows[:3])}{', ...' if len(rows) > 3 else ''})"
                for k, rows in sorted(kinds.items())
            )
            problems.append(
                f"{role} column {name!r} holds {desc}, which would both become {t!r}; "
                "store the column as one type (all text or all numbers)"
            )
    present = {k for k in col.kinds if k != "missing"}
    if len(present) > 1 and not problems:
        notes.append(f"{role} column {name!r} mixes {', '.join(sorted(present))} values; all are compared as text")
    by_num: dict[float, set[str]] = {}
    for t in by_text:
        f = _as_number(t)
        if f is not None:
            by_num.setdefault(f, set()).add(t)
    for f, spellings in sorted(by_num.items()):
        if len(spellings) > 1:
            notes.append(
                f"{role} column {name!r} writes the number {f:g} in different ways "
                f"({', '.join(repr(s) for s in sorted(spellings))}); they are kept as different values"
            )
    return problems, notes


def unknown_column_message(name: str, role: str, available: Sequence[str]) -> str:
    """The "unknown column" message: the available columns and the closest name."""
    avail = [str(c) for c in available]
    close = difflib.get_close_matches(name, avail, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown column {name!r} (mapped as {role}); available columns: {', '.join(avail)}{hint}"
