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

Example (FairFace's label file)::

    m = load_manifest("fairface_label_val.csv",
                      columns={"image": "file", "groups": ["age", "gender", "race"]})
    m = m.subset(where={"service_test": True})
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import html
import io
import json
import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from audit.data.images import DEFAULT_MAX_PIXELS, ImageInfo, probe_image, same_format_family
from audit.errors import ConfigError, ImageDecodeError, ManifestError

__all__ = [
    "SAMPLE_COLUMNS",
    "STANDARD_COLUMNS",
    "ColumnMap",
    "Manifest",
    "load_manifest",
    "make_sample_images",
]

#: Fixed columns of ``Manifest.df`` (group columns go between ``label`` and ``mask_path``).
STANDARD_COLUMNS = ("row_id", "image_id", "path", "label", "mask_path")

ManifestFormat = Literal["auto", "csv", "parquet", "imagefolder"]
CheckLevel = Literal["header", "full", "none"]

_PARQUET_SUFFIXES = {".parquet", ".pq", ".parq"}


class ColumnMap(BaseModel):
    """Which source columns hold the image path, label, group attributes, mask and id.

    Attributes:
        image: column with the image path (relative to ``root`` or absolute).
        label: column with the class label, or ``None`` for unlabelled data.
        groups: columns with group attributes (e.g. ``["age", "gender", "race"]``).
        mask: column with a region-mask path (same rules as ``image``), or ``None``.
        id: column with a unique image id; ``None`` uses the 0-based row number.

    Example (CelebA's attribute table, -1/1 columns):
        >>> ColumnMap(image="image_id", label="Smiling", groups=["Male", "Young"]).groups
        ['Male', 'Young']
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = "path"
    label: str | None = None
    groups: list[str] = Field(default_factory=list)
    mask: str | None = None
    id: str | None = None

    @field_validator("image", "label", "mask", "id")
    @classmethod
    def _non_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("a column name cannot be empty")
        return v

    @field_validator("groups")
    @classmethod
    def _groups_ok(cls, v: list[str]) -> list[str]:
        if any(not g.strip() for g in v):
            raise ValueError("a group column name cannot be empty")
        dup = sorted({g for g in v if v.count(g) > 1})
        if dup:
            raise ValueError(f"group columns listed twice: {dup}")
        return v

    @model_validator(mode="after")
    def _distinct_paths(self) -> ColumnMap:
        if self.mask is not None and self.mask == self.image:
            raise ValueError("mask and image cannot be the same column")
        return self


#: The column map of the manifest written by :func:`make_sample_images`.
SAMPLE_COLUMNS = ColumnMap(image="path", label="label", groups=["background", "site"], mask="mask")


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
                raise ManifestError(_unknown_column_message(col, "where", list(self.df.columns)))
            wanted = want if isinstance(want, (list, tuple, set, frozenset)) else [want]
            text = self.df[col].map(lambda v: _normalise(v)[0])
            keep &= text.isin({_normalise(w)[0] for w in wanted})
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
                    out.append(None if _is_missing(v) else (int(v) if c == "row_id" else str(v)))
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
# value normalisation


def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return bool(isinstance(v, np.floating) and np.isnan(v))


def _normalise(v: Any) -> tuple[str | None, str]:
    """A cell value as text, and its kind: "missing", "str", "number" or "bool"."""
    if _is_missing(v):
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
class _Col:
    text: list[str | None]
    kinds: list[str]


def _normalise_column(values: Sequence[Any]) -> _Col:
    text, kinds = [], []
    for v in values:
        t, k = _normalise(v)
        text.append(t)
        kinds.append(k)
    return _Col(text, kinds)


def _as_number(s: str) -> float | None:
    try:
        f = float(s)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def _mixing_checks(name: str, role: str, col: _Col, row_label: Callable[[int], str]) -> tuple[list[str], list[str]]:
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


def _unknown_column_message(name: str, role: str, available: Sequence[str]) -> str:
    avail = [str(c) for c in available]
    close = difflib.get_close_matches(name, avail, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown column {name!r} (mapped as {role}); available columns: {', '.join(avail)}{hint}"


# --------------------------------------------------------------------------------------
# reading sources


@dataclass
class _Source:
    df: pd.DataFrame
    desc: str  # "manifest 'x.csv'"
    source: str | None
    root: str
    row_note: str  # how rows are numbered
    notes: list[str]
    columns: ColumnMap


def _read_csv(path: Path, *, encoding: str, sep: str | None) -> pd.DataFrame:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ManifestError(f"manifest '{path}' cannot be read ({e.strerror or e})") from None
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        text = data.decode(codec)
    except LookupError:
        raise ManifestError(
            f"manifest '{path}': unknown encoding {encoding!r}; pass a Python codec name such as "
            "encoding='latin-1' or encoding='cp1252'"
        ) from None
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        bad = data[e.start : e.start + 1]
        raise ManifestError(
            f"manifest '{path}' is not valid {encoding} text: byte 0x{bad.hex()} on line {line} "
            f"(byte offset {e.start}) cannot be decoded; pass the file's encoding, e.g. "
            "encoding='latin-1' or encoding='cp1252' (CLI: --encoding)"
        ) from None
    if sep is None:
        sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    if not text.strip():
        raise ManifestError(f"manifest '{path}' is empty (no header line and no rows)")
    try:
        return pd.read_csv(
            io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[""], skip_blank_lines=True
        )
    except pd.errors.EmptyDataError:
        raise ManifestError(f"manifest '{path}' is empty (no header line and no rows)") from None
    except (pd.errors.ParserError, ValueError) as e:
        raise ManifestError(f"manifest '{path}' is not a readable CSV table: {e}") from None


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise ManifestError(f"manifest '{path}' is not a readable Parquet file ({type(e).__name__}: {e})") from None


def _image_suffixes() -> set[str]:
    from PIL import Image

    Image.init()
    return {k.lower() for k in Image.registered_extensions()}


def _read_imagefolder(
    folder: Path, *, columns: ColumnMap, sidecar: str | os.PathLike[str] | None, encoding: str, sep: str | None
) -> tuple[pd.DataFrame, ColumnMap, list[str], list[str]]:
    """An ImageFolder tree -> (table with "path" relative to folder and "label", column map, notes, classes)."""
    notes: list[str] = []
    suffixes = _image_suffixes()
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise ManifestError(f"image folder '{folder}' cannot be read ({e.strerror or e})") from None
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [e.name for e in entries if e.is_file() and not e.name.startswith(".")]
    if loose:
        notes.append(
            f"ignored {len(loose)} file(s) directly in '{folder}' (ImageFolder expects one sub-folder "
            f"per class), e.g. {loose[0]!r}"
        )
    if not classes:
        raise ManifestError(
            f"image folder '{folder}' has no class sub-folders; ImageFolder expects "
            "'<root>/<class>/<image>' (or pass a CSV/Parquet manifest)"
        )
    paths: list[str] = []
    labels: list[str] = []
    ignored: list[str] = []
    for cls in classes:
        found = 0
        for dirpath, dirnames, filenames in os.walk(folder / cls, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if fn.startswith("."):
                    continue
                full = Path(dirpath) / fn
                rel = full.relative_to(folder).as_posix()
                if full.suffix.lower() in suffixes:
                    paths.append(rel)
                    labels.append(cls)
                    found += 1
                else:
                    ignored.append(rel)
        if not found:
            notes.append(f"class folder {cls!r} has no images")
    if ignored:
        notes.append(
            f"ignored {len(ignored)} file(s) without an image suffix, e.g. {ignored[0]!r}"
        )
    table = pd.DataFrame({"path": pd.Series(paths, dtype=object), "label": pd.Series(labels, dtype=object)})
    cmap = ColumnMap(image="path", label="label", groups=list(columns.groups), mask=None, id=None)
    if sidecar is not None:
        side_path = Path(sidecar)
        side = _read_parquet(side_path) if side_path.suffix.lower() in _PARQUET_SUFFIXES else _read_csv(
            side_path, encoding=encoding, sep=sep
        )
        want = [columns.image, *columns.groups] + ([columns.mask] if columns.mask else [])
        missing = [c for c in want if c not in side.columns]
        if missing:
            raise ManifestError(
                f"side-car '{side_path}' has problems:",
                [_unknown_column_message(c, "side-car column", list(side.columns)) for c in missing],
            )
        key = side[columns.image].map(lambda v: None if _normalise(v)[0] is None else Path(
            os.path.normpath(str(_normalise(v)[0]))).as_posix())
        dup = key[key.duplicated(keep=False) & key.notna()]
        if len(dup):
            raise ManifestError(
                f"side-car '{side_path}' lists {dup.nunique()} path(s) more than once, e.g. {dup.iloc[0]!r}; "
                "each image may appear once"
            )
        side = side.assign(__key=key).dropna(subset=["__key"]).set_index("__key")
        unknown = sorted(set(side.index) - set(paths))
        if unknown:
            notes.append(
                f"side-car '{side_path}' lists {len(unknown)} path(s) not found in the folder, e.g. {unknown[0]!r}"
            )
        for g in columns.groups:
            table[g] = [side[g].get(p, None) if p in side.index else None for p in paths]
        if columns.mask:
            table["__mask"] = [side[columns.mask].get(p, None) if p in side.index else None for p in paths]
            cmap = ColumnMap(image="path", label="label", groups=list(columns.groups), mask="__mask")
    elif columns.groups:
        raise ManifestError(
            f"group columns {columns.groups} were requested for image folder '{folder}', which has no "
            "group information; pass sidecar='groups.csv' with a path column (relative to the folder) "
            "and the group columns"
        )
    return table, cmap, notes, classes


def _read_source(
    source: str | os.PathLike[str] | pd.DataFrame,
    *,
    columns: ColumnMap,
    root: str | os.PathLike[str] | None,
    format: ManifestFormat,
    encoding: str,
    sep: str | None,
    sidecar: str | os.PathLike[str] | None,
) -> tuple[_Source, list[str] | None]:
    if isinstance(source, pd.DataFrame):
        if format not in ("auto",):
            raise ManifestError(f"format={format!r} was given with a DataFrame; leave format='auto'")
        base = os.path.abspath(os.fspath(root)) if root is not None else os.getcwd()
        df = source.reset_index(drop=True).copy()
        return _Source(df, "DataFrame manifest", None, base, "rows are 1-based positions in the DataFrame",
                       [], columns), None
    try:
        path = Path(os.fspath(source)).expanduser()
    except TypeError:
        raise ManifestError(f"manifest must be a path or a pandas DataFrame, not {type(source).__name__}") from None
    try:
        exists = path.exists()
    except OSError as e:
        raise ManifestError(f"manifest path '{path}' cannot be used ({e.strerror or e})") from None
    if not exists:
        raise ManifestError(f"manifest '{path}' not found; check the path (relative paths start at {os.getcwd()})")
    path = Path(os.path.abspath(path))
    fmt = format
    if fmt == "auto":
        if path.is_dir():
            fmt = "imagefolder"
        elif path.suffix.lower() in _PARQUET_SUFFIXES:
            fmt = "parquet"
        else:
            with open(path, "rb") as f:
                fmt = "parquet" if f.read(4) == b"PAR1" else "csv"
    if fmt == "imagefolder":
        if not path.is_dir():
            raise ManifestError(f"format='imagefolder' needs a directory, but '{path}' is a file")
        table, cmap, notes, classes = _read_imagefolder(path, columns=columns, sidecar=sidecar, encoding=encoding,
                                                        sep=sep)
        base = os.path.abspath(os.fspath(root)) if root is not None else str(path)
        return _Source(table, f"image folder '{path}'", str(path), base,
                       "rows number the images in sorted order, 1-based", notes, cmap), classes
    if path.is_dir():
        raise ManifestError(f"manifest '{path}' is a directory; use format='imagefolder' or 'auto' for class folders")
    df = _read_parquet(path) if fmt == "parquet" else _read_csv(path, encoding=encoding, sep=sep)
    base = os.path.abspath(os.fspath(root)) if root is not None else str(path.parent)
    return _Source(df, f"manifest '{path}'", str(path), base,
                   "rows are 1-based data rows; the header line is not counted", [], columns), None


# --------------------------------------------------------------------------------------
# paths


def _path_limits(root: str) -> tuple[int, int]:
    try:
        return int(os.pathconf(root, "PC_PATH_MAX")), int(os.pathconf(root, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return (260, 255) if os.name == "nt" else (4096, 255)


def _path_problem(full: str, limits: tuple[int, int]) -> str | None:
    """Problems visible from the path text alone (too long, NUL byte, unencodable)."""
    if "\x00" in full:
        return "path contains a NUL character"
    try:
        raw = os.fsencode(full)
    except UnicodeError:
        return "path cannot be encoded for this file system"
    path_max, name_max = limits
    longest = max((len(part) for part in raw.split(os.fsencode(os.sep))), default=0)
    if len(raw) >= path_max or longest > name_max:
        return (
            f"path is too long for this operating system ({len(raw)} bytes, longest name {longest} bytes; "
            f"limits {path_max - 1} per path and {name_max} per name); shorten or move the file"
        )
    return None


@dataclass
class _FileCheck:
    info: ImageInfo | None
    reason: str | None


def _check_file(path: str, level: CheckLevel, max_pixels: int) -> _FileCheck:
    if level == "none":
        return _FileCheck(None, None)
    try:
        return _FileCheck(probe_image(path, max_pixels=max_pixels, level=level), None)
    except ImageDecodeError as e:
        return _FileCheck(None, getattr(e, "reason", str(e)))
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            return _FileCheck(None, "path is too long for this operating system")
        return _FileCheck(None, f"cannot read file ({e.strerror or e})")


def _check_files(paths: Sequence[str], level: CheckLevel, max_pixels: int, workers: int) -> dict[str, _FileCheck]:
    unique = list(dict.fromkeys(paths))
    if level == "none" or not unique:
        return {p: _FileCheck(None, None) for p in unique}
    if workers <= 1 or len(unique) < 32:
        return {p: _check_file(p, level, max_pixels) for p in unique}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: _check_file(p, level, max_pixels), unique))
    return dict(zip(unique, results))


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

    src, folder_classes = _read_source(source, columns=cmap, root=root, format=format, encoding=encoding, sep=sep,
                                       sidecar=sidecar)
    cmap = src.columns
    df = src.df
    df.columns = [str(c) for c in df.columns]
    available = list(df.columns)
    n = len(df)
    notes = list(src.notes)

    def row_label(i: int) -> str:
        return f"row {i + 1}"

    # ---- columns exist? (fatal at once: nothing else can be checked without them)
    roles: list[tuple[str, str]] = [(cmap.image, "image")]
    if cmap.label is not None:
        roles.append((cmap.label, "label"))
    roles += [(g, "group") for g in cmap.groups]
    if cmap.mask is not None:
        roles.append((cmap.mask, "mask"))
    if cmap.id is not None:
        roles.append((cmap.id, "id"))
    col_problems = [_unknown_column_message(name, role, available) for name, role in roles if name not in available]
    reserved = {"row_id", "image_id", "path", "mask_path", "label"}
    for g in cmap.groups:
        if g in reserved and not (g == "label" and cmap.label == "label"):
            col_problems.append(
                f"group column {g!r} has a name reserved for a standard column ({', '.join(sorted(reserved))}); "
                "rename it in the source"
            )
    if col_problems:
        raise ManifestError(f"{src.desc}: the column map does not match the table", col_problems)
    if n == 0:
        raise ManifestError(
            f"{src.desc} is empty: it has a header ({', '.join(available) or 'no columns'}) but no data rows"
            if src.source is None or not Path(src.source).is_dir()
            else f"{src.desc} has no images"
        )

    table_problems: list[str] = []
    row_problems: dict[int, list[str]] = {}

    def add(i: int, raw_path: str | None, reason: str) -> None:
        row_problems.setdefault(i, []).append(reason)

    # ---- normalise mapped columns
    image_col = _normalise_column(df[cmap.image].tolist())
    label_col = _normalise_column(df[cmap.label].tolist()) if cmap.label else None
    group_cols = {g: _normalise_column(df[g].tolist()) for g in cmap.groups}
    mask_col = _normalise_column(df[cmap.mask].tolist()) if cmap.mask else None
    id_col = _normalise_column(df[cmap.id].tolist()) if cmap.id else None

    for name, role, col in (
        [(cmap.label, "label", label_col)] if label_col else []
    ) + [(g, "group", c) for g, c in group_cols.items()]:
        assert name is not None and col is not None
        if all(t is None for t in col.text):
            table_problems.append(
                f"{role} column {name!r} is empty: all {n} values are missing; choose another column or fill it in"
            )
            continue
        p, nt = _mixing_checks(name, role, col, row_label)
        table_problems += p
        notes += nt

    # ---- per-row values
    raw_paths = image_col.text
    for i, t in enumerate(raw_paths):
        if t is None:
            add(i, None, f"no image path (empty cell in column {cmap.image!r})")
    if label_col is not None:
        allowed = set(class_names) if class_names is not None else None
        for i, t in enumerate(label_col.text):
            if t is None:
                add(i, raw_paths[i], f"missing label (empty cell in column {cmap.label!r})")
            elif allowed is not None and t not in allowed:
                add(i, raw_paths[i], f"label {t!r} is not one of class_names ({len(allowed)} classes)")
    group_values: dict[str, list[str | None]] = {}
    for g, col in group_cols.items():
        vals = list(col.text)
        for i, t in enumerate(vals):
            if t is None:
                if missing_group is not None:
                    vals[i] = str(missing_group)
                else:
                    add(i, raw_paths[i], f"missing value in group column {g!r}; pass missing_group='(missing)' "
                                         "to keep such rows as an explicit group")
        group_values[g] = vals
    if id_col is not None:
        first: dict[str, int] = {}
        for i, t in enumerate(id_col.text):
            if t is None:
                add(i, raw_paths[i], f"missing id (empty cell in column {cmap.id!r})")
            elif t in first:
                add(i, raw_paths[i], f"duplicate id {t!r} (first used in {row_label(first[t])}); ids must be unique")
            else:
                first[t] = i
        image_ids = [t if t is not None else str(i) for i, t in enumerate(id_col.text)]
    else:
        image_ids = [str(i) for i in range(n)]

    # ---- resolve and check files
    limits = _path_limits(src.root)

    def resolve(text: str | None) -> tuple[str | None, str | None]:
        if text is None:
            return None, None
        try:
            full = os.path.normpath(os.path.join(src.root, text))
        except (TypeError, ValueError) as e:
            return None, f"invalid path ({e})"
        return full, _path_problem(full, limits)

    full_paths: list[str | None] = []
    to_check: list[str] = []
    for i, t in enumerate(raw_paths):
        full, prob = resolve(t)
        full_paths.append(full)
        if prob is not None:
            add(i, t, prob)
        elif full is not None:
            to_check.append(full)
    mask_paths: list[str | None] = [None] * n
    if mask_col is not None:
        for i, t in enumerate(mask_col.text):
            if t is None:
                continue  # rows without a mask are allowed
            full, prob = resolve(t)
            mask_paths[i] = full
            if prob is not None:
                add(i, raw_paths[i], f"mask {t!r}: {prob}")
            elif full is not None:
                to_check.append(full)
    checks = _check_files(to_check, check_images, max_pixels, workers)

    seen_paths: dict[str, int] = {}
    for i in range(n):
        full = full_paths[i]
        if full is not None and full in checks:
            c = checks[full]
            if c.reason is not None:
                extra = f" (looked for {full}){_encoding_hint(full)}" if "not found" in c.reason else ""
                add(i, raw_paths[i], c.reason + extra)
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
            assert mask_col is not None
            extra = f" (looked for {mp})" if "not found" in str(mc.reason) else ""
            add(i, raw_paths[i], f"mask {mask_col.text[i]!r}: {mc.reason}{extra}")

    # ---- report
    def fmt(i: int, reason: str) -> str:
        shown = raw_paths[i] if raw_paths[i] is not None else "<no path>"
        if len(shown) > 300:
            shown = shown[:150] + f"...<{len(shown) - 300} more characters>..." + shown[-150:]
        return f"{row_label(i)}, file {shown!r}: {reason}"

    listed_rows = [fmt(i, r) for i in sorted(row_problems) for r in row_problems[i]]
    if table_problems or (row_problems and not skip_bad):
        n_bad = len(row_problems)
        what = f"{len(table_problems) + len(listed_rows)} problem(s)"
        hint = (
            "column-level problems cannot be skipped; fix the source"
            if table_problems
            else f"{n_bad} of {n} rows are affected; fix them, or pass skip_bad=True (CLI: --skip-bad) to "
            "record and skip them"
        )
        raise ManifestError(f"{src.desc} has {what} ({src.row_note}); {hint}:", table_problems + listed_rows)

    skipped = [
        {
            "row": i + 1,
            "row_id": i,
            "path": full_paths[i] if full_paths[i] is not None else (raw_paths[i] or ""),
            "reason": "; ".join(row_problems[i]),
        }
        for i in sorted(row_problems)
    ]
    keep = [i for i in range(n) if i not in row_problems]
    if not keep:
        raise ManifestError(
            f"{src.desc}: all {n} rows have problems, nothing is left to audit ({src.row_note}):", listed_rows
        )

    # ---- build the standard table
    out = pd.DataFrame(
        {
            "row_id": np.asarray(keep, dtype=np.int64),
            "image_id": pd.Series([image_ids[i] for i in keep], dtype=object),
            "path": pd.Series([full_paths[i] for i in keep], dtype=object),
            "label": pd.Series([label_col.text[i] if label_col else None for i in keep], dtype=object),
        }
    )
    for g in cmap.groups:
        out[g] = pd.Series([group_values[g][i] for i in keep], dtype=object)
    out["mask_path"] = pd.Series([mask_paths[i] for i in keep], dtype=object)
    consumed = {cmap.image, cmap.label, cmap.mask, cmap.id, *cmap.groups}
    extras: list[str] = []
    for c in available:
        if c in consumed or c.startswith("__"):
            continue
        name = c if c not in out.columns else f"extra:{c}"
        out[name] = df[c].iloc[keep].reset_index(drop=True)
        extras.append(name)

    labels_kept = sorted({t for t in out["label"] if t is not None})
    if class_names is not None:
        names = [str(c) for c in class_names]
    elif folder_classes is not None:
        names = list(folder_classes)
    else:
        names = labels_kept
    return Manifest(
        df=out,
        group_columns=list(cmap.groups),
        label_column="label" if label_col is not None else None,
        class_names=names,
        skipped=skipped,
        source=src.source,
        root=src.root,
        notes=notes,
        n_input_rows=n,
        columns=cmap,
        extra_columns=extras,
    )


# --------------------------------------------------------------------------------------
# sample data


def make_sample_images(directory: str | os.PathLike[str], n: int = 8, seed: int = 0) -> Path:
    """Write ``n`` small, varied images, region masks and a CSV manifest; return the CSV path.

    The images cycle through: RGB PNG, RGB JPEG stored rotated with EXIF orientation 6, L
    PNG, P PNG with a transparent palette entry, RGBA PNG, 16-bit (I;16) PNG, CMYK JPEG and
    LA PNG. Each shows a red circle or square (``label``) on a light or dark background
    (group ``background``) from one of two sites (group ``site``); ``mask`` is the shape's
    region. Load it with ``load_manifest(path, columns=SAMPLE_COLUMNS)``.

    Args:
        directory: output directory (created if missing).
        n: number of images (>= 1).
        seed: random seed for shape positions and sizes and site assignment.
    """
    from PIL import Image, ImageDraw

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = Path(directory)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = 40, 32
    backgrounds = {"light": (220, 220, 200), "dark": (40, 40, 60)}
    rows = []
    for i in range(n):
        label = ("circle", "square")[i % 2]
        bg = ("light", "dark")[(i // 2) % 2]
        site = ("a", "b")[int(rng.integers(0, 2))]
        r = int(rng.integers(6, 10))
        cx, cy = int(rng.integers(r + 1, w - r - 1)), int(rng.integers(r + 1, h - r - 1))
        img = Image.new("RGB", (w, h), backgrounds[bg])
        mask = Image.new("L", (w, h), 0)
        box = (cx - r, cy - r, cx + r, cy + r)
        for canvas, fill in ((ImageDraw.Draw(img), (200, 30, 30)), (ImageDraw.Draw(mask), 255)):
            if label == "circle":
                canvas.ellipse(box, fill=fill)
            else:
                canvas.rectangle(box, fill=fill)
        variant = i % 8
        stem = f"img_{i:03d}"
        if variant == 0:
            name = f"{stem}.png"
            img.save(out / "images" / name)
        elif variant == 1:
            name = f"{stem}.jpg"
            exif = Image.Exif()
            exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
            img.transpose(Image.Transpose.ROTATE_90).save(out / "images" / name, quality=95, exif=exif.tobytes())
        elif variant == 2:
            name = f"{stem}.png"
            img.convert("L").save(out / "images" / name)
        elif variant == 3:
            name = f"{stem}.png"
            pal = img.quantize(colors=8, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            corner = pal.getpixel((0, 0))
            pal.save(out / "images" / name, transparency=int(corner))
        elif variant == 4:
            name = f"{stem}.png"
            rgba = img.convert("RGBA")
            rgba.putalpha(Image.new("L", (w, h), 255 if bg == "light" else 230))
            rgba.save(out / "images" / name)
        elif variant == 5:
            name = f"{stem}.png"
            g16 = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
            Image.fromarray(g16).save(out / "images" / name)
        elif variant == 6:
            name = f"{stem}.jpg"
            img.convert("CMYK").save(out / "images" / name, quality=95)
        else:
            name = f"{stem}.png"
            la = img.convert("LA")
            la.putalpha(Image.new("L", (w, h), 255))
            la.save(out / "images" / name)
        mask_name = f"{stem}_mask.png"
        mask.save(out / "masks" / mask_name)
        rows.append({"path": f"images/{name}", "label": label, "background": bg, "site": site,
                     "mask": f"masks/{mask_name}"})
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _encoding_hint(full: str) -> str:
    """Why a path may be "not found" although the file is there: its name on disk is not UTF-8
    (e.g. latin-1 bytes from an old archive), or the manifest was decoded with the wrong encoding."""
    for enc in ("latin-1", "cp1252"):
        try:
            raw = full.encode(enc)
        except UnicodeEncodeError:
            continue
        if raw != full.encode("utf-8", "surrogateescape") and os.path.exists(raw):
            return (
                f"; a file whose name is these characters in {enc} bytes exists ({raw!r}): either the manifest "
                f"was read with the wrong encoding (pass encoding=...), or rename the file to UTF-8 "
                f"(e.g. convmv -f {enc} -t utf-8 --notest)"
            )
    return ""
