"""Model-randomisation sanity check (Adebayo et al., NeurIPS 2018).

A deep copy of the model has its vision blocks re-initialised cumulatively from the top (last
block first). After each step the method's maps are recomputed and compared with the original
maps by the Spearman rank correlation of their absolute values, per image. A method whose maps
stay similar after every block is randomised does not depend on what the model learned and is
flagged. The original adapter's model is never modified.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import nn

from audit.explain.targets import Target, default_target

if TYPE_CHECKING:
    from audit.models.base import Adapter

SANITY_COLUMNS = ["method", "step", "randomized_blocks", "spearman", "ci_low", "ci_high", "n", "flagged"]


def reinit_module(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every parameter of ``module`` (in place, deterministic under ``generator``).

    Linear/conv weights: PyTorch's default (kaiming-uniform, a=√5) scale drawn from ``generator``;
    biases: uniform(±1/√fan_in); norm layers: weight 1, bias 0; any other parameter (e.g.
    LayerScale gamma, position embeddings): normal(0, 0.02).
    """
    for sub in module.modules():
        for name, p in sub.named_parameters(recurse=False):
            with torch.no_grad():
                if (
                    isinstance(sub, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d))
                    or "norm" in type(sub).__name__.lower()
                ):
                    p.fill_(1.0 if name == "weight" else 0.0)
                elif p.dim() >= 2:
                    fan_in = p[0].numel()
                    bound = 1.0 / np.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
                    p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
                elif name == "bias" and isinstance(getattr(sub, "weight", None), torch.Tensor):
                    fan_in = sub.weight[0].numel()
                    bound = 1.0 / np.sqrt(fan_in)
                    p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
                else:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def _spearman_abs(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image Spearman correlation of ``|a|`` and ``|b|`` (each (B, gh, gw)); NaN if constant."""
    out = np.full(a.shape[0], np.nan)
    x = a.abs().flatten(1).double().numpy()
    y = b.abs().flatten(1).double().numpy()
    for i in range(a.shape[0]):
        if np.ptp(x[i]) == 0 or np.ptp(y[i]) == 0:
            continue
        out[i] = spearmanr(x[i], y[i]).statistic
    return out


def _boot_ci(v: np.ndarray, *, n_boot: int, seed: int) -> tuple[float, float]:
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = rng.choice(v, size=(n_boot, len(v)), replace=True).mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def model_randomization(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    method: str,
    target: Target | None = None,
    params: dict[str, Any] | None = None,
    threshold: float = 0.5,
    seed: int = 0,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """Cascading model-randomisation check for one method.

    Args:
        adapter: the model (never modified: a deep copy is randomised).
        images: ``(B, 3, H, W)`` normalised images.
        method: a registered method name.
        target: the target (default: predicted class of the *original* model, kept fixed).
        params: method parameters.
        threshold: flag when the mean correlation after all blocks are randomised is above this.
        seed: seeds the re-initialisation and the methods.
        n_boot: bootstrap resamples (over images) for the 95% interval of the mean correlation.

    Returns:
        DataFrame with columns ``method, step, randomized_blocks, spearman, ci_low, ci_high, n,
        flagged``: step 0 is the original model (correlation 1); step k has the top k blocks
        randomised (``randomized_blocks`` lists their indices, e.g. ``"11,10"``); ``spearman`` is the
        mean over images; ``flagged`` is the method's verdict, repeated on every row.
    """
    from audit.explain.api import explain

    params = dict(params or {})
    target = default_target(adapter, target)
    if target is not None:
        target = target.resolve(adapter, images)
    original = explain(adapter, images, method=method, target=target, seed=seed, **params).grid_maps

    work = copy.deepcopy(adapter)
    work.__dict__.pop("_fingerprint", None)
    blocks = work.vision_blocks()
    gen = torch.Generator().manual_seed(int(seed))
    rows = [
        {
            "method": method,
            "step": 0,
            "randomized_blocks": "",
            "spearman": 1.0,
            "ci_low": 1.0,
            "ci_high": 1.0,
            "n": int(images.shape[0]),
        }
    ]
    done: list[int] = []
    for step, bi in enumerate(reversed(range(len(blocks))), start=1):
        reinit_module(blocks[bi], gen)
        done.append(bi)
        work.__dict__.pop("_fingerprint", None)
        new = explain(work, images, method=method, target=target, seed=seed, **params).grid_maps
        rho = _spearman_abs(original, new)
        lo, hi = _boot_ci(rho, n_boot=n_boot, seed=seed + step)
        rows.append(
            {
                "method": method,
                "step": step,
                "randomized_blocks": ",".join(map(str, done)),
                "spearman": float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan"),
                "ci_low": lo,
                "ci_high": hi,
                "n": int(np.isfinite(rho).sum()),
            }
        )
    final = rows[-1]["spearman"]
    flagged = bool(np.isfinite(final) and final > threshold)
    df = pd.DataFrame(rows)
    df["flagged"] = flagged
    return df[SANITY_COLUMNS]
