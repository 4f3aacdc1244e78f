"""Known answers of the head/MLP decomposition on the canary CLIPs.

zoo:clip-biased learned "concept words" for the dotted background; its association d (dotted vs each
other background, concept vs neutral words) is written into the image embedding by the heads of the
last blocks. Its image tower has 4 blocks x 8 heads, so the default decomposition (the last half: 16
heads) lets the test against random heads reach p = 1/1001 for k >= 4 (1,000 random draws; k = 1
and 2 are enumerated exactly, at best 1/16 and 1/120). Known answer: for some k <= 4 the top heads
reduce |d| more than random heads of the same layers with p < 0.01, and the row survives Holm's
correction; on zoo:clip-control, whose concept words go with red objects on every background, no
ablation is significant after correction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from audit.components.ablate import adjust, association_finding, component_effects, random_head_test
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
    d = decompose_batches(adapter, x.split(120))  # default: the last half of the blocks

    def texts(words) -> np.ndarray:
        with torch.no_grad():
            e = adapter.encode_text(adapter.tokenize([f"a photo of something {w}" for w in words])).float()
        return torch.nn.functional.normalize(e, dim=-1).numpy()

    groups = np.array([W.groups[i] for i in batch.groups])
    C, R = d.contributions.numpy(), d.rest.numpy()
    effects, tables = {}, []
    for i, other in enumerate(g for g in W.groups if g != W.concept_group):
        f = association_finding(f"dotted vs {other}", groups, W.concept_group, other, texts(W.concept_words),
                                texts(W.neutral_words))
        effects[other] = component_effects(C, R, f, names=d.names, layers=d.layers, heads=d.heads, n_boot=100, seed=i)
        tables.append(random_head_test(C, R, f, names=d.names, heads=d.heads, ks=(1, 2, 4, 8), n_random=1000,
                                       seed=i))
    return d, effects, adjust(pd.concat(tables, ignore_index=True))


@pytest.fixture(scope="module")
def biased():
    return _audit("clip-biased")


def test_default_decomposition_covers_the_last_half(biased) -> None:
    d, _, _ = biased
    assert sorted(set(d.layers)) == [2, 3] and sum(h >= 0 for h in d.heads) == 16


def test_biased_association_beats_random_heads_for_some_k_up_to_4(biased) -> None:
    _, effects, abl = biased
    assert (effects["plain"]["before"] > 1.5).all()  # the planted association is there to localise
    small = abl[abl["k"] <= 4]
    hit = small[(small["random_p"] < 0.01) & small["significant"]]
    assert len(hit) >= 1, abl[["finding", "k", "reduction", "random_mean", "random_p", "p_adj"]]
    for r in hit.to_dict("records"):
        assert not r["exact"] and r["n_random"] == 1000
        assert r["reduction"] > 10 * max(r["random_mean"], 1e-3)  # far beyond what random heads do
        assert r["p_adj"] < 0.05
    # ablating the top 8 of 16 heads removes most of d: the association lives in those heads
    k8 = abl[abl["k"] == 8]
    assert (k8["after"].abs() < 0.5 * k8["before"].abs()).all()


def test_control_has_no_significant_ablation() -> None:
    _, _, abl = _audit("clip-control")
    assert len(abl) == 8
    assert not abl["significant"].any() and (abl["p_adj"] >= 0.05).all()
