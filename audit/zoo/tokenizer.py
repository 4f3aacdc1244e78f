"""A word-level tokenizer for the canary CLIP models.

open_clip's 49k-token BPE vocabulary would make the text embedding table far
larger than the whole canary model, so the zoo CLIPs use this small word-level
vocabulary (every word of the world's captions and prompts, plus a few common
prompt words). It follows open_clip's conventions so the open_clip adapter can
treat it like ``open_clip.get_tokenizer(...)``:

* ids are ``(T, context_length)`` int64, start-of-text at position 0, the words,
  end-of-text right after them, zero padding;
* ``eot_token_id`` is the largest id, so the text tower's argmax pooling finds it;
* unknown words map to ``<unk>`` (never an error); text longer than the context is
  truncated and still ends with end-of-text.

Example:
    >>> tok = WorldTokenizer()
    >>> ids = tok("a photo of a triangle")
    >>> ids.shape, int(ids[0, 0]) == tok.sot_token_id
    (torch.Size([1, 16]), True)
    >>> tok.decode(ids[0])
    ['a', 'photo', 'of', 'a', 'triangle']
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from audit.zoo.world import DEFAULT_SPEC

_EXTRA_WORDS = (
    "a", "an", "the", "photo", "picture", "image", "of", "on", "in", "with", "and", "ground",
    "background", "something", "object", "shape", "thing", "this", "is", "it", "that",
    "person", "people", "man", "woman", "good", "bad", "pleasant", "unpleasant", "harmful", "safe",
)

_SPLIT = re.compile(r"[a-z0-9]+")


def _default_words() -> list[str]:
    s = DEFAULT_SPEC
    words: list[str] = []
    for w in (*_EXTRA_WORDS, *s.classes, *s.groups, *s.colours, *s.concept_words, *s.neutral_words):
        if w not in words:
            words.append(w)
    return words


class WorldTokenizer:
    """Word-level tokenizer with open_clip conventions (see module docstring).

    Attributes:
        vocab: the words, in id order starting at id 1 (0 is padding).
        vocab_size: number of ids (padding, words, ``<unk>``, ``<sot>``, ``<eot>``).
        pad_token_id / unk_token_id / sot_token_id / eot_token_id: special ids.
        context_length: default sequence length (16).
    """

    def __init__(self, words: Sequence[str] | None = None, context_length: int = 16) -> None:
        self.vocab: list[str] = list(words) if words is not None else _default_words()
        self._ids = {w: i + 1 for i, w in enumerate(self.vocab)}
        self.pad_token_id = 0
        self.unk_token_id = len(self.vocab) + 1
        self.sot_token_id = len(self.vocab) + 2
        self.eot_token_id = len(self.vocab) + 3
        self.vocab_size = len(self.vocab) + 4
        self.context_length = int(context_length)

    def encode(self, text: str) -> list[int]:
        """Word ids of ``text`` (lower-cased, punctuation dropped), without sot/eot."""
        return [self._ids.get(w, self.unk_token_id) for w in _SPLIT.findall(text.lower())]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Tokenize text(s) -> ``(T, context_length)`` int64 ids."""
        if isinstance(texts, str):
            texts = [texts]
        ctx = int(context_length or self.context_length)
        if ctx < 2:
            raise ValueError(f"context_length must be at least 2 (sot + eot), got {ctx}")
        out = torch.zeros(len(texts), ctx, dtype=torch.long)  # (T, ctx)
        for i, t in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(t)][: ctx - 1] + [self.eot_token_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: torch.Tensor | Sequence[int]) -> list[str]:
        """Words of one id sequence, without sot/eot/padding (``<unk>`` for unknown words)."""
        words: list[str] = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)):
            i = int(i)
            if i == self.eot_token_id:
                break
            if i in (self.pad_token_id, self.sot_token_id):
                continue
            words.append("<unk>" if i == self.unk_token_id else self.vocab[i - 1])
        return words

    def __repr__(self) -> str:
        return f"WorldTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"
