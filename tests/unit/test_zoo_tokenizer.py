"""The zoo's word-level tokenizer follows open_clip's id conventions."""

from __future__ import annotations

import numpy as np
import torch

from audit.zoo.tokenizer import WorldTokenizer
from audit.zoo.world import DEFAULT_SPEC, sample_batch


def test_round_trip_of_every_training_caption() -> None:
    tok = WorldTokenizer()
    b = sample_batch(300, split="biased", rng=np.random.default_rng(0))
    ids = tok(b.captions)
    assert ids.shape == (300, tok.context_length) and ids.dtype == torch.long
    for cap, row in zip(b.captions, ids):
        assert tok.decode(row) == cap.split()
        assert tok.unk_token_id not in row.tolist()


def test_sot_eot_and_padding_conventions() -> None:
    tok = WorldTokenizer()
    ids = tok(["a photo of a triangle", "a"], context_length=10)
    assert ids.shape == (2, 10)
    assert (ids[:, 0] == tok.sot_token_id).all()
    # eot right after the words, zeros after it; eot is the largest id (argmax pooling finds it)
    assert ids[0, 6] == tok.eot_token_id and (ids[0, 7:] == 0).all()
    assert ids[1, 2] == tok.eot_token_id and (ids[1, 3:] == 0).all()
    assert tok.eot_token_id == tok.vocab_size - 1
    assert ids.argmax(-1).tolist() == [6, 2]
    assert ids.max() < tok.vocab_size


def test_unknown_words_map_to_unk_and_long_text_is_truncated() -> None:
    tok = WorldTokenizer()
    ids = tok("A photo of a Zebra!")
    assert tok.decode(ids[0]) == ["a", "photo", "of", "a", "<unk>"]
    long = tok(" ".join(["red"] * 40))
    assert long.shape == (1, 16) and long[0, -1] == tok.eot_token_id and long[0, 0] == tok.sot_token_id
    assert tok.decode(long[0]) == ["red"] * 14


def test_vocab_covers_the_world_and_is_small() -> None:
    tok = WorldTokenizer()
    s = DEFAULT_SPEC
    for w in (*s.classes, *s.groups, *s.colours, *s.concept_words, *s.neutral_words, "something"):
        assert tok.encode(w) != [tok.unk_token_id]
    assert len(set(tok.vocab)) == len(tok.vocab)
    assert tok.vocab_size == len(tok.vocab) + 4 < 100
    assert tok("") .tolist()[0][:3] == [tok.sot_token_id, tok.eot_token_id, 0]
