"""TextSpan's greedy text selection names the directions a component writes along."""

from __future__ import annotations

import numpy as np
import pytest

from audit.components.roles import component_roles, roles_text, textspan
from audit.errors import UsageError


def test_textspan_picks_the_planted_directions_in_order_of_variance() -> None:
    rng = np.random.default_rng(0)
    texts = rng.normal(size=(30, 16))
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    contrib = 3.0 * rng.normal(size=(500, 1)) * texts[7] + 1.0 * rng.normal(size=(500, 1)) * texts[21]
    contrib += 0.05 * rng.normal(size=(500, 16))
    picked = textspan(contrib, texts, n_texts=3)
    assert [j for j, _ in picked[:2]] == [7, 21]
    shares = [s for _, s in picked]
    assert shares[0] > 0.8 and sum(shares) <= 1.0 + 1e-9 and shares[0] > shares[1] > shares[2]


def test_roles_table_and_text() -> None:
    rng = np.random.default_rng(1)
    texts = np.eye(4)
    C = np.zeros((100, 2, 4))
    C[:, 0, 2] = rng.normal(size=100)
    C[:, 1, 0] = rng.normal(size=100)
    roles = component_roles(C, ["L1.H0", "L1.H1"], [0, 1], texts, ["a", "b", "stripes", "d"], n_texts=1)
    assert roles_text(roles, "L1.H0") == "stripes" and roles_text(roles, "L1.H1") == "a"
    with pytest.raises(UsageError, match="must be"):
        textspan(np.zeros((3, 4)), np.zeros((2, 5)))
