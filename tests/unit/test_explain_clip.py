"""GAE for CLIP (image map + text relevance) and the CLIP targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from audit.capture import capture
from audit.errors import ExplainError
from audit.explain import (
    ClassTarget,
    EmbeddingDirectionTarget,
    PromptTarget,
    ZeroShotTarget,
    clip_gae,
    explain,
)
from audit.explain.gae import gae
from tests.helpers_models import tiny_open_clip, tiny_timm_vit


@pytest.fixture(scope="module")
def clip():
    return tiny_open_clip()


def test_clip_gae_image_map_and_text_relevance(clip) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["a photo of a cat", "dog"]
    maps, rel = clip_gae(clip, x, prompts, start_layer=0, text_start_layer=-1)
    assert maps.shape == (2, 4, 4) and maps.abs().sum() > 0
    # image side equals GAE with the prompt similarity as the target score
    for i, p in enumerate(prompts):
        ref = gae(clip, x[i : i + 1], target=PromptTarget(p), start_layer=0)
        torch.testing.assert_close(maps[i : i + 1], ref, rtol=1e-4, atol=1e-6)
    # text side: word tokens only, sums to 1; recompute the last block by hand (R = I + relu(mean_h g*a))
    words, scores = rel[0]
    assert words == ["a", "photo", "of", "a", "cat"]
    assert sum(scores) == pytest.approx(1.0, abs=1e-6) and min(scores) >= 0
    assert rel[1] == (["dog"], [pytest.approx(1.0)])
    tokens = clip.tokenize(prompts[:1])
    with torch.no_grad():
        img = F.normalize(clip.encode_image(x[:1]).float(), dim=-1)
    with capture(clip, tower="text", grads=True) as cap:
        txt = F.normalize(clip.encode_text(tokens).float(), dim=-1)
        (clip.logit_scale * (img * txt).sum()).backward()
    a, g = cap.attentions[-1], cap.grads[-1]
    cam = (a * g).clamp(min=0).mean(1)[0]
    eot = int(clip.text_eot_index(tokens)[0])
    expected = cam[eot, 1:eot] / cam[eot, 1:eot].sum()
    torch.testing.assert_close(torch.tensor(scores), expected.float(), rtol=1e-4, atol=1e-6)
    clip.model.zero_grad(set_to_none=True)


def test_prompt_target_score_is_scaled_cosine(clip) -> None:
    x = torch.randn(3, 3, 32, 32)
    s = PromptTarget("cat").score(clip, x)
    with torch.no_grad():
        img = F.normalize(clip.encode_image(x), dim=-1)
        txt = F.normalize(clip.encode_text(clip.tokenize(["cat"])), dim=-1)
    torch.testing.assert_close(s.detach(), clip.logit_scale * (img @ txt.T)[:, 0], rtol=1e-5, atol=1e-5)
    exp = explain(clip, x, method="gae", target=PromptTarget("cat"))
    assert exp.target == {"kind": "prompt", "text": "cat"}
    assert exp.params["start_layer"] == -1 and len(exp.text_relevance) == 3


def test_zeroshot_target_matches_head(clip) -> None:
    from audit.models import ZeroShotHead

    prompts = {"cat": ["cat"], "dog": ["dog"], "bird": ["bird"]}
    x = torch.randn(2, 3, 32, 32)
    t = ZeroShotTarget(prompts, cls="dog").resolve(clip, x)
    head = ZeroShotHead(clip, prompts)
    with torch.no_grad():
        torch.testing.assert_close(t.score(clip, x), head.logits(x)[:, 1])
        torch.testing.assert_close(t.probability(clip, x), head.logits(x).softmax(1)[:, 1])
    # explaining the CLIP adapter with the zero-shot target == explaining the head with ClassTarget
    a = explain(clip, x, method="gradcam", target=ZeroShotTarget(prompts, cls="dog")).grid_maps
    b = explain(head, x, method="gradcam", target=ClassTarget(1)).grid_maps
    torch.testing.assert_close(a, b)
    with pytest.raises(ExplainError, match="not among the prompt classes"):
        ZeroShotTarget(prompts, cls="fish").resolve(clip, x)


def test_target_errors(clip) -> None:
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ExplainError, match="needs a target"):
        explain(clip, x, method="saliency")
    vit = tiny_timm_vit()
    with pytest.raises(ExplainError, match="needs a CLIP adapter"):
        explain(vit, x, method="saliency", target=PromptTarget("cat"))
    with pytest.raises(ExplainError, match="out of range"):
        explain(vit, x, method="saliency", target=ClassTarget(7))
    with pytest.raises(ExplainError, match="one index per image"):
        explain(vit, x, method="saliency", target=ClassTarget([0, 1, 2]))
    with pytest.raises(ExplainError, match="embedding has 32"):
        explain(vit, x, method="saliency", target=EmbeddingDirectionTarget(torch.ones(5)))
    with pytest.raises(ExplainError, match="no class probability"):
        PromptTarget("cat").probability(clip, x)
