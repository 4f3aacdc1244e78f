"""The steps of :func:`audit.data.load_manifest`, from a source table to the standard table.

Each step adds what it finds to one :class:`Problems` (table-level problems, which cannot be
skipped, and reasons per row) and to the notes, in the order the rows are read, so every
problem is reported at once with its row and file:

1. :func:`check_columns`   the mapped columns exist (fatal at once) and the table has rows
2. :func:`read_values`     mapped columns as text; empty or mixed-type columns; per-row values
3. :func:`check_paths`     image and mask paths resolved against the root, their files checked
4. :func:`settle`          raise for the problems, or the rows to skip and the rows to keep
5. :func:`standard_table`  ``row_id, image_id, path, label, <groups>, mask_path, <extras>``
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.data.images import same_format_family
from audit.data.paths import check_files, encoding_hint, path_limits, path_problem
from audit.data.readers import Source
from audit.data.schema import CheckLevel, ColumnMap
from audit.data.values import mixing_checks, normalise_column, unknown_column_message
from audit.errors import ManifestError

__all__ = ["Files", "Problems", "Values", "check_columns", "check_paths", "read_values", "settle",
           "standard_table"]

#: names of standard columns, which a group column may not take
_RESERVED = {"row_id", "image_id", "path", "mask_path", "label"}


def row_label(i: int) -> str:
    """How messages name the 0-based source row ``i``."""
    return f"row {i + 1}"


@dataclass
class Problems:
    """What is wrong: table-level problems and, per 0-based row, the reasons it is bad."""

    table: list[str] = field(default_factory=list)
    rows: dict[int, list[str]] = field(default_factory=dict)

    def add(self, i: int, reason: str) -> None:
        self.rows.setdefault(i, []).append(reason)


@dataclass
class Values:
    """The mapped columns as text (``None`` where missing), one entry per source row."""

    raw_paths: list[str | None]
    labels: list[str | None] | None
    groups: dict[str, list[str | None]]
    masks: list[str | None] | None
    image_ids: list[str]


@dataclass
class Files:
    """Resolved absolute image and mask paths per source row (``None``: none or unusable)."""

    paths: list[str | None]
    masks: list[str | None]


def check_columns(src: Source, cmap: ColumnMap) -> None:
    """Every mapped column exists, no group column takes a standard name, the table has rows.

    Raises:
        ManifestError: at once; nothing else can be checked without the columns.
    """
    available = list(src.df.columns)
    roles: list[tuple[str, str]] = [(cmap.image, "image")]
    if cmap.label is not None:
        roles.append((cmap.label, "label"))
    roles += [(g, "group") for g in cmap.groups]
    if cmap.mask is not None:
        roles.append((cmap.mask, "mask"))
    if cmap.id is not None:
        roles.append((cmap.id, "id"))
    col_problems = [unknown_column_message(name, role, available) for name, role in roles if name not in available]
    for g in cmap.groups:
        if g in _RESERVED and not (g == "label" and cmap.label == "label"):
            col_problems.append(
                f"group column {g!r} has a name reserved for a standard column ({', '.join(sorted(_RESERVED))}); "
                "rename it in the source"
            )
    if col_problems:
        raise ManifestError(f"{src.desc}: the column map does not match the table", col_problems)
    if len(src.df) == 0:
        raise ManifestError(
            f"{src.desc} is empty: it has a header ({', '.join(available) or 'no columns'}) but no data rows"
            if src.source is None or not Path(src.source).is_dir()
            else f"{src.desc} has no images"
        )


def read_values(df: pd.DataFrame, cmap: ColumnMap, *, class_names: Sequence[str] | None,
                missing_group: str | None, problems: Problems, notes: list[str]) -> Values:
    """Normalise the mapped columns; record empty and mixed-type columns, then each row's bad values."""
    n = len(df)
    image_col = normalise_column(df[cmap.image].tolist())
    label_col = normalise_column(df[cmap.label].tolist()) if cmap.label else None
    group_cols = {g: normalise_column(df[g].tolist()) for g in cmap.groups}
    mask_col = normalise_column(df[cmap.mask].tolist()) if cmap.mask else None
    id_col = normalise_column(df[cmap.id].tolist()) if cmap.id else None

    for name, role, col in (
        [(cmap.label, "label", label_col)] if label_col else []
    ) + [(g, "group", c) for g, c in group_cols.items()]:
        assert name is not None and col is not None
        if all(t is None for t in col.text):
            problems.table.append(
                f"{role} column {name!r} is empty: all {n} values are missing; choose another column or fill it in"
            )
            continue
        p, nt = mixing_checks(name, role, col, row_label)
        problems.table.extend(p)
        notes.extend(nt)

    raw_paths = image_col.text
    for i, t in enumerate(raw_paths):
        if t is None:
            problems.add(i, f"no image path (empty cell in column {cmap.image!r})")
    if label_col is not None:
        allowed = set(class_names) if class_names is not None else None
        for i, t in enumerate(label_col.text):
            if t is None:
                problems.add(i, f"missing label (empty cell in column {cmap.label!r})")
            elif allowed is not None and t not in allowed:
                problems.add(i, f"label {t!r} is not one of class_names ({len(allowed)} classes)")
    group_values: dict[str, list[str | None]] = {}
    for g, col in group_cols.items():
        vals = list(col.text)
        for i, t in enumerate(vals):
            if t is None:
                if missing_group is not None:
                    vals[i] = str(missing_group)
                else:
                    problems.add(i, f"missing value in group column {g!r}; pass missing_group='(missing)' "
                                    "to keep such rows as an explicit group")
        group_values[g] = vals
    if id_col is not None:
        first: dict[str, int] = {}
        for i, t in enumerate(id_col.text):
            if t is None:
                problems.add(i, f"missing id (empty cell in column {cmap.id!r})")
            elif t in first:
                problems.add(i, f"duplicate id {t!r} (first used in {row_label(first[t])}); ids must be unique")
            else:
                first[t] = i
        image_ids = [t if t is not None else str(i) for i, t in enumerate(id_col.text)]
    else:
        image_ids = [str(i) for i in range(n)]
    return Values(raw_paths=raw_paths, labels=label_col.text if label_col else None, groups=group_values,
                  masks=mask_col.text if mask_col else None, image_ids=image_ids)


def check_paths(src: Source, values: Values, *, check_images: CheckLevel, max_pixels: int, workers: int,
                problems: Problems, notes: list[str]) -> Files:
    """Resolve image and mask paths against ``src.root`` and check each file once.

    Notes a file whose content is another format than its suffix says, and an image listed twice.
    """
    n = len(values.raw_paths)
    raw_paths = values.raw_paths
    limits = path_limits(src.root)

    def resolve(text: str | None) -> tuple[str | None, str | None]:
        if text is None:
            return None, None
        try:
            full = os.path.normpath(os.path.join(src.root, text))
        except (TypeError, ValueError) as e:
            return None, f"invalid path ({e})"
        return full, path_problem(full, limits)

    full_paths: list[str | None] = []
    to_check: list[str] = []
    for i, t in enumerate(raw_paths):
        full, prob = resolve(t)
        full_paths.append(full)
        if prob is not None:
            problems.add(i, prob)
        elif full is not None:
            to_check.append(full)
    mask_paths: list[str | None] = [None] * n
    if values.masks is not None:
        for i, t in enumerate(values.masks):
            if t is None:
                continue  # rows without a mask are allowed
            full, prob = resolve(t)
            mask_paths[i] = full
            if prob is not None:
                problems.add(i, f"mask {t!r}: {prob}")
            elif full is not None:
                to_check.append(full)
    checks = check_files(to_check, check_images, max_pixels, workers)

    seen_paths: dict[str, int] = {}
    for i in range(n):
        full = full_paths[i]
        if full is not None and full in checks:
            c = checks[full]
            if c.reason is not None:
                extra = f" (looked for {full}){encoding_hint(full)}" if "not found" in c.reason else ""
                problems.add(i, c.reason + extra)
            elif c.info is not None:
                suffix = Path(full).suffix
                same = same_format_family(c.info.format, suffix)
                if same is False or (same is None and suffix):
                    notes.append(
                        f"{row_label(i)}, file {raw_paths[i]!r}: content is {c.info.format} but the suffix is "
                        f"{suffix!r}; it is loaded by content (rename the file to silence this note)"
                    )
            if full in seen_paths:
                notes.append(f"{row_label(i)}, file {raw_paths[i]!r}: same image as {row_label(seen_paths[full])}")
            else:
                seen_paths[full] = i
        mp = mask_paths[i]
        if mp is not None and mp in checks and checks[mp].reason is not None:
            mc = checks[mp]
            assert values.masks is not None
            extra = f" (looked for {mp})" if "not found" in str(mc.reason) else ""
            problems.add(i, f"mask {values.masks[i]!r}: {mc.reason}{extra}")
    return Files(paths=full_paths, masks=mask_paths)


def settle(src: Source, values: Values, files: Files, problems: Problems, *,
           skip_bad: bool) -> tuple[list[dict[str, Any]], list[int]]:
    """``(skipped rows, kept 0-based rows)``, or raise with every problem listed.

    Raises:
        ManifestError: a table-level problem (never skippable), a bad row without ``skip_bad``,
            or no row left to audit.
    """
    n = len(values.raw_paths)
    raw_paths = values.raw_paths

    def fmt(i: int, reason: str) -> str:
        shown = raw_paths[i] if raw_paths[i] is not None else "<no path>"
        if len(shown) > 300:
            shown = shown[:150] + f"...<{len(shown) - 300} more characters>..." + shown[-150:]
        return f"{row_label(i)}, file {shown!r}: {reason}"

    row_problems = problems.rows
    listed_rows = [fmt(i, r) for i in sorted(row_problems) for r in row_problems[i]]
    if problems.table or (row_problems and not skip_bad):
        n_bad = len(row_problems)
        what = f"{len(problems.table) + len(listed_rows)} problem(s)"
        hint = (
            "column-level problems cannot be skipped; fix the source"
            if problems.table
            else f"{n_bad} of {n} rows are affected; fix them, or pass skip_bad=True (CLI: --skip-bad) to "
            "record and skip them"
        )
        raise ManifestError(f"{src.desc} has {what} ({src.row_note}); {hint}:", problems.table + listed_rows)

    skipped = [
        {
            "row": i + 1,
            "row_id": i,
            "path": files.paths[i] if files.paths[i] is not None else (raw_paths[i] or ""),
            "reason": "; ".join(row_problems[i]),
        }
        for i in sorted(row_problems)
    ]
    keep = [i for i in range(n) if i not in row_problems]
    if not keep:
        raise ManifestError(
            f"{src.desc}: all {n} rows have problems, nothing is left to audit ({src.row_note}):", listed_rows
        )
    return skipped, keep


def standard_table(df: pd.DataFrame, cmap: ColumnMap, values: Values, files: Files,
                   keep: Sequence[int]) -> tuple[pd.DataFrame, list[str]]:
    """``(the standard table of the kept rows, names of the source's other columns in it)``.

    The source's other columns follow unchanged, renamed ``extra:<name>`` on a clash.
    """
    out = pd.DataFrame(
        {
            "row_id": np.asarray(keep, dtype=np.int64),
            "image_id": pd.Series([values.image_ids[i] for i in keep], dtype=object),
            "path": pd.Series([files.paths[i] for i in keep], dtype=object),
            "label": pd.Series([values.labels[i] if values.labels is not None else None for i in keep],
                               dtype=object),
        }
    )
    for g in cmap.groups:
        out[g] = pd.Series([values.groups[g][i] for i in keep], dtype=object)
    out["mask_path"] = pd.Series([files.masks[i] for i in keep], dtype=object)
    consumed = {cmap.image, cmap.label, cmap.mask, cmap.id, *cmap.groups}
    extras: list[str] = []
    for c in df.columns:
        if c in consumed or c.startswith("__"):
            continue
        name = c if c not in out.columns else f"extra:{c}"
        out[name] = df[c].iloc[list(keep)].reset_index(drop=True)
        extras.append(name)
    return out, extras
