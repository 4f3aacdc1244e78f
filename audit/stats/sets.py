"""Label, query, word and prompt sets: shipped YAML files, replaceable by a path.

A set file is YAML with a ``type`` field (labels | queries | weat | templates), a ``name``
and a ``source``; unknown keys are errors. ``load_set("fairface_harmful")`` loads the
shipped file ``audit/stats/data/fairface_harmful.yaml``; ``load_set("my/labels.yaml")``
loads a user file. Errors name the file and the field.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from audit.errors import ConfigError

__all__ = [
    "AnySet",
    "LabelEntry",
    "LabelSet",
    "QuerySet",
    "TemplateSet",
    "WeatSet",
    "WeatTest",
    "load_set",
    "shipped_sets",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelEntry(_Strict):
    """One zero-shot label: prompt text, kind (class | harmful | group | neutral), optional category."""

    text: str = Field(min_length=1)
    kind: Literal["class", "harmful", "group", "neutral"]
    category: str | None = None


class LabelSet(_Strict):
    type: Literal["labels"]
    name: str = Field(min_length=1)
    description: str = ""
    source: str = Field(min_length=1)
    labels: list[LabelEntry] = Field(min_length=2)

    @field_validator("labels")
    @classmethod
    def _unique(cls, v: list[LabelEntry]) -> list[LabelEntry]:
        seen: set[str] = set()
        for e in v:
            if e.text in seen:
                raise ValueError(f"duplicate label text {e.text!r}")
            seen.add(e.text)
        return v

    def to_frame(self) -> pd.DataFrame:
        """DataFrame with columns label, kind, category (the ``labels_df`` of the association functions)."""
        return pd.DataFrame([{"label": e.text, "kind": e.kind, "category": e.category or ""} for e in self.labels])


class QuerySet(_Strict):
    type: Literal["queries"]
    name: str = Field(min_length=1)
    description: str = ""
    source: str = Field(min_length=1)
    template: str = "{}"
    queries: list[str] = Field(min_length=1)

    @field_validator("template")
    @classmethod
    def _has_slot(cls, v: str) -> str:
        if "{}" not in v:
            raise ValueError("template must contain '{}' where the query goes")
        return v

    def texts(self) -> list[str]:
        """The queries inserted into the template."""
        return [self.template.format(q) for q in self.queries]


class WeatTest(_Strict):
    test: str
    X: str
    Y: str | None = None
    A: str
    B: str


class WeatSet(_Strict):
    type: Literal["weat"]
    name: str = Field(min_length=1)
    description: str = ""
    source: str = Field(min_length=1)
    sets: dict[str, list[str]]
    tests: list[WeatTest] = []

    @model_validator(mode="after")
    def _tests_refer_to_sets(self) -> WeatSet:
        for t in self.tests:
            for role in ("X", "Y", "A", "B"):
                ref = getattr(t, role)
                if ref is not None and ref not in self.sets:
                    raise ValueError(f"test {t.test!r}: {role}={ref!r} is not one of the sets {sorted(self.sets)}")
        for k, words in self.sets.items():
            if len(words) < 2:
                raise ValueError(f"set {k!r} needs at least 2 words")
        return self


class TemplateSet(_Strict):
    type: Literal["templates"]
    name: str = Field(min_length=1)
    description: str = ""
    source: str = Field(min_length=1)
    templates: list[str] = Field(min_length=1)

    @field_validator("templates")
    @classmethod
    def _slots(cls, v: list[str]) -> list[str]:
        for t in v:
            if "{}" not in t:
                raise ValueError(f"template {t!r} must contain '{{}}'")
        return v


AnySet = Annotated[LabelSet | QuerySet | WeatSet | TemplateSet, Field(discriminator="type")]
_ADAPTER: TypeAdapter = TypeAdapter(AnySet)


def shipped_sets() -> list[str]:
    """Names of the sets shipped in audit/stats/data."""
    return sorted(p.name[:-5] for p in resources.files("audit.stats").joinpath("data").iterdir()
                  if p.name.endswith(".yaml"))


def load_set(name_or_path: str | Path) -> LabelSet | QuerySet | WeatSet | TemplateSet:
    """Load and validate a set by shipped name or by path.

    Raises:
        ConfigError: unknown name, unreadable file, invalid YAML, or a field that fails
            validation (the message names the file and the field).
    """
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or "/" in s or "\\" in s:
        path = Path(s)
        if not path.is_file():
            raise ConfigError(f"set file {s!r} not found; give a path to a YAML file or one of {shipped_sets()}")
        text = path.read_text(encoding="utf-8")
        where = str(path)
    else:
        res = resources.files("audit.stats").joinpath("data").joinpath(f"{s}.yaml")
        if not res.is_file():
            raise ConfigError(f"unknown set {s!r}; shipped sets: {shipped_sets()} (or pass a path to a YAML file)")
        text = res.read_text(encoding="utf-8")
        where = f"audit/stats/data/{s}.yaml"
    return parse_set_text(text, where)


def parse_set_text(text: str, where: str) -> LabelSet | QuerySet | WeatSet | TemplateSet:
    """Validate a set given as YAML text; ``where`` names its source in error messages.

    Raises:
        ConfigError: invalid YAML (safe loader only), not a mapping, or a field that fails validation.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with a 'type' field (labels | queries | weat | templates)")
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in _loc(err['loc'], raw.get('type')))}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{where}: invalid set: {problems}") from None


def _loc(loc: tuple, tag: object) -> tuple:
    """Drop pydantic's discriminator tag from an error location (labels.labels.0 -> labels.0)."""
    return loc[1:] if loc and loc[0] == tag else loc
