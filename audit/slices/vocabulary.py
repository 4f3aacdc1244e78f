"""Vocabularies for naming slices: the shipped default list of short visual concepts, plus user files.

A vocabulary file is YAML::

    type: vocabulary
    name: my_words
    source: where the words come from
    template: "a photo of {}"          # optional; "{}" is replaced by the concept
    concepts:                          # category -> concepts
      texture: [dotted, striped]
      objects: [a toy]

Unknown keys are errors. ``load_vocabulary("default")`` loads the shipped file
``audit/slices/data/vocabulary.yaml``; ``load_vocabulary("default", "my_words.yaml")`` merges the
default with a user file (a concept listed twice is kept once, at its first place; each concept
keeps the template of the file it came from).

Example:
    >>> v = load_vocabulary("default")
    >>> len(v) > 100, v.texts()[0]
    (True, 'a photo of dotted')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from audit.errors import ConfigError, UsageError

__all__ = ["DEFAULT_VOCABULARY", "Vocabulary", "load_vocabulary", "usable_vocabulary"]

DEFAULT_VOCABULARY = "default"


class _VocabularyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["vocabulary"]
    name: str = Field(min_length=1)
    description: str = ""
    source: str = Field(min_length=1)
    template: str = "{}"
    concepts: dict[str, list[str]] = Field(min_length=1)

    @field_validator("template")
    @classmethod
    def _has_slot(cls, v: str) -> str:
        if v.count("{}") != 1:
            raise ValueError(f"template must contain exactly one '{{}}', got {v!r}")
        return v

    @field_validator("concepts")
    @classmethod
    def _non_empty(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for cat, words in v.items():
            if not words:
                raise ValueError(f"category {cat!r} lists no concepts")
            for w in words:
                if not str(w).strip():
                    raise ValueError(f"category {cat!r} has an empty concept")
        return v


@dataclass(frozen=True)
class Vocabulary:
    """Concepts to name slices with, each with its category and the prompt it is embedded as.

    Attributes:
        concepts: the concept words, in order (unique).
        categories: the category of each concept.
        templates: the prompt template of each concept (``"{}"`` is replaced by the concept).
        names: the names of the files merged into this vocabulary.
    """

    concepts: tuple[str, ...]
    categories: tuple[str, ...]
    templates: tuple[str, ...]
    names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.concepts)

    def texts(self) -> list[str]:
        """The prompts passed to the text embedder, one per concept."""
        return [t.format(c) for t, c in zip(self.templates, self.concepts)]

    @classmethod
    def from_words(cls, words: Sequence[str], *, template: str = "{}", category: str = "user") -> Vocabulary:
        """A vocabulary from a plain list of concepts (duplicates dropped)."""
        seen: dict[str, None] = {}
        for w in words:
            w = str(w).strip()
            if w:
                seen.setdefault(w, None)
        if not seen:
            raise ValueError("a vocabulary needs at least one non-empty concept")
        n = len(seen)
        return cls(tuple(seen), (category,) * n, (template,) * n, ("words",))

    def merged(self, other: Vocabulary) -> Vocabulary:
        """This vocabulary followed by the concepts of ``other`` that it lacks."""
        have = set(self.concepts)
        keep = [i for i, c in enumerate(other.concepts) if c not in have]
        return Vocabulary(
            self.concepts + tuple(other.concepts[i] for i in keep),
            self.categories + tuple(other.categories[i] for i in keep),
            self.templates + tuple(other.templates[i] for i in keep),
            self.names + other.names,
        )


def _read_file(source: str | os.PathLike[str]) -> Vocabulary:
    s = str(source)
    if s == DEFAULT_VOCABULARY:
        text = resources.files("audit.slices").joinpath("data/vocabulary.yaml").read_text(encoding="utf-8")
        where = "the shipped vocabulary audit/slices/data/vocabulary.yaml"
    else:
        p = Path(s)
        if not p.is_file():
            raise ConfigError(f"vocabulary {s!r}: no such file; give a YAML path or {DEFAULT_VOCABULARY!r}")
        text = p.read_text(encoding="utf-8")
        where = f"vocabulary file {p}"
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc})") from exc
    try:
        f = _VocabularyFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise ConfigError(f"{where}: field {field}: {err['msg']}") from exc
    concepts: list[str] = []
    cats: list[str] = []
    seen: set[str] = set()
    for cat, words in f.concepts.items():
        for w in words:
            w = str(w).strip()
            if w not in seen:
                seen.add(w)
                concepts.append(w)
                cats.append(cat)
    n = len(concepts)
    return Vocabulary(tuple(concepts), tuple(cats), (f.template,) * n, (f.name,))


def load_vocabulary(*sources: str | os.PathLike[str] | Vocabulary) -> Vocabulary:
    """Load and merge vocabularies.

    Args:
        *sources: ``"default"`` (the shipped list), paths of vocabulary YAML files, or
            :class:`Vocabulary` objects; merged in order. No source: the default.

    Returns:
        The merged :class:`Vocabulary`.

    Raises:
        ConfigError: a file is missing, not YAML, or has a bad or unknown field (the message names
            the file and the field).
    """
    if not sources:
        sources = (DEFAULT_VOCABULARY,)
    out: Vocabulary | None = None
    for s in sources:
        v = s if isinstance(s, Vocabulary) else _read_file(s)
        out = v if out is None else out.merged(v)
    assert out is not None
    return out


def usable_vocabulary(adapter: Any, vocab: Vocabulary, *,
                      where: str = "slices.vocabulary") -> tuple[Vocabulary, list[str]]:
    """``vocab`` without the concepts ``adapter``'s tokenizer cannot read, and the concepts left out.

    A concept is left out when its prompt has any unknown token (the text embedding of "a person with
    <unk> hair" names nothing) or none at all, or tokenizes identically to an earlier concept's prompt
    (the first of such a set is kept: the rest would get its score). Used to name error slices and
    the roles of model components; ``where`` is the config field named in the error.

    Raises:
        UsageError: when no concept is left.
    """
    texts = vocab.texts()
    try:
        ids = adapter.text_tokens(texts)
    except NotImplementedError:  # a family that cannot show its tokens: every concept is read as given
        ids = [[i] for i in range(len(texts))]
    unk = adapter.unknown_token_id
    keep, seen = [], set()
    for i, t in enumerate(ids):
        key = tuple(t)
        if not key or (unk is not None and unk in key) or key in seen:
            continue
        seen.add(key)
        keep.append(i)
    if not keep:
        model = f"{adapter.spec.family}:{adapter.spec.name}"
        raise UsageError(f"{where}: {model}'s tokenizer cannot read any of the {len(texts)} "
                         f"concepts; give a vocabulary in words it knows ({where}: [my_words.yaml])")
    dropped = [vocab.concepts[i] for i in range(len(texts)) if i not in set(keep)]
    kept = Vocabulary(tuple(vocab.concepts[i] for i in keep), tuple(vocab.categories[i] for i in keep),
                      tuple(vocab.templates[i] for i in keep), vocab.names)
    return kept, dropped
