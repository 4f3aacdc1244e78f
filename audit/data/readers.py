"""Reading a manifest's source into a table: CSV, Parquet, an ImageFolder tree, a DataFrame.

:func:`read_source` picks the reader (``format="auto"``: a directory is an ImageFolder, Parquet
by suffix or its ``PAR1`` magic, CSV otherwise) and returns a :class:`Source`: the raw table,
how to name it and its rows in messages, and the directory relative paths start from. Every
read error is a :class:`~audit.errors.ManifestError` that names the file and what to do.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from audit.data.schema import ColumnMap, ManifestFormat
from audit.data.values import normalise, unknown_column_message
from audit.errors import ManifestError

__all__ = ["PARQUET_SUFFIXES", "Source", "read_csv", "read_parquet", "read_source"]

PARQUET_SUFFIXES = {".parquet", ".pq", ".parq"}


@dataclass
class Source:
    """A source read into a table, before any validation."""

    df: pd.DataFrame
    desc: str  # "manifest 'x.csv'"
    source: str | None
    root: str
    row_note: str  # how rows are numbered
    notes: list[str]
    columns: ColumnMap


def read_csv(path: Path, *, encoding: str, sep: str | None) -> pd.DataFrame:
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


def read_parquet(path: Path) -> pd.DataFrame:
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
        side = read_parquet(side_path) if side_path.suffix.lower() in PARQUET_SUFFIXES else read_csv(
            side_path, encoding=encoding, sep=sep
        )
        want = [columns.image, *columns.groups] + ([columns.mask] if columns.mask else [])
        missing = [c for c in want if c not in side.columns]
        if missing:
            raise ManifestError(
                f"side-car '{side_path}' has problems:",
                [unknown_column_message(c, "side-car column", list(side.columns)) for c in missing],
            )
        key = side[columns.image].map(lambda v: None if normalise(v)[0] is None else Path(
            os.path.normpath(str(normalise(v)[0]))).as_posix())
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


def read_source(
    source: str | os.PathLike[str] | pd.DataFrame,
    *,
    columns: ColumnMap,
    root: str | os.PathLike[str] | None,
    format: ManifestFormat,
    encoding: str,
    sep: str | None,
    sidecar: str | os.PathLike[str] | None,
) -> tuple[Source, list[str] | None]:
    if isinstance(source, pd.DataFrame):
        if format not in ("auto",):
            raise ManifestError(f"format={format!r} was given with a DataFrame; leave format='auto'")
        base = os.path.abspath(os.fspath(root)) if root is not None else os.getcwd()
        df = source.reset_index(drop=True).copy()
        return Source(df, "DataFrame manifest", None, base, "rows are 1-based positions in the DataFrame",
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
        elif path.suffix.lower() in PARQUET_SUFFIXES:
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
        return Source(table, f"image folder '{path}'", str(path), base,
                      "rows number the images in sorted order, 1-based", notes, cmap), classes
    if path.is_dir():
        raise ManifestError(f"manifest '{path}' is a directory; use format='imagefolder' or 'auto' for class folders")
    df = read_parquet(path) if fmt == "parquet" else read_csv(path, encoding=encoding, sep=sep)
    base = os.path.abspath(os.fspath(root)) if root is not None else str(path.parent)
    return Source(df, f"manifest '{path}'", str(path), base,
                  "rows are 1-based data rows; the header line is not counted", [], columns), None
