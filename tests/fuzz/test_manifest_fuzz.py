"""Property tests: damaged manifests and images end in a clear error or a complete account.

Every generated case must end in ManifestError / ImageDecodeError with a message, or in a
Manifest whose kept + skipped rows equal the input rows, with exactly the rows the generator
knows to be bad skipped. Never another exception, never a hang (pytest-timeout).
Hypothesis is derandomized with a fixed number of examples (about 200 in all).
"""

from __future__ import annotations

import io
import itertools
import struct
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from audit.data.images import open_image
from audit.data.manifest import Manifest, load_manifest
from audit.errors import ImageDecodeError, ManifestError

pytestmark = pytest.mark.timeout(300)

TRIED: Counter[str] = Counter()
FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", autouse=True)
def _report_count(request: pytest.FixtureRequest):
    """Write how many cases were tried to the terminal, whether or not output is captured."""
    yield
    tr = request.config.pluginmanager.getplugin("terminalreporter")
    cap = request.config.pluginmanager.getplugin("capturemanager")
    if tr is None:
        return
    t = TRIED
    line = (
        f"manifest fuzz: {t['manifests']} manifest cases ({t['manifest error']} ManifestError, "
        f"{t['manifest ok']} complete Manifest, {t['manifest skipped']} Manifest with skipped rows); "
        f"{t['images']} damaged-image cases ({t['image ok']} decoded to RGB, {t['image error']} ImageDecodeError)"
    )
    if cap is not None:
        with cap.global_and_fixture_disabled():
            tr.write_line(line)
    else:  # pragma: no cover
        tr.write_line(line)


def _png_bomb(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


KIND_FILES = {
    "good_png": "good.png",
    "good_jpg": "good.jpg",
    "png_as_jpg": "png_inside.jpg",
    "trunc": "trunc.png",
    "zero": "zero.png",
    "bomb": "bomb.png",
    "text": "text.jpg",
    "missing": "missing.png",
    "long": "x" * 300 + ".png",
    "nonutf8": "né.png",  # on disk the name is latin-1 bytes (b"n\xe9.png"), not UTF-8
    "empty": None,
}
ALWAYS_BAD = {"zero", "bomb", "text", "missing", "long", "nonutf8", "empty"}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pool")
    arr = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(arr).save(d / "good.png")
    Image.fromarray(arr).save(d / "good.jpg", quality=90)
    Image.fromarray(arr).save(d / "png_inside.jpg", format="PNG")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    (d / "trunc.png").write_bytes(buf.getvalue()[:150])
    (d / "zero.png").write_bytes(b"")
    (d / "bomb.png").write_bytes(_png_bomb(60_000, 60_000))
    (d / "text.jpg").write_text("a text file, not a JPEG\n")
    with open(bytes(d) + b"/n\xe9.png", "wb") as fh:  # a name that is not valid UTF-8
        Image.fromarray(arr).save(fh, format="PNG")
    (d / "cases").mkdir()
    return d


ROW = st.tuples(
    st.sampled_from(sorted(KIND_FILES)),
    st.sampled_from([None, "a", "b", 1, "1", "é"]),  # label
    st.sampled_from([None, "x", "y", 2, "2", "ü"]),  # group
    st.sampled_from(["i1", "i2", "i3", "i4", "i5"]),  # id
)
CASE = st.fixed_dictionaries(
    {
        "rows": st.lists(ROW, min_size=0, max_size=6),
        "source": st.sampled_from(["csv", "csv_latin1", "parquet", "dataframe"]),
        "pass_encoding": st.booleans(),
        "use_label": st.booleans(),
        "use_group": st.booleans(),
        "use_id": st.booleans(),
        "skip_bad": st.booleans(),
        "check": st.sampled_from(["header", "full"]),
        "missing_group": st.sampled_from([None, "(missing)"]),
    }
)
_counter = itertools.count()


def _text(v: object) -> str:
    return "" if v is None else str(v)


def _expected(case: dict) -> tuple[bool, set[int]]:
    """(a column-level / file-level error is expected, 1-based rows that must be reported)."""
    rows, n = case["rows"], len(case["rows"])
    table_error = n == 0
    if case["source"] == "csv_latin1" and not case["pass_encoding"]:
        table_error |= any(any(ord(c) > 127 for c in _text(v)) for r in rows for v in (KIND_FILES[r[0]], *r[1:3]))
    for use, idx in ((case["use_label"], 1), (case["use_group"], 2)):
        if not use or n == 0:
            continue
        vals = [r[idx] for r in rows]
        table_error |= all(v is None for v in vals)
        if case["source"] == "dataframe":  # typed source: the number 1 and the string "1" collide
            nums = {str(v) for v in vals if isinstance(v, int)}
            strs = {v for v in vals if isinstance(v, str)}
            table_error |= bool(nums & strs)
    bad: set[int] = set()
    seen_ids: set[str] = set()
    for i, (kind, label, group, rid) in enumerate(rows, start=1):
        if kind in ALWAYS_BAD or (kind == "trunc" and case["check"] == "full"):
            bad.add(i)
        if case["use_label"] and label is None:
            bad.add(i)
        if case["use_group"] and group is None and case["missing_group"] is None:
            bad.add(i)
        if case["use_id"]:
            if rid in seen_ids:
                bad.add(i)
            seen_ids.add(rid)
    return table_error, bad


def _write(case: dict, pool: Path) -> object:
    rows = case["rows"]
    cols = {
        "path": [KIND_FILES[r[0]] for r in rows],
        "label": [r[1] for r in rows],
        "g": [r[2] for r in rows],
        "id": [r[3] for r in rows],
    }
    k = next(_counter)
    src = case["source"]
    if src == "dataframe":
        return pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in cols.items()})
    if src == "parquet":
        p = pool / "cases" / f"case_{k}.parquet"
        pd.DataFrame({c: pd.Series([None if x is None else str(x) for x in v], dtype=object)
                      for c, v in cols.items()}).to_parquet(p)
        return p
    p = pool / "cases" / f"case_{k}.csv"
    lines = ["path,label,g,id"] + [",".join(_text(cols[c][i]) for c in cols) for i in range(len(rows))]
    p.write_bytes(("\n".join(lines) + "\n").encode("latin-1" if src == "csv_latin1" else "utf-8"))
    return p


@settings(FUZZ, max_examples=140)
@given(case=CASE)
def test_manifest_cases_end_in_clear_error_or_full_account(pool: Path, case: dict) -> None:
    TRIED["manifests"] += 1
    source = _write(case, pool)
    columns = {"image": "path"}
    if case["use_label"]:
        columns["label"] = "label"
    if case["use_group"]:
        columns["groups"] = ["g"]
    if case["use_id"]:
        columns["id"] = "id"
    table_error, bad = _expected(case)
    n = len(case["rows"])
    kwargs = {"columns": columns, "root": pool, "skip_bad": case["skip_bad"], "check_images": case["check"],
              "missing_group": case["missing_group"], "workers": 1}
    if case["source"] == "csv_latin1" and case["pass_encoding"]:
        kwargs["encoding"] = "latin-1"
    try:
        m = load_manifest(source, **kwargs)  # type: ignore[arg-type]
    except ManifestError as e:
        assert str(e).strip()
        TRIED["manifest error"] += 1
        if not table_error:
            assert bad, f"unexpected ManifestError: {e}"
            assert not case["skip_bad"] or bad == set(range(1, n + 1)), f"skip_bad should have skipped: {e}"
            reported = {int(p.split(",")[0].split()[1]) for p in e.problems if p.startswith("row ")}
            assert reported == bad, (reported, bad, str(e))
        return
    assert not table_error, f"expected an error for {case}"
    TRIED["manifest skipped" if m.skipped else "manifest ok"] += 1
    assert isinstance(m, Manifest)
    assert len(m) + len(m.skipped) == m.n_input_rows == n  # nothing silently dropped
    assert {s["row"] for s in m.skipped} == bad
    assert set((m.df["row_id"] + 1).tolist()) == set(range(1, n + 1)) - bad
    assert all(s["reason"] for s in m.skipped)
    for row_id, path in zip(m.df["row_id"], m.df["path"]):
        kind = case["rows"][int(row_id)][0]
        if kind == "trunc":
            with pytest.raises(ImageDecodeError, match="truncated"):
                open_image(path)
        else:
            assert open_image(path).mode == "RGB"


def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    if fmt == "GIF":
        im = im.convert("P")
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


ENCODED = {f: _encoded(f) for f in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}


@settings(FUZZ, max_examples=60)
@given(
    fmt=st.sampled_from(sorted(ENCODED)),
    cut=st.one_of(st.just(1.0), st.floats(min_value=0.0, max_value=1.0)),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), max_size=3),
)
def test_damaged_image_bytes_decode_or_raise_image_decode_error(pool: Path, fmt: str, cut: float, flips) -> None:
    TRIED["images"] += 1
    data = bytearray(ENCODED[fmt][: int(len(ENCODED[fmt]) * cut)])
    for pos, val in flips:
        if data:
            data[int(pos * len(data))] = val
    with tempfile.NamedTemporaryFile(dir=pool / "cases", suffix=".img", delete=False) as f:
        f.write(bytes(data))
        path = f.name
    try:
        img = open_image(path, max_pixels=1_000_000)
    except ImageDecodeError as e:
        assert path in str(e) and len(str(e)) > len(path) + 5
        TRIED["image error"] += 1
        return
    assert img.mode == "RGB" and img.width * img.height <= 1_000_000
    TRIED["image ok"] += 1
