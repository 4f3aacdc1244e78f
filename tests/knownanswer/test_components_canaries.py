"""Known answers of the head/MLP decomposition on the canary CLIPs.

zoo:clip-biased learned "concept words" for the dotted background; its association d (dotted vs plain
images, concept vs neutral words) is carried by one head of the last block. Its image tower has 3
blocks x 2 heads, so the test against random heads can reach at best p = 1 / C(6, k) (1/6 for k = 1,
1/15 for k = 2): the issue's "p < 0.01" is not reachable on this model, and the test asserts the
strongest thing that is: the chosen heads beat every random set of the same size. On zoo:clip-control
no ablation is significant after Holm's correction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audit.components.ablate import association_finding, component_effects, random_head_test
from audit.components.decompose import decompose_batches
from audit.models import load_model
from audit.zoo.world import DEFAULT_SPEC as W
from audit.zoo.world import sample_batch


def _audit(name: str):
    adapter = load_model(f"zoo:{name}")
    batch = sample_batch(720, split="test", rng=np.random.default_rng(7))
    pp = adapter.preprocess
    x = torch.tensor(batch.images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(pp.mean).view(1, 3, 1, 1)) / torch.tensor(pp.std).view(1, 3, 1, 1)
    d = decompose_batches(adapter, x.split(120), layers=len(adapter.vision_blocks()))

    def texts(words) -> np.ndarray:
        with torch.no_grad():
            e = adapter.encode_text(adapter.tokenize([f"a photo of something {w}" for w in words])).float()
        return torch.nn.functional.normalize(e, dim=-1).numpy()

    groups = np.array([W.groups[i] for i in batch.groups])
    other = next(g for g in W.groups if g != W.concept_group)
    f = association_finding("background association", groups, W.concept_group, other, texts(W.concept_words),
                            texts(W.neutral_words))
    C, R = d.contributions.numpy(), d.rest.numpy()
    eff = component_effects(C, R, f, names=d.names, layers=d.layers, heads=d.heads, n_boot=200, seed=0)
    abl = random_head_test(C, R, f, names=d.names, heads=d.heads, ks=(1, 2, 4), n_random=200, seed=0)
    return d, eff, abl


@pytest.fixture(scope="module")
def biased():
    return _audit("clip-biased")


def test_biased_association_is_carried_by_one_last_block_head(biased) -> None:
    d, eff, _ = biased
    top = eff.iloc[0]
    n_blocks = max(d.layers) + 1
    assert top["layer"] == n_blocks - 1 and top["head"] >= 0
    assert top["before"] >= 0.8 and top["ci_low"] > 0
    assert top["ci_low"] > 10 * eff.iloc[1]["ci_high"]  # far ahead of every other component


def test_biased_top_heads_beat_every_random_set_for_small_k(biased) -> None:
    _, _, abl = biased
    n_heads = 6
    for k in (1, 2):
        row = abl[abl["k"] == k].iloc[0]
        assert row["exact"] and row["n_random"] == math.comb(n_heads, k)
        assert row["random_p"] == pytest.approx(1 / math.comb(n_heads, k))  # the smallest p possible here
        assert row["reduction"] > row["random_mean"] + 0.3


def test_control_has_no_significant_ablation() -> None:
    _, _, abl = _audit("clip-control")
    assert len(abl) == 3
    assert not abl["significant"].any() and (abl["p_adj"] >= 0.05).all()
