"""The :class:`Explanation` result type.

An explanation keeps the *raw* (unnormalised) maps on the model's patch grid;
normalisation is for display only (per-image min-max hides differences between
groups). Maps at input resolution are derived on demand with :meth:`Explanation.upsampled`.
"""

from __future__ import annotations

import base64
import contextvars
import html
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from audit.explain.quality import draw_problem, map_problems
from audit.models.base import TokenLayout

UpsampleMode = Literal["bilinear", "nearest", "bicubic"]

#: Extra outputs that a method may hand to :func:`audit.explain.explain` besides its grid map
#: (pixel-level attributions, CLIP text relevance). Set by ``explain`` for the duration of a call.
_EXTRAS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "audit_explain_extras", default=None
)


@contextmanager
def collect_extras() -> Iterator[dict[str, Any]]:
    """Collect what methods pass to :func:`record_extra` inside the block (used by ``explain``)."""
    sink: dict[str, Any] = {}
    token = _EXTRAS.set(sink)
    try:
        yield sink
    finally:
        _EXTRAS.reset(token)


def record_extra(name: str, value: Any) -> None:
    """Hand an extra output (e.g. ``"pixel_maps"`` (B, H, W)) to the surrounding ``explain`` call.

    A no-op when the method is called directly (outside :func:`audit.explain.explain`), so
    methods keep the plain registry signature ``fn(adapter, images, *, target, **params) -> (B, gh, gw)``.
    """
    sink = _EXTRAS.get()
    if sink is not None:
        sink[name] = value


@dataclass
class Explanation:
    """Maps for one batch, one method and one target.

    Attributes:
        method: registered method name (``audit.registry.METHODS``).
        target: description of what was explained (``Target.describe()``), ``{"kind": "none"}``
            for target-free methods such as rollout.
        params: the method parameters actually used (after defaults), plus ``seed``.
        fingerprint: the adapter's model fingerprint.
        grid_maps: ``(B, gh, gw)`` float32 raw maps on the patch grid.
        input_size: ``(H, W)`` of the images that were explained.
        layout: the :class:`TokenLayout` for ``input_size``.
        timing_s: wall time of the method call in seconds.
        pixel_maps: ``(B, H, W)`` float32 pixel-level attribution (channel-summed) for pixel methods.
        text_relevance: for CLIP prompt targets explained with GAE: one ``(tokens, scores)`` per image,
            scores over the prompt's word tokens summing to 1.
        images: ``(B, 3, H, W)`` images in [0, 1] for display (optional).
        attention: ``(B, L, heads, gh, gw)`` float16 per-layer attention of the pooled row, only when
            requested (``keep_attention=True``).
        artifacts: per image, the high-norm artefact tokens (:class:`audit.explain.artifacts.ImageArtifacts`:
            grid ``tokens``, ``norm_ratio``, ``attention_share``); filled by ``explain`` for attention
            methods when asked (``artifacts=True``), else None.
    """

    method: str
    target: dict[str, Any]
    params: dict[str, Any]
    fingerprint: str
    grid_maps: torch.Tensor  # (B, gh, gw) float32
    input_size: tuple[int, int]
    layout: TokenLayout
    timing_s: float
    pixel_maps: torch.Tensor | None = None  # (B, H, W)
    text_relevance: list[tuple[list[str], list[float]]] | None = None
    images: torch.Tensor | None = field(default=None, repr=False)  # (B, 3, H, W) in [0, 1]
    attention: torch.Tensor | None = field(default=None, repr=False)  # (B, L, heads, gh, gw)
    artifacts: list[Any] | None = field(default=None, repr=False)  # list[ImageArtifacts], one per image
    #: per image, ``""`` or why the map is not usable (NaN/Inf, constant); set from ``grid_maps``
    problems: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        gh, gw = self.layout.grid
        if self.grid_maps.dim() != 3 or tuple(self.grid_maps.shape[1:]) != (gh, gw):
            raise ValueError(
                f"grid_maps must be (B, {gh}, {gw}) for layout grid {self.layout.grid}, "
                f"got {tuple(self.grid_maps.shape)}"
            )
        self.grid_maps = self.grid_maps.detach().float().cpu()
        if self.pixel_maps is not None:
            self.pixel_maps = self.pixel_maps.detach().float().cpu()
        self.problems = map_problems(self.grid_maps)

    # -- validity ----------------------------------------------------------------------
    @property
    def valid(self) -> torch.Tensor:
        """``(B,)`` bool: False where the map is NaN/Inf or constant (see :attr:`problems`)."""
        return torch.tensor([not p for p in self.problems], dtype=torch.bool)

    # -- derived views ---------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.grid_maps.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        return self.layout.grid

    def upsampled(self, mode: UpsampleMode = "bilinear") -> torch.Tensor:
        """Raw grid maps resized to the input resolution: ``(B, H, W)`` float32.

        ``align_corners=False``: each patch value sits at its patch centre.
        """
        x = self.grid_maps[:, None]  # (B, 1, gh, gw)
        kw: dict[str, Any] = {} if mode == "nearest" else {"align_corners": False}
        return F.interpolate(x, size=tuple(self.input_size), mode=mode, **kw)[:, 0]

    def normalized(self, *, at_input: bool = False) -> torch.Tensor:
        """Per-image min-max normalised maps in [0, 1], for display only (never for statistics).

        Returns ``(B, gh, gw)``, or ``(B, H, W)`` with ``at_input=True``. Constant maps become 0.
        """
        m = self.upsampled() if at_input else self.grid_maps
        flat = m.flatten(1)
        lo = flat.min(dim=1, keepdim=True).values
        hi = flat.max(dim=1, keepdim=True).values
        span = (hi - lo).clamp_min(torch.finfo(m.dtype).tiny)
        return ((flat - lo) / span).view_as(m)

    def to_float16_grid(self) -> torch.Tensor:
        """Storage form: raw ``(B, gh, gw)`` float16 (as written under ``maps/`` in a run)."""
        return self.grid_maps.to(torch.float16)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly metadata (no tensors)."""
        return {
            "method": self.method,
            "target": self.target,
            "params": self.params,
            "fingerprint": self.fingerprint,
            "batch_size": self.batch_size,
            "grid": list(self.grid),
            "input_size": list(self.input_size),
            "layout": self.layout.to_dict(),
            "timing_s": self.timing_s,
            "problems": {i: p for i, p in enumerate(self.problems) if p},
            "artifacts": None if self.artifacts is None else {
                i: {"tokens": [list(t) for t in a.tokens], "attention_share": a.attention_share}
                for i, a in enumerate(self.artifacts) if a.tokens},
        }

    # -- notebook display ------------------------------------------------------------------
    def figure(self, *, max_images: int = 8, alpha: float = 0.5, cmap: str = "viridis"):
        """A matplotlib :class:`~matplotlib.figure.Figure` with one overlay per image (OO API only).

        ``cmap`` defaults to the one colour map of every drawing surface (``audit.viz.maps.MAP_CMAP``;
        written out here because explain/ sits below viz/ and must not import it)."""
        from matplotlib.figure import Figure

        n = min(self.batch_size, max_images)
        fig = Figure(figsize=(2.0 * n, 2.3), dpi=80)
        axes = fig.subplots(1, n, squeeze=False)[0]
        shown = self.normalized(at_input=True)[:n].numpy()
        for i, ax in enumerate(axes):
            if self.problems[i]:  # never draw a NaN or constant map as if it were an explanation
                img = None if self.images is None else self.images[i].permute(1, 2, 0).clamp(0, 1).float().numpy()
                draw_problem(ax, self.problems[i], image=img)
                ax.set_axis_off()
                ax.set_title(f"{i}: invalid", fontsize=7)
                continue
            if self.images is not None:
                ax.imshow(self.images[i].permute(1, 2, 0).clamp(0, 1).float().numpy())
                ax.imshow(shown[i], cmap=cmap, alpha=alpha)
            else:
                ax.imshow(shown[i], cmap=cmap)
            ax.set_axis_off()
            ax.set_title(f"{i}: max {self.grid_maps[i].max().item():.3g}", fontsize=7)
        fig.suptitle(f"{self.method} — {self.target.get('kind', '')}", fontsize=8)
        return fig

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.figure().savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()

    def _repr_html_(self) -> str:
        png = base64.b64encode(self._repr_png_()).decode("ascii")
        meta = html.escape(
            f"{self.method} | target {self.target} | grid {self.grid} | input {tuple(self.input_size)} | "
            f"{self.timing_s:.3f} s | {self.fingerprint}"
        )
        return f'<div><img src="data:image/png;base64,{png}"/><br/><code>{meta}</code></div>'
