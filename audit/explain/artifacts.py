"""High-norm artefact tokens: can the attention map be trusted?

Darcet et al. ("Vision Transformers Need Registers", ICLR 2024) find that large ViTs repurpose a
few low-information patch tokens as global scratch space: their output norm is far above the rest
(a bimodal norm distribution, outliers ~10x the median) and the pooled token's attention piles onto
them, so attention maps / rollout / GAE show bright spots that say nothing about the image content.

Detection rule (per image, over the *patch* tokens only; CLS, distillation and register tokens are
never candidates): a patch token at the probed layer is an artefact when **both**

* ``norm > median + k * MAD`` (MAD scaled to the normal sigma, ``scipy.stats.median_abs_deviation
  (scale="normal")``; default :data:`DEFAULT_K` = 6: a robust z-score of 6, far in the tail of a
  unimodal distribution), and
* ``norm > m * median`` (default :data:`DEFAULT_M` = 4: a scale-free floor well below the ~10x the
  paper reports, which keeps near-constant norm distributions (tiny MAD) from flagging
  ordinary tokens).

Both tests are ratios to the image's own median, so the rule does not depend on the model's scale.
Norms are those of the block output (default: the last block, ``adapter.vision_blocks()[-1]``,
read with one forward hook); the attention share is the pooled row of the last ``attn_layers``
blocks' attention (mean over heads; for mean-pooled models the mean patch row,
``TokenLayout.pooled_row``) summed over the artefact tokens, captured in the same forward
(:func:`audit.capture.capture`). For register models the share the register tokens take is reported
too. Models without attention maps (``adapter.attention_maps`` False) get a "not applicable" report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from audit.models.base import Adapter, TokenLayout

__all__ = [
    "DEFAULT_K",
    "DEFAULT_M",
    "ArtifactReport",
    "ImageArtifacts",
    "artifact_tables",
    "caveat_text",
    "detect",
    "find_artifacts",
    "summarize",
    "summary_caveat",
    "verdict_caveat",
]

#: robust z-score threshold (norm above median + K * normal-scaled MAD)
DEFAULT_K = 6.0
#: ratio floor (norm above M * median)
DEFAULT_M = 4.0


@dataclass
class ImageArtifacts:
    """Artefact tokens of one image.

    Attributes:
        tokens: ``(row, col)`` on the patch grid of each artefact token (by decreasing norm).
        norm_ratio: each token's norm divided by the image's median patch norm.
        attention_share: share of the pooled token's attention (mean over heads and the probed
            attention layers) that all artefact tokens together receive, in [0, 1].
        token_share: the artefact tokens' share of all tokens (what uniform attention would give).
        register_share: share of the pooled token's attention on register tokens (None: no registers).
        token_attention: per artefact token, its own attention share (same order as ``tokens``).
    """

    tokens: list[tuple[int, int]]
    norm_ratio: list[float]
    attention_share: float
    token_share: float
    register_share: float | None = None
    token_attention: list[float] = field(default_factory=list)

    @property
    def affected(self) -> bool:
        return bool(self.tokens)


@dataclass
class ArtifactReport:
    """Per-image artefact tokens for one batch (or "not applicable" with the reason)."""

    applicable: bool
    images: list[ImageArtifacts]
    reason: str = ""
    layer: int = -1
    attn_layers: int = 1
    k: float = DEFAULT_K
    m: float = DEFAULT_M

    def summary(self) -> dict[str, Any]:
        return summarize(self)

    def to_dict(self) -> dict[str, Any]:
        return {"applicable": self.applicable, "reason": self.reason, "layer": self.layer,
                "attn_layers": self.attn_layers, "k": self.k, "m": self.m,
                "images": [asdict(i) for i in self.images]}


def detect(norms: torch.Tensor, *, k: float = DEFAULT_K, m: float = DEFAULT_M) -> torch.Tensor:
    """``(B, P)`` patch-token norms -> ``(B, P)`` bool artefact mask (the rule in the module doc)."""
    from scipy.stats import median_abs_deviation

    if k < 0 or m < 1:
        raise ValueError(f"artefact rule needs k >= 0 and m >= 1; got k={k}, m={m}")
    x = norms.detach().double().cpu().numpy()
    med = np.median(x, axis=1, keepdims=True)
    mad = median_abs_deviation(x, axis=1, scale="normal")[:, None]
    return torch.from_numpy((x > med + k * mad) & (x > m * med))


def _prefix_index(layout: TokenLayout, kind: str) -> list[int]:
    base = layout.n_patches if layout.prefix_after_patches else 0
    return [base + i for i, kd in enumerate(layout.prefix_kinds) if kd == kind]


def find_artifacts(
    adapter: Adapter,
    images: torch.Tensor,
    *,
    layer: int = -1,
    attn_layers: int = 1,
    k: float = DEFAULT_K,
    m: float = DEFAULT_M,
) -> ArtifactReport:
    """Artefact tokens of each image in ``images`` (``(B, 3, H, W)`` normalised).

    One forward pass under :func:`audit.capture.capture` with one forward hook on
    ``adapter.vision_blocks()[layer]``; no gradients.

    Raises:
        ValueError: ``layer`` / ``attn_layers`` outside the model's blocks.
    """
    if not getattr(adapter, "attention_maps", True):
        why = getattr(adapter, "attention_refusal", "") or "the model has no attention maps"
        return ArtifactReport(applicable=False, images=[], reason=f"not applicable: {why}",
                              layer=layer, attn_layers=attn_layers, k=k, m=m)
    from audit.capture import capture

    blocks = adapter.vision_blocks()
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"artifacts layer {layer} outside the {len(blocks)} vision blocks of {adapter.spec}")
    if not 1 <= attn_layers <= len(blocks):
        raise ValueError(f"attn_layers must be in 1..{len(blocks)}; got {attn_layers}")
    layout = adapter.token_layout((int(images.shape[-2]), int(images.shape[-1])))
    seen: list[torch.Tensor] = []

    def _hook(_mod: Any, _inp: Any, out: Any) -> None:
        seen.append((out[0] if isinstance(out, (tuple, list)) else out).detach())

    handle = blocks[layer].register_forward_hook(_hook)
    try:
        with torch.no_grad(), capture(adapter, tower="vision") as cap:
            adapter.encode_image(images.to(adapter.device))
    finally:
        handle.remove()
    hidden = torch.cat(seen, dim=0).float()  # (B, N, C)
    if hidden.dim() != 3 or hidden.shape[1] != layout.n_tokens:
        raise ValueError(
            f"{adapter.spec}: block {layer} output has shape {tuple(hidden.shape)}, expected "
            f"(B, {layout.n_tokens}, C) for the token layout {layout.to_dict()}"
        )
    norms = layout.patch_tokens(hidden.norm(dim=-1), dim=-1).cpu()  # (B, P)
    mask = detect(norms, k=k, m=m)
    att = torch.stack([a.float().mean(dim=1) for a in cap.attentions[-attn_layers:]]).mean(0)  # (B, N, N)
    row = layout.pooled_row(att).cpu()  # (B, N)
    patch_att = layout.patch_tokens(row, dim=-1)  # (B, P)
    regs = _prefix_index(layout, "reg")
    gw = layout.grid[1]
    med = norms.median(dim=1).values
    out: list[ImageArtifacts] = []
    for b in range(norms.shape[0]):
        idx = torch.nonzero(mask[b]).flatten().tolist()
        idx.sort(key=lambda p: -float(norms[b, p]))
        out.append(ImageArtifacts(
            tokens=[(p // gw, p % gw) for p in idx],
            norm_ratio=[float(norms[b, p] / med[b]) for p in idx],
            attention_share=float(patch_att[b, idx].sum()) if idx else 0.0,
            token_share=len(idx) / layout.n_tokens,
            register_share=float(row[b, regs].sum()) if regs else None,
            token_attention=[float(patch_att[b, p]) for p in idx],
        ))
    return ArtifactReport(applicable=True, images=out, layer=layer, attn_layers=attn_layers, k=k, m=m)


def summarize(report: ArtifactReport | list[ImageArtifacts], *, alpha: float = 0.05) -> dict[str, Any]:
    """Run-level summary: share of images affected (n, Wilson interval), and on the affected images
    the mean attention share of artefact tokens vs their share of tokens (uniform chance), with a
    one-sided Wilcoxon signed-rank test of attention share > token share."""
    from scipy.stats import wilcoxon

    from audit.stats.resampling import wilson_interval

    if isinstance(report, ArtifactReport):
        if not report.applicable:
            return {"applicable": False, "reason": report.reason, "n": 0}
        imgs = report.images
    else:
        imgs = report
    n = len(imgs)
    hit = [i for i in imgs if i.affected]
    lo, hi = wilson_interval(len(hit), n, alpha=alpha)
    out: dict[str, Any] = {
        "applicable": True, "n": n, "n_affected": len(hit),
        "share_affected": len(hit) / n if n else float("nan"),
        "share_affected_ci": [float(lo), float(hi)],
        "mean_tokens": float(np.mean([len(i.tokens) for i in hit])) if hit else 0.0,
        "mean_attention_share": float(np.mean([i.attention_share for i in hit])) if hit else float("nan"),
        "mean_token_share": float(np.mean([i.token_share for i in hit])) if hit else float("nan"),
        "p_attention_above_uniform": float("nan"),
    }
    regs = [i.register_share for i in imgs if i.register_share is not None]
    if regs:
        out["mean_register_share"] = float(np.mean(regs))
    if len(hit) >= 2:
        d = np.array([i.attention_share - i.token_share for i in hit])
        if np.any(d != 0):
            out["p_attention_above_uniform"] = float(wilcoxon(d, alternative="greater").pvalue)
    return out


def caveat_text(img: ImageArtifacts, *, pooled: str = "CLS") -> str:
    """Verdict caveat for one affected image ("" when unaffected)."""
    if not img.affected:
        return ""
    n = len(img.tokens)
    return (f"attention map dominated by {n} high-norm artefact token{'s' if n != 1 else ''} "
            f"({img.attention_share:.0%} of the {pooled} attention); read with care")


def artifact_tables(adapter: Adapter, images: torch.Tensor, row_ids: Any, *, batch_size: int = 16,
                    **rule: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The run's tables for ``images`` (``(M, 3, H, W)``) with ``row_ids`` (length M).

    Returns ``(artifact_tokens, artifact_images, summary)``: one row per artefact token
    (``row_id, token_row, token_col, norm_ratio, attention_share``), one row per image (``row_id,
    affected, n_tokens, attention_share, token_share, register_share, caveat``) and
    :func:`summarize` of all images (``{"applicable": False, ...}`` on models without attention maps).
    """
    import pandas as pd

    ids = [int(r) for r in row_ids]
    if len(ids) != int(images.shape[0]):
        raise ValueError(f"artifact_tables: {len(ids)} row ids for {int(images.shape[0])} images")
    tok_cols = ["row_id", "token_row", "token_col", "norm_ratio", "attention_share"]
    img_cols = ["row_id", "affected", "n_tokens", "attention_share", "token_share", "register_share", "caveat"]
    found: list[ImageArtifacts] = []
    for s in range(0, len(ids), max(1, batch_size)):
        rep = find_artifacts(adapter, images[s : s + batch_size], **rule)
        if not rep.applicable:
            return pd.DataFrame(columns=tok_cols), pd.DataFrame(columns=img_cols), summarize(rep)
        found += rep.images
    pooled = "CLS" if adapter.token_layout(tuple(images.shape[-2:])).pooled is not None else "pooled (mean patch)"
    toks = [(r, t[0], t[1], q, a) for r, img in zip(ids, found)
            for t, q, a in zip(img.tokens, img.norm_ratio, img.token_attention)]
    per = [(r, img.affected, len(img.tokens), img.attention_share, img.token_share,
            np.nan if img.register_share is None else img.register_share, caveat_text(img, pooled=pooled))
           for r, img in zip(ids, found)]
    return pd.DataFrame(toks, columns=tok_cols), pd.DataFrame(per, columns=img_cols), summarize(found)


def summary_caveat(summary: dict[str, Any]) -> str:
    """One caveat line for run.json limitations / the report ("" when nothing was found)."""
    if not summary.get("applicable") or not summary.get("n_affected"):
        return ""
    lo, hi = summary["share_affected_ci"]
    return (
        f"High-norm artefact tokens (Darcet et al. 2024) in {summary['n_affected']} of {summary['n']} explained "
        f"images ({summary['share_affected']:.0%}, 95% Wilson CI {lo:.0%}-{hi:.0%}); on those, the artefact tokens "
        f"take {summary['mean_attention_share']:.0%} of the pooled token's attention against "
        f"{summary['mean_token_share']:.1%} under uniform attention. Rollout/GAE/attention maps of these images "
        "show the artefacts, not the image content: read them with care (table artifact_images)."
    )


def verdict_caveat(summary: dict[str, Any]) -> str:
    """What an attention method's faithfulness verdict adds when some explained images are affected."""
    if not summary.get("applicable") or not summary.get("n_affected"):
        return ""
    return (f"on {summary['n_affected']} of {summary['n']} images the attention map is dominated by high-norm "
            f"artefact tokens ({summary['mean_attention_share']:.0%} of the pooled token's attention on average; "
            "table artifact_images); read those maps with care")
