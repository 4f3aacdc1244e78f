"""Label sets typed or uploaded on the CLIP probe page: parsed strictly, size- and type-checked.

An upload is untrusted: at most :data:`MAX_UPLOAD` bytes (the server also caps uploads at 1 MiB),
UTF-8 text, parsed with YAML's safe loader by :func:`audit.stats.sets.parse_set_text`, which names
the field of any problem. Nothing from an upload is rendered as HTML.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

KINDS = ("class", "harmful", "group", "neutral")
MAX_UPLOAD = 64 * 1024  # bytes: a label-set YAML is a few hundred bytes


def parse_label_lines(text: str) -> pd.DataFrame:
    """Lines ``label`` or ``label | kind`` -> DataFrame(label, kind). Raises ValueError naming the line."""
    rows: list[tuple[str, str]] = []
    for i, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        label, _, kind = (s.strip() for s in line.partition("|"))
        kind = kind or "class"
        if not label:
            raise ValueError(f"line {i}: empty label")
        if kind not in KINDS:
            raise ValueError(f"line {i}: kind {kind!r} is not one of {', '.join(KINDS)}")
        rows.append((label, kind))
    if len(rows) < 2:
        raise ValueError("give at least two labels, one per line")
    if len({r[0] for r in rows}) != len(rows):
        raise ValueError("labels must be distinct")
    return pd.DataFrame(rows, columns=["label", "kind"])


def read_uploaded_set(data: bytes, name: str) -> tuple[pd.DataFrame, str]:
    """An uploaded label-set YAML -> (DataFrame(label, kind, prompt), set name).

    Raises:
        ValueError: wrong suffix, over :data:`MAX_UPLOAD` bytes, not UTF-8, or not a label set.
        ConfigError: invalid YAML or a field that fails validation (named, with the file name).
    """
    from audit.stats.sets import LabelSet, parse_set_text

    if Path(name).suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"{name}: a label set must be a .yaml or .yml file")
    if len(data) > MAX_UPLOAD:
        raise ValueError(f"{name} is {len(data):,} bytes; label-set files may be at most {MAX_UPLOAD:,} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    ls = parse_set_text(text, f"uploaded file {name}")
    if not isinstance(ls, LabelSet):
        raise ValueError(f"{name} is a {type(ls).__name__}, not a label set (type: labels)")
    # a set's entries are whole prompts: the label shown is the prompt itself
    frame = pd.DataFrame({"label": [e.text for e in ls.labels], "kind": [e.kind for e in ls.labels],
                          "prompt": [e.text for e in ls.labels]})
    return frame, ls.name
