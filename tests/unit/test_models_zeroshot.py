"""ZeroShotHead: logits = logit_scale * cosine to prompt-ensembled class embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from audit.errors import UsageError
from audit.models import ZeroShotHead
from tests.helpers_models import tiny_open_clip, tiny_timm_vit


@pytest.fixture(scope="module")
def clip():
    return tiny_open_clip()


def test_logits_by_independent_computation(clip) -> None:
    head = ZeroShotHead(clip, {"cat": ["cat", "kitten"], "dog": ["dog"]}, templates=["a photo of a {}.", "{}"])
    x = torch.randn(3, 3, 32, 32)
    m = clip.model
    with torch.no_grad():
        # class text embeddings by hand with open_clip's own API
        def cls_emb(words):
            texts = [t.format(w) for w in words for t in ["a photo of a {}.", "{}"]]
            e = m.encode_text(clip.tokenizer(texts), normalize=True)
            return F.normalize(e.mean(0), dim=-1)

        w = torch.stack([cls_emb(["cat", "kitten"]), cls_emb(["dog"])])
        expected = m.logit_scale.exp() * m.encode_image(x, normalize=True) @ w.T
        torch.testing.assert_close(head.logits(x), expected, atol=1e-4, rtol=0)
    assert head.class_names == ["cat", "dog"] and head.kind == "classifier"
    assert head.token_layout() == clip.token_layout()
    assert head.vision_blocks() == clip.vision_blocks()
    assert head.gradcam_layer() is clip.gradcam_layer()
    assert head.fingerprint.startswith(clip.fingerprint + "+zeroshot:")
    other = ZeroShotHead(clip, ["cat", "dog"])
    assert other.fingerprint != head.fingerprint


def test_errors(clip) -> None:
    with pytest.raises(UsageError, match="needs a CLIP adapter"):
        ZeroShotHead(tiny_timm_vit(), ["a", "b"])
    with pytest.raises(UsageError, match="at least 2 classes"):
        ZeroShotHead(clip, ["cat"])
    with pytest.raises(UsageError, match="exactly one"):
        ZeroShotHead(clip, ["cat", "dog"], templates=["a photo"])
    with pytest.raises(UsageError, match="vision tower only"):
        ZeroShotHead(clip, ["cat", "dog"]).attention_patches("text")
