"""Manifests: which images to audit, their labels, group attributes and region masks.

A manifest is a CSV or Parquet table (one row per image), a pandas DataFrame, or an
ImageFolder tree (one sub-folder per class). :func:`load_manifest` maps the user's column
names onto the standard ones with a :class:`ColumnMap`, validates everything up front and
returns a :class:`Manifest` whose ``df`` has fixed columns::

    row_id:int64 (0-based position in the source), image_id:str, path:str (absolute),
    label:str|None, <one column per group attribute>:str, mask_path:str|None,
    then the source's other columns, unchanged (renamed ``extra:<name>`` on a clash)

Validation reports every problem at once, each with its row (1-based data row, the header
line not counted) and file. With ``skip_bad=True`` bad rows are kept out of ``df`` and
recorded in ``Manifest.skipped``; nothing is dropped silently.

Where the pieces live: the column map and standard columns in :mod:`audit.data.schema`, the
readers in :mod:`audit.data.readers`, value normalisation in :mod:`audit.data.values`, path
and file checks in :mod:`audit.data.paths`, the validation steps in :mod:`audit.data.validate`
and the sample images in :mod:`audit.data.samples`; this module holds the :class:`Manifest`
and :func:`load_manifest`, which runs the steps.

Example (FairFace's label file)::

    m = load_manifest("fairface_label_val.csv",
                      columns={"image": "file", "groups": ["age", "gender", "race"]})
    m = m.subset(where={"service_test": True})
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from audit.data import validate
from audit.data.images import DEFAULT_MAX_PIXELS
from audit.data.readers import read_source
from audit.data.schema import CheckLevel, ColumnMap, ManifestFormat
from audit.data.values import is_missing, normalise, unknown_column_message
from audit.errors import ConfigError, ManifestError

__all__ = ["Manifest", "load_manifest"]

# --------------------------------------------------------------------------------------
# the Manifest


@dataclass
class Manifest:
    """A validated manifest.

    Attributes:
        df: the standard table (see the module docstring); one row per usable image.
        group_columns: names of the group-attribute columns in ``df``.
        label_column: ``"label"`` when the manifest has labels, else ``None``.
        class_names: sorted unique labels, or the ``class_names`` given to :func:`load_manifest`.
        skipped: rows left out with ``skip_bad=True``: ``{"row": 1-based data row,
            "row_id": 0-based position, "path": str, "reason": str}``.
        source: the manifest file (absolute), or ``None`` for a DataFrame.
        root: directory relative image paths were resolved against.
        notes: things worth knowing that are not errors (e.g. a PNG named ``.jpg``).
        n_input_rows: rows in the source; ``len(df) + len(skipped) == n_input_rows`` after loading.
        columns: the :class:`ColumnMap` used.
        extra_columns: names in ``df`` of the source's other columns (usable as filters).
    """

    df: pd.DataFrame
    group_columns: list[str]
    label_column: str | None
    class_names: list[str]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    source: str | None = None
    root: str = ""
    notes: list[str] = field(default_factory=list)
    n_input_rows: int = 0
    columns: ColumnMap = field(default_factory=ColumnMap)
    extra_columns: list[str] = field(default_factory=list)
    _deep_fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.df)

    @property
    def has_labels(self) -> bool:
        return self.label_column is not None

    @property
    def has_masks(self) -> bool:
        return bool(self.df["mask_path"].notna().any()) if len(self.df) else False

    def samples_table(self) -> pd.DataFrame:
        """The run directory's ``samples`` table: standard columns and group columns only."""
        cols = ["row_id", "image_id", "path", "label", *self.group_columns, "mask_path"]
        return self.df[cols].reset_index(drop=True).copy()

    def subset(
        self,
        *,
        row_ids: Iterable[int] | None = None,
        where: Mapping[str, Any] | None = None,
        predicate: Callable[[pd.DataFrame], pd.Series] | None = None,
    ) -> Manifest:
        """A manifest with only some rows (all conditions combined with AND).

        Args:
            row_ids: keep these ``row_id`` values.
            where: ``{column: value or list of values}``; values are compared as text, so
                ``{"service_test": True}`` matches the CSV text ``"True"``.
            predicate: function of ``df`` returning a boolean Series.

        Returns:
            A new :class:`Manifest`; ``skipped``, ``class_names`` and ``n_input_rows`` are
            those of the original load.

        Raises:
            ManifestError: a ``where`` column does not exist (the message lists the columns).
        """
        keep = pd.Series(True, index=self.df.index)
        if row_ids is not None:
            keep &= self.df["row_id"].isin([int(r) for r in row_ids])
        for col, want in (where or {}).items():
            if col not in self.df.columns:
                raise ManifestError(unknown_column_message(col, "where", list(self.df.columns)))
            wanted = want if isinstance(want, (list, tuple, set, frozenset)) else [want]
            text = self.df[col].map(lambda v: normalise(v)[0])
            keep &= text.isin({normalise(w)[0] for w in wanted})
        if predicate is not None:
            keep &= pd.Series(predicate(self.df), index=self.df.index).astype(bool)
        return replace(self, df=self.df[keep].reset_index(drop=True).copy(), _deep_fingerprint=None)

    def fingerprint(self, *, deep: bool = False) -> str:
        """SHA-256 hex digest identifying this manifest and its images.

        The hash covers the standard table (paths relative to ``root``, so moving the dataset
        keeps the fingerprint) and, per image and mask file:

        * ``deep=False`` (fast): file size and modification time (ns). Detects most edits,
          but not an in-place rewrite that keeps size and mtime; changes when files are
          copied without preserving mtimes.
        * ``deep=True``: SHA-256 of the file bytes (reads every file; the result is cached on
          this object).
        """
        if deep and self._deep_fingerprint is not None:
            return self._deep_fingerprint
        h = hashlib.sha256()
        cols = ["row_id", "image_id", "path", "label", *self.group_columns, "mask_path"]
        h.update(json.dumps({"v": 1, "deep": deep, "columns": cols}).encode())
        for rec in self.df[cols].itertuples(index=False, name=None):
            row = dict(zip(cols, rec))
            out: list[Any] = []
            for c in cols:
                v = row[c]
                if c in ("path", "mask_path") and isinstance(v, str):
                    out.append(_rel(v, self.root))
                    out.append(_file_token(v, deep))
                else:
                    out.append(None if is_missing(v) else (int(v) if c == "row_id" else str(v)))
            h.update(json.dumps(out, ensure_ascii=False).encode("utf-8", "surrogatepass"))
            h.update(b"\n")
        digest = h.hexdigest()
        if deep:
            self._deep_fingerprint = digest
        return digest

    def run_metadata(self, *, deep: bool = False) -> dict[str, Any]:
        """The ``dataset`` block of a run's ``run.json``."""
        return {
            "manifest": self.source or "<DataFrame>",
            "fingerprint": self.fingerprint(deep=deep),
            "n_rows": int(self.n_input_rows),
            "n_used": len(self),
            "label_column": self.label_column,
            "group_columns": list(self.group_columns),
            "has_masks": self.has_masks,
            "root": self.root,
        }

    def _repr_html_(self) -> str:
        e = html.escape
        parts = [
            "<div class='vision-audit-manifest'>",
            f"<b>Manifest</b> {e(self.source or '<DataFrame>')}<br>",
            (f"{len(self)} rows used of {self.n_input_rows}; {len(self.skipped)} skipped; "
            f"labels: {e(str(self.label_column))} ({len(self.class_names)} classes); "
            f"groups: {e(', '.join(self.group_columns) or 'none')}<br>"),
        ]
        if self.class_names:
            shown = ", ".join(self.class_names[:20]) + (" ..." if len(self.class_names) > 20 else "")
            parts.append(f"classes: {e(shown)}<br>")
        parts.append(self.df.head(10).to_html(escape=True, index=False, max_cols=12))
        if self.skipped:
            parts.append("<details><summary>skipped rows</summary><ul>")
            for s in self.skipped[:20]:
                parts.append(f"<li>row {int(s['row'])} ({e(str(s['path']))}): {e(str(s['reason']))}</li>")
            parts.append("</ul></details>")
        if self.notes:
            parts.append("<details><summary>notes</summary><ul>")
            parts.extend(f"<li>{e(n)}</li>" for n in self.notes[:20])
            parts.append("</ul></details>")
        parts.append("</div>")
        return "".join(parts)

    def __repr__(self) -> str:
        return (
            f"Manifest(source={self.source!r}, rows={len(self)}/{self.n_input_rows}, "
            f"skipped={len(self.skipped)}, label_column={self.label_column!r}, "
            f"groups={self.group_columns!r}, classes={len(self.class_names)})"
        )


def _rel(path: str, root: str) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix() if root else path
    except ValueError:  # different drive on Windows
        return path


def _file_token(path: str, deep: bool) -> str:
    try:
        if deep:
            from audit.data.images import image_sha256

            return image_sha256(path)
        st = os.stat(path)
        return f"{st.st_size}:{st.st_mtime_ns}"
    except (OSError, ValueError):
        return "unreadable"


# --------------------------------------------------------------------------------------
# load_manifest


def load_manifest(
    source: str | os.PathLike[str] | pd.DataFrame,
    *,
    columns: ColumnMap | Mapping[str, Any] | None = None,
    root: str | os.PathLike[str] | None = None,
    format: ManifestFormat = "auto",
    skip_bad: bool = False,
    check_images: CheckLevel = "header",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    missing_group: str | None = None,
    class_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    sep: str | None = None,
    sidecar: str | os.PathLike[str] | None = None,
    workers: int = 8,
) -> Manifest:
    """Load and validate a manifest.

    Args:
        source: CSV / Parquet file, ImageFolder directory, or a pandas DataFrame.
        columns: :class:`ColumnMap` (or a dict of its fields) naming the source's columns.
        root: directory that relative image/mask paths start from; default the manifest's
            directory (the folder itself for ImageFolder, the working directory for a DataFrame).
        format: ``"auto"`` picks ImageFolder for a directory, Parquet by suffix or ``PAR1``
            magic, CSV otherwise (tab-separated for ``.tsv``).
        skip_bad: keep the good rows and record the bad ones in ``Manifest.skipped`` instead
            of raising. Column-level problems (unknown or empty columns, mixed types) are
            always raised.
        check_images: ``"header"`` opens every image's header (missing, zero-byte, non-image,
            bomb-sized files), ``"full"`` also decodes every pixel (truncated files), ``"none"``
            touches no file (failures then surface when the dataset loads the image).
        max_pixels: images declaring more pixels are refused.
        missing_group: text for empty group cells, e.g. ``"(missing)"``; by default an empty
            group cell is a problem.
        class_names: the label set, in model order; labels outside it are problems.
            Default: the sorted unique labels (the sorted class folders for ImageFolder).
        encoding: text encoding of a CSV manifest.
        sep: CSV field separator (default ``","``, ``"\\t"`` for ``.tsv``).
        sidecar: for ImageFolder, a CSV/Parquet file mapping paths (relative to the folder,
            column ``columns.image``) to group columns ``columns.groups`` (and ``columns.mask``).
        workers: threads used to check image headers.

    Returns:
        A :class:`Manifest`.

    Raises:
        ManifestError: with ``problems`` listing every problem, each naming its row
            (1-based data row, header not counted) and file.
        ConfigError: ``columns`` is not a valid column map.

    Empty cells (after trimming spaces) are missing values; text such as ``"NA"`` is kept.
    Label and group values are normalised to text (``1`` -> ``"1"``, ``1.0`` -> ``"1"``,
    ``True`` -> ``"True"``).
    """
    try:
        cmap = columns if isinstance(columns, ColumnMap) else ColumnMap.model_validate(dict(columns or {}))
    except ValidationError as e:
        raise ConfigError(f"invalid column map for the manifest: {e}") from None
    if missing_group is not None and not str(missing_group).strip():
        raise ConfigError("missing_group must be a non-empty text such as '(missing)'")
    if max_pixels <= 0:
        raise ConfigError(f"max_pixels must be positive, got {max_pixels}")

    src, folder_classes = read_source(source, columns=cmap, root=root, format=format, encoding=encoding, sep=sep,
                                      sidecar=sidecar)
    cmap = src.columns
    src.df.columns = [str(c) for c in src.df.columns]
    validate.check_columns(src, cmap)
    problems = validate.Problems()
    notes = list(src.notes)
    values = validate.read_values(src.df, cmap, class_names=class_names, missing_group=missing_group,
                                  problems=problems, notes=notes)
    files = validate.check_paths(src, values, check_images=check_images, max_pixels=max_pixels, workers=workers,
                                 problems=problems, notes=notes)
    skipped, keep = validate.settle(src, values, files, problems, skip_bad=skip_bad)
    out, extras = validate.standard_table(src.df, cmap, values, files, keep)

    if class_names is not None:
        names = [str(c) for c in class_names]
    elif folder_classes is not None:
        names = list(folder_classes)
    else:
        names = sorted({t for t in out["label"] if t is not None})
    return Manifest(
        df=out,
        group_columns=list(cmap.groups),
        label_column="label" if values.labels is not None else None,
        class_names=names,
        skipped=skipped,
        source=src.source,
        root=src.root,
        notes=notes,
        n_input_rows=len(src.df),
        columns=cmap,
        extra_columns=extras,
    )
