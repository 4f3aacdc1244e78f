"""Checks of a manifest's image and mask paths: what the path text allows, what the file holds.

:func:`path_problem` catches what is visible from the text alone (too long for this file
system, a NUL byte, unencodable); :func:`check_files` opens each distinct file once (its header,
or every pixel with ``level="full"``), in threads; :func:`encoding_hint` explains a "not found"
whose name on disk is in another encoding.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from audit.data.images import ImageInfo, probe_image
from audit.data.schema import CheckLevel
from audit.errors import ImageDecodeError

__all__ = ["FileCheck", "check_files", "encoding_hint", "path_limits", "path_problem"]


def path_limits(root: str) -> tuple[int, int]:
    """``(PATH_MAX, NAME_MAX)`` of the file system under ``root``."""
    try:
        return int(os.pathconf(root, "PC_PATH_MAX")), int(os.pathconf(root, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return (260, 255) if os.name == "nt" else (4096, 255)


def path_problem(full: str, limits: tuple[int, int]) -> str | None:
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
class FileCheck:
    """One file's check: what the image declares (``None`` unchecked or unreadable), or why it fails."""

    info: ImageInfo | None
    reason: str | None


def _check_file(path: str, level: CheckLevel, max_pixels: int) -> FileCheck:
    if level == "none":
        return FileCheck(None, None)
    try:
        return FileCheck(probe_image(path, max_pixels=max_pixels, level=level), None)
    except ImageDecodeError as e:
        return FileCheck(None, getattr(e, "reason", str(e)))
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            return FileCheck(None, "path is too long for this operating system")
        return FileCheck(None, f"cannot read file ({e.strerror or e})")


def check_files(paths: Sequence[str], level: CheckLevel, max_pixels: int, workers: int) -> dict[str, FileCheck]:
    """Each distinct path checked once (in ``workers`` threads for many files)."""
    unique = list(dict.fromkeys(paths))
    if level == "none" or not unique:
        return {p: FileCheck(None, None) for p in unique}
    if workers <= 1 or len(unique) < 32:
        return {p: _check_file(p, level, max_pixels) for p in unique}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: _check_file(p, level, max_pixels), unique))
    return dict(zip(unique, results))



def encoding_hint(full: str) -> str:
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
