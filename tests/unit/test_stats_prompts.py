"""Prompts a CLIP tokenizer cannot tell apart are found, named and refused (audit.stats.prompts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audit.errors import ConfigError
from audit.stats.prompts import (
    Problem,
    check_prompts,
    find_prompt_problems,
    problems_message,
    prompt_problems,
)


# ----------------------------------------------------------------------------- pure check
def test_identical_unknown_and_empty_texts_are_found_in_input_order() -> None:
    texts = ["a cat", "a dog", "zzz qqq", "a  Cat!", "", "a dog beyond"]
    tokens = [[1, 5], [1, 6], [9, 9], [1, 5], [], [1, 6]]
    full = [[1, 5], [1, 6], [9, 9], [1, 5], [], [1, 6, 7]]
    probs = prompt_problems(texts, tokens, 9, full_tokens=full, unknown_words={"zzz qqq": ["zzz", "qqq"]})
    assert [(p.kind, p.texts) for p in probs] == [
        ("identical", ("a cat", "a  Cat!")),
        ("identical", ("a dog", "a dog beyond")),
        ("mostly_unknown", ("zzz qqq",)),
        ("empty", ("",)),
    ]
    cat, dog, unk, empty = probs
    assert not cat.truncated and dog.truncated  # the dogs differ before the context cut
    assert unk.unknown_share == 1.0 and unk.unknown_words == ("zzz", "qqq")
    assert cat.describe("m:x") == ("'a cat' and 'a  Cat!' tokenize identically ([1, 5]) for m:x: the tokenizer drops "
                                   "what tells them apart (case, punctuation or spacing)")
    assert "differ only after the context length (16 tokens" in dog.describe(context_length=16)
    assert unk.describe() == ("'zzz qqq' is mostly unknown to the tokenizer (2 of 2 tokens are unknown: [9, 9]): "
                              "the tokenizer does not know 'zzz', 'qqq'")
    assert empty.describe("m:x") == "'' tokenizes to nothing for m:x"


def test_unknown_share_threshold_and_no_unknown_id() -> None:
    texts = ["a b unk", "unk unk b"]
    tokens = [[1, 2, 0], [0, 0, 2]]
    assert [p.texts for p in prompt_problems(texts, tokens, 0)] == [("unk unk b",)]  # 2/3 > 0.5, 1/3 is not
    assert [p.texts for p in prompt_problems(texts, tokens, 0, max_unknown_share=0.2)] == [("a b unk",), ("unk unk b",)]
    assert prompt_problems(texts, tokens, None) == []  # a tokenizer without an unknown id
    with pytest.raises(ValueError, match="2 token lists for 3 texts"):
        prompt_problems([*texts, "x"], tokens, 0)


def test_groups_allow_coinciding_prompts_within_a_class_only() -> None:
    texts = ["a cat.", "a cat", "a dog", "a kitten", "a puppy"]
    tokens = [[1, 5], [1, 5], [1, 6], [1, 7], [1, 7]]
    probs = prompt_problems(texts, tokens, None, groups=["cat", "cat", "dog", "cat", "dog"])
    assert len(probs) == 1 and probs[0].texts == ("a kitten", "a puppy") and probs[0].groups == ("cat", "dog")
    assert probs[0].describe().startswith("'a kitten' (cat) and 'a puppy' (dog) tokenize identically")


def test_message_names_the_field_and_says_what_to_do() -> None:
    p = Problem(kind="identical", texts=("x", "y"), tokens=(3,), unknown_share=1.0, unknown_words=("x", "y"))
    msg = problems_message([p, Problem(kind="empty", texts=("",), tokens=())], where="clip.queries", model="zoo:m")
    assert msg == ("clip.queries: 'x' and 'y' tokenize identically ([3]) for zoo:m: the tokenizer does not know 'x', "
                   "'y'; '' tokenizes to nothing; remove or reword them")


# ----------------------------------------------------------------------------- real tokenizers
@pytest.fixture(scope="module")
def zoo_clip():
    from audit.errors import ModelLoadError
    from audit.models import load_model

    try:
        return load_model("zoo:clip-biased")
    except ModelLoadError as e:  # pragma: no cover - weights not built in this checkout
        pytest.skip(f"zoo weights not built here: {e}")


@pytest.fixture(scope="module")
def word_clip():
    """A random tiny open_clip CLIP with the canary zoo's word tokenizer (no trained weights needed)."""
    from audit.models import load_model
    from audit.zoo.recipes import clip_model_cfg
    from audit.zoo.tokenizer import WorldTokenizer

    tok = WorldTokenizer()
    return load_model("open_clip:word-clip", model_cfg=clip_model_cfg(tok.vocab_size, tok.context_length),
                      tokenizer="audit.zoo.tokenizer:WorldTokenizer", pretrained=False)


def test_zoo_tokenizer_collisions_and_unknown_words_are_named(zoo_clip) -> None:
    tok = zoo_clip.tokenizer
    assert zoo_clip.unknown_token_id == tok.unk_token_id
    ids = zoo_clip.text_tokens(["a photo of a criminal", "a photo of a triangle", ""])
    assert ids[0] == [*tok.encode("a photo of a"), tok.unk_token_id] and ids[1] == tok.encode("a photo of a triangle")
    assert ids[2] == []
    texts = ["a photo of a criminal", "a photo of a thief", "a photo of a circle", "criminal thief", "nothing"]
    probs = find_prompt_problems(zoo_clip, texts)
    assert [(p.kind, p.texts) for p in probs] == [
        ("identical", ("a photo of a criminal", "a photo of a thief")),
        ("mostly_unknown", ("criminal thief",)),
        ("mostly_unknown", ("nothing",)),
    ]
    assert probs[0].unknown_words == ("criminal", "thief")
    with pytest.raises(ConfigError) as e:
        check_prompts(zoo_clip, texts[:3], where="clip.label_set harm")
    unk_ids = ", ".join(str(i) for i in [*tok.encode("a photo of a"), tok.unk_token_id])
    assert str(e.value) == (f"clip.label_set harm: 'a photo of a criminal' and 'a photo of a thief' tokenize identically "
                            f"([{unk_ids}]) for zoo:clip-biased: the tokenizer does not know 'criminal', 'thief'; "
                            "remove or reword them")
    check_prompts(zoo_clip, ["a photo of a circle", "a photo of a square"], where="x")  # known words pass


def test_zoo_tokenizer_collision_after_truncation(word_clip) -> None:
    long = "a photo of a " + "red " * 14
    probs = find_prompt_problems(word_clip, [long + "circle", long + "square"])
    assert len(probs) == 1 and probs[0].kind == "identical" and probs[0].truncated
    assert word_clip.text_tokens([long + "circle"], truncate=False)[0][-1] != word_clip.text_tokens([long + "circle"])[0][-1]
    with pytest.raises(ConfigError, match=r"differ only after the context length \(16 tokens"):
        check_prompts(word_clip, [long + "circle", long + "square"], where="clip.queries")


def test_tiny_open_clip_bpe_tokenizer() -> None:
    from tests.helpers_models import tiny_open_clip

    clip = tiny_open_clip()
    assert clip.unknown_token_id is None  # byte-level BPE encodes every string
    tok = clip.tokenizer
    assert clip.text_tokens(["a cat"]) == [tok.encode("a cat")]
    long = "a photo of " + "very " * 20
    texts = ["A photo of a Cat.", "a photo of a cat .", "a photo of a dog", "", long + "cat", long + "dog"]
    probs = find_prompt_problems(clip, texts)
    assert [(p.kind, p.texts, p.truncated) for p in probs] == [
        ("identical", ("A photo of a Cat.", "a photo of a cat ."), False),  # lower-cased, spaces dropped
        ("identical", (long + "cat", long + "dog"), True),  # context length 16
        ("empty", ("",), False),
    ]
    with pytest.raises(ConfigError, match=r"^clip.queries: 'A photo of a Cat.' and 'a photo of a cat .' tokenize "
                                          r"identically \(\[\d+(, \d+)*\]\) for open_clip:tiny-clip: the tokenizer drops"):
        check_prompts(clip, texts, where="clip.queries")


def test_tiny_hf_clip_tokenizer(tmp_path: Path) -> None:
    from tests.helpers_models import tiny_hf_clip

    clip = tiny_hf_clip(tmp_path)
    assert clip.unknown_token_id is None  # CLIP's <|endoftext|> doubles as unk and is never produced
    ids = clip.text_tokens(["a cat", "A  cat", "a dog"])
    assert ids[0] == ids[1] != ids[2] and len(ids[0]) > 0
    assert [p.texts for p in find_prompt_problems(clip, ["a cat", "A  cat", "a dog"])] == [("a cat", "A  cat")]


def test_zeroshot_head_refuses_classes_whose_prompts_collide(word_clip) -> None:
    from audit.models import ZeroShotHead

    with pytest.raises(ConfigError, match=r"^model.class_prompts: 'a photo of a cat.' \(cat\) and 'a photo of a dog.' "
                                          r"\(dog\) tokenize identically .*does not know 'cat', 'dog'"):
        ZeroShotHead(word_clip, ["cat", "dog"], templates=["a photo of a {}."], where="model.class_prompts")
    # two prompts of one class may coincide
    head = ZeroShotHead(word_clip, {"circle": ["circle", "Circle"], "square": ["square"]}, templates=["a {}"])
    assert head.class_names == ["circle", "square"]


# ----------------------------------------------------------------------------- runs refuse before the forward pass
def _manifest(root: Path, n: int = 8) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = ["path,label,background"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,{['circle', 'square'][i % 2]},{['plain', 'dotted'][i % 2]}")
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return root / "m.csv"


def _config(tmp_path: Path, **clip):
    from audit.config import parse_config

    return parse_config({
        "model": {"spec": "zoo:clip-biased",
                  "class_prompts": {"circle": ["a photo of a circle"], "square": ["a photo of a square"]}},
        "data": {"manifest": str(_manifest(tmp_path)), "columns": {"label": "label", "groups": ["background"]}},
        "explain": {"methods": [], "faithfulness": False, "sanity": False},
        "stats": {"n_boot": 50, "n_perm": 50, "embeddings": False},
        "clip": clip,
        "run": {"output": str(tmp_path / "run")},
    })


def _no_forward(monkeypatch) -> None:
    import audit.pipeline

    def forward(*a, **k):  # pragma: no cover - reached only if the check is missing
        raise AssertionError("the forward pass ran")

    monkeypatch.setattr(audit.pipeline, "forward_shards", forward)


def test_run_with_a_colliding_label_set_fails_before_the_forward_pass(tmp_path: Path, monkeypatch, zoo_clip) -> None:
    from audit.pipeline import run_audit

    labels = tmp_path / "harm.yaml"
    labels.write_text("type: labels\nname: harm\nsource: test\nlabels:\n"
                      "  - {text: a photo of a circle, kind: class}\n"
                      "  - {text: a photo of a criminal, kind: harmful}\n"
                      "  - {text: a photo of a thief, kind: harmful}\n")
    _no_forward(monkeypatch)
    cfg = _config(tmp_path, label_set=str(labels))
    with pytest.raises(ConfigError, match=r"^clip.label_set harm: 'a photo of a criminal' and 'a photo of a thief' "
                                          r"tokenize identically \(\[[\d, ]+\]\) for zoo:clip-biased: the tokenizer "
                                          r"does not know 'criminal', 'thief'; remove or reword them$"):
        run_audit(cfg)
    assert not (tmp_path / "run" / "run.json").exists()  # refused before the run was even created


@pytest.mark.parametrize(("clip", "field"), [
    ({"label_set": "fairface_harmful"}, "clip.label_set fairface_harmful: "),
    ({"label_set": None, "queries": ["a photo of a doctor", "a photo of a nurse"]}, "clip.queries: "),
    ({"label_set": None, "association": [{"name": "weat", "attribute": "background", "x_group": "plain",
                                          "y_group": "dotted", "set": "weat_caliskan", "a": "pleasant",
                                          "b": "unpleasant"}]}, "clip.association 'weat' (A and B texts): "),
])
def test_every_clip_text_field_is_checked(tmp_path: Path, monkeypatch, zoo_clip, clip: dict, field: str) -> None:
    from audit.pipeline import run_audit

    _no_forward(monkeypatch)
    with pytest.raises(ConfigError) as e:
        run_audit(_config(tmp_path, **clip))
    assert str(e.value).startswith(field) and "tokenize identically" in str(e.value)


def test_default_templates_for_unknown_class_names_are_refused(tmp_path: Path, monkeypatch, zoo_clip) -> None:
    from audit.pipeline import load_classifier

    cfg = _config(tmp_path, label_set=None).model_copy(deep=True)
    cfg.model.class_prompts = None
    with pytest.raises(ConfigError, match=r"^clip.templates \(zero-shot prompts of the classes\): 'a photo of a cat.' "
                                          r"\(cat\) and 'a photo of a dog.' \(dog\) tokenize identically"):
        load_classifier(cfg, ["cat", "dog"])


def test_demo_configs_pass_the_check(tmp_path: Path, zoo_clip) -> None:
    """The demo's CLIP texts are words the zoo tokenizer knows (the shipped fairface / WEAT sets are not)."""
    from audit.analyses import check_clip_texts
    from audit.config import parse_config
    from audit.demo import demo_config
    from audit.pipeline import load_classifier

    (tmp_path / "m.csv").write_text("path,label,background,colour\n")
    for name in ("clip-biased", "clip-control"):
        cfg = parse_config(demo_config(name, tmp_path / "m.csv", tmp_path), source=name)
        adapter, head = load_classifier(cfg, None)
        check_clip_texts(cfg, adapter, group_columns=["background", "colour"])
        assert head.class_names == ["circle", "square", "triangle", "cross"]
