"""Prompts a CLIP tokenizer cannot tell apart: a check before any text embedding is trusted.

A CLIP compares images with the embeddings of tokenised texts. Texts that tokenize to the same
ids get the same embedding, so a zero-shot "gap" between them, or an association test between
them, measures nothing. It happens more often than one would think: a word-level tokenizer maps
every word it does not know to one ``<unk>`` id ("a photo of a criminal" and "a photo of a thief"
both become "a photo of a <unk>"), a tokenizer drops case and punctuation, and text longer than
the context length is cut.

:func:`prompt_problems` is the pure check over token ids; :func:`find_prompt_problems` gets the ids
from an adapter (``adapter.text_tokens``, ``adapter.unknown_token_id``) and names the unknown words;
:func:`check_prompts` raises :class:`~audit.errors.ConfigError` naming the texts and the config field.

Example:
    >>> probs = prompt_problems(["a cat", "a dog", "a  cat!"], [[1, 5], [1, 6], [1, 5]], None)
    >>> [(p.kind, p.texts) for p in probs]
    [('identical', ('a cat', 'a  cat!'))]
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from audit.errors import ConfigError

__all__ = ["Problem", "check_prompts", "find_prompt_problems", "model_name", "problems_message", "prompt_problems"]

ProblemKind = Literal["identical", "mostly_unknown", "empty"]
_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")
_MAX_SHOWN_IDS = 12


@dataclass(frozen=True)
class Problem:
    """One problem of a prompt set.

    Attributes:
        kind: ``"identical"`` (two or more texts tokenize to the same ids), ``"mostly_unknown"``
            (more than ``max_unknown_share`` of a text's tokens are the unknown id) or ``"empty"``
            (a text tokenizes to no content token at all).
        texts: the texts concerned (one for mostly_unknown / empty), in input order.
        tokens: their content token ids (as the model reads them, after truncation).
        unknown_share: share of ``tokens`` that are the unknown id (0 when the tokenizer has none).
        unknown_words: words of ``texts`` the tokenizer does not know (when the caller could tell).
        truncated: identical only after truncation to the context length (they differ before it).
        groups: for each text the group it belongs to (a zero-shot class), when groups were given.
    """

    kind: ProblemKind
    texts: tuple[str, ...]
    tokens: tuple[int, ...]
    unknown_share: float = 0.0
    unknown_words: tuple[str, ...] = ()
    truncated: bool = False
    groups: tuple[str, ...] = ()

    def describe(self, model: str | None = None, *, context_length: int | None = None) -> str:
        """One sentence naming the texts, e.g. "'a photo of a criminal' and 'a photo of a thief' tokenize
        identically ([1, 4, 7, 1, 48]) for zoo:clip-biased: the tokenizer does not know 'criminal', 'thief'"."""
        who = f" for {model}" if model else ""
        ids = _ids(self.tokens)
        unknown = ", ".join(repr(w) for w in self.unknown_words)
        if self.kind == "empty":
            return f"{_name(self.texts[0], self.groups[:1])} tokenizes to nothing{who}"
        if self.kind == "mostly_unknown":
            n_unk = round(self.unknown_share * len(self.tokens))
            s = (f"{_name(self.texts[0], self.groups[:1])} is mostly unknown to the tokenizer{who} "
                 f"({n_unk} of {len(self.tokens)} tokens are unknown: {ids})")
            return s + (f": the tokenizer does not know {unknown}" if unknown else "")
        distinct = list(dict.fromkeys(zip(self.texts, self.groups or ("",) * len(self.texts))))
        if len(distinct) == 1:
            return f"{_name(*_one(distinct[0]))} is given {len(self.texts)} times{who}"
        names = [_name(*_one(d)) for d in distinct]
        listed = names[0] + " and " + names[1] if len(names) == 2 else ", ".join(names[:-1]) + " and " + names[-1]
        s = f"{listed} tokenize identically ({ids}){who}"
        if unknown:
            return s + f": the tokenizer does not know {unknown}"
        if self.truncated:
            ctx = f" ({context_length} tokens with start and end)" if context_length else ""
            return s + f": they differ only after the context length{ctx}, which cuts them"
        if self.unknown_share > 0:
            return s + ": they differ only in words the tokenizer does not know"
        return s + ": the tokenizer drops what tells them apart (case, punctuation or spacing)"


def _one(d: tuple[str, str]) -> tuple[str, tuple[str, ...]]:
    return d[0], ((d[1],) if d[1] else ())


def _name(text: str, groups: tuple[str, ...] = ()) -> str:
    return f"{text!r} ({groups[0]})" if groups and groups[0] else repr(text)


def _ids(tokens: Sequence[int]) -> str:
    t = list(tokens)
    shown = ", ".join(str(i) for i in t[:_MAX_SHOWN_IDS])
    return f"[{shown}{', …' if len(t) > _MAX_SHOWN_IDS else ''}]"


def prompt_problems(
    texts: Sequence[str],
    tokens: Sequence[Sequence[int]],
    unknown_id: int | None,
    *,
    max_unknown_share: float = 0.5,
    full_tokens: Sequence[Sequence[int]] | None = None,
    unknown_words: Mapping[str, Sequence[str]] | None = None,
    groups: Sequence[str] | None = None,
) -> list[Problem]:
    """Texts a tokenizer cannot tell apart or barely knows (pure: works on token ids).

    Args:
        texts: the prompts, in order.
        tokens: content token ids of each text as the model reads them (no start / end / padding,
            after truncation to the context length), e.g. ``adapter.text_tokens(texts)``.
        unknown_id: the tokenizer's unknown id (``adapter.unknown_token_id``), or ``None``.
        max_unknown_share: a text whose share of unknown tokens exceeds this is a problem.
        full_tokens: the ids before truncation (``adapter.text_tokens(texts, truncate=False)``): an
            identical group whose full ids differ is marked ``truncated``.
        unknown_words: text -> words of it the tokenizer does not know (named in the descriptions).
        groups: the group of each text (a zero-shot class): texts that tokenize identically are then a
            problem only across groups (two prompts of one class may coincide), and are named with it.

    Returns:
        Problems in input order of their first text: identical groups (empty texts excluded), then
        each remaining text that is mostly unknown, then empty texts. A text is named once: in its
        identical group, else as mostly unknown, else as empty.

    Raises:
        ValueError: ``tokens`` (or ``full_tokens`` / ``groups``) does not have one entry per text.
    """
    texts = [str(t) for t in texts]
    toks = [tuple(int(i) for i in t) for t in tokens]
    if len(toks) != len(texts):
        raise ValueError(f"got {len(toks)} token lists for {len(texts)} texts")
    full = None if full_tokens is None else [tuple(int(i) for i in t) for t in full_tokens]
    if full is not None and len(full) != len(texts):
        raise ValueError(f"got {len(full)} full token lists for {len(texts)} texts")
    grp = None if groups is None else [str(g) for g in groups]
    if grp is not None and len(grp) != len(texts):
        raise ValueError(f"got {len(grp)} groups for {len(texts)} texts")
    if not 0.0 <= max_unknown_share <= 1.0:
        raise ValueError(f"max_unknown_share must be in [0, 1], got {max_unknown_share}")
    unk_words = {str(k): tuple(str(w) for w in v) for k, v in (unknown_words or {}).items()}

    def share(t: tuple[int, ...]) -> float:
        return (sum(i == unknown_id for i in t) / len(t)) if t and unknown_id is not None else 0.0

    def words(idx: Sequence[int]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(w for i in idx for w in unk_words.get(texts[i], ())))

    by_ids: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(toks):
        if t:
            by_ids.setdefault(t, []).append(i)
    identical: list[Problem] = []
    named: set[int] = set()
    for t, idx in by_ids.items():
        if len(idx) < 2 or (grp is not None and len({grp[i] for i in idx}) < 2):
            continue
        truncated = full is not None and len({full[i] for i in idx}) > 1
        identical.append(Problem(kind="identical", texts=tuple(texts[i] for i in idx), tokens=t,
                                 unknown_share=share(t), unknown_words=words(idx), truncated=truncated,
                                 groups=tuple(grp[i] for i in idx) if grp is not None else ()))
        named.update(idx)
    out = sorted(identical, key=lambda p: texts.index(p.texts[0]))
    for i, t in enumerate(toks):
        if t and i not in named and share(t) > max_unknown_share:
            out.append(Problem(kind="mostly_unknown", texts=(texts[i],), tokens=t, unknown_share=share(t),
                               unknown_words=words([i]), groups=(grp[i],) if grp is not None else ()))
            named.add(i)
    for i, t in enumerate(toks):
        if not t:
            out.append(Problem(kind="empty", texts=(texts[i],), tokens=(), groups=(grp[i],) if grp is not None else ()))
    return out


def model_name(adapter: Any) -> str:
    """``family:name`` of an adapter's spec (no checkpoint path)."""
    spec = getattr(adapter, "spec", None)
    return f"{spec.family}:{spec.name}" if spec is not None else type(adapter).__name__


def _context_length(adapter: Any) -> int | None:
    try:
        return int(adapter.tokenize([""]).shape[1])
    except Exception:  # noqa: BLE001 - only used to word a message
        return None


def find_prompt_problems(
    adapter: Any,
    texts: Sequence[str],
    *,
    max_unknown_share: float = 0.5,
    groups: Sequence[str] | None = None,
) -> list[Problem]:
    """:func:`prompt_problems` for ``texts`` with ``adapter``'s tokenizer, naming unknown words.

    An adapter without a text tower (or a CLIP family that cannot show its tokens) has no problems
    to report: the result is empty.
    """
    texts = [str(t) for t in texts]
    if not texts:
        return []
    try:
        tokens = adapter.text_tokens(texts)
        full = adapter.text_tokens(texts, truncate=False)
    except NotImplementedError:
        return []
    unk = adapter.unknown_token_id
    unknown_words: dict[str, list[str]] = {}
    if unk is not None:
        vocab = list(dict.fromkeys(w for t in texts for w in _WORD.findall(t)))
        if vocab:
            ids = adapter.text_tokens(vocab)
            bad = {w for w, t in zip(vocab, ids) if unk in t}
            unknown_words = {t: [w for w in dict.fromkeys(_WORD.findall(t)) if w in bad] for t in texts}
    return prompt_problems(texts, tokens, unk, max_unknown_share=max_unknown_share, full_tokens=full,
                           unknown_words=unknown_words, groups=groups)


def problems_message(problems: Sequence[Problem], *, where: str, model: str | None = None,
                     context_length: int | None = None, max_shown: int = 8) -> str:
    """``"WHERE: <problem> for MODEL: <why>; <problem>; remove or reword them"`` (the model is named in the
    first problem; at most ``max_shown`` problems are named)."""
    parts = [p.describe(model if i == 0 else None, context_length=context_length)
             for i, p in enumerate(problems[:max_shown])]
    more = len(problems) - max_shown
    if more > 0:
        parts.append(f"and {more} more problem(s)")
    return f"{where}: " + "; ".join(parts) + "; remove or reword them"


def check_prompts(
    adapter: Any,
    texts: Sequence[str],
    *,
    where: str,
    max_unknown_share: float = 0.5,
    groups: Sequence[str] | None = None,
) -> None:
    """Refuse prompts the model's tokenizer cannot tell apart, barely knows, or reduces to nothing.

    Args:
        adapter: a loaded CLIP adapter.
        texts: the prompts.
        where: the config field they come from, named first in the message
            (e.g. ``"clip.label_set fairface_harmful"``).
        max_unknown_share: see :func:`prompt_problems`.
        groups: see :func:`prompt_problems` (zero-shot classes).

    Raises:
        ConfigError: e.g. "clip.label_set fairface_harmful: 'a photo of a thief' and 'a photo of a criminal'
            tokenize identically ([1, 4, 7, 1, 48]) for zoo:clip-biased: the tokenizer does not know
            'thief', 'criminal'; remove or reword them".
    """
    problems = find_prompt_problems(adapter, texts, max_unknown_share=max_unknown_share, groups=groups)
    if problems:
        raise ConfigError(problems_message(problems, where=where, model=model_name(adapter),
                                           context_length=_context_length(adapter)))
