"""Section "Where a finding is carried (heads)" as the reports show it: the opening sentences and one
:class:`CarriedFinding` per decomposed finding (its ablation rows and top components from
:class:`~audit.report.schema.AuditSummary`), shared by the HTML, Markdown and PDF renderers and the
figures (:mod:`audit.report.writer`). Not part of audit.json, which holds the rows themselves
(``ablations``, ``components``, ``components_info``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from audit.findings import metric_label
from audit.report.schema import AblationRow, AuditSummary, ComponentRow, ComponentsInfo, metric_num_kind

__all__ = ["CarriedFinding", "carried_findings", "components_intro"]

OTHER_GROUPS = ("rest", "target")  # a compared "group" that means every other image
OUTPUT_NAMES = {"embedding": "image embedding", "logits": "class logits"}
ROLE_SOURCES = {
    "vocabulary": "the vocabulary texts that best explain the component's contributions (TextSpan)",
    "classes": "the classes whose logits the component moves most",
}


def _and(items: Sequence[Any]) -> str:
    xs = [str(x) for x in items]
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1] if xs else ""


def components_intro(info: ComponentsInfo | None) -> list[str]:
    """The section's opening sentences: what was done (one text for every report format)."""
    i = info or ComponentsInfo()
    out = OUTPUT_NAMES.get(i.output, "output")
    where = f" ({'block' if len(i.layers) == 1 else 'blocks'} {_and(i.layers)})" if i.layers else ""
    n = f", over {i.n_images} images" if i.n_images else ""
    draws = f"otherwise {i.n_random} random draws" if i.n_random else "otherwise random draws"
    verb = "are" if i.output == "logits" else "is"
    text = [
        (f"The model's {out} {verb} decomposed into the direct contributions of each attention head and MLP of "
        f"its last layers{where}{n}. Each component is mean-ablated (its contribution replaced by its mean over "
        "the images; later blocks are not re-run), and its effect is how much of the finding it carries "
        "(positive: ablating it moves the finding towards 0), with a 95% bootstrap interval over images."),
        ("The top-k heads are chosen on one random half of the images and ablated together on the other half, "
        f"against k heads drawn at random from the same layers (every k-set when there are few, {draws}); the "
        "p-values are Holm-corrected over every row of the tables below, all findings together. Only a "
        "significant row says where a finding lives: a row that is not significant does not show that those "
        "heads play no part."),
    ]
    roles = ROLE_SOURCES.get(i.roles_from)
    text.append("In each finding's table, before / after: the finding on the held-out half without and with the k "
                "heads ablated; reduction = |before| - |after|; random heads: the mean reduction of the random "
                "k-sets; accuracy: the model's accuracy before and after the ablation."
                + (f" Roles of the top components: {roles}." if roles else ""))
    return text


def _group_name(g: str) -> str:
    return "all other images" if g in OTHER_GROUPS else g


@dataclass
class CarriedFinding:
    """One decomposed finding as the reports show it (built by :meth:`AuditSummary.carried_findings`;
    not part of audit.json, which holds its rows in ``ablations`` and ``components``)."""

    ref: str
    label: str
    kind: str
    metric: str
    attribute: str
    #: the two compared groups as stored ("dotted", "plain"); () when the run did not record them
    groups: tuple[str, ...]
    ablations: list[AblationRow] = field(default_factory=list)
    components: list[ComponentRow] = field(default_factory=list)
    #: its place in the section: the figure is ``figures["components_<index>"]``
    index: int = 0

    @property
    def figure(self) -> str:
        return f"components_{self.index}"

    @property
    def num_kind(self) -> Literal["effect", "rate"]:
        """fmt kind of the finding's values (before, after, reduction, random heads)."""
        return metric_num_kind(self.metric)

    @property
    def effect_kind(self) -> Literal["effect", "rate", "sig"]:
        """fmt kind of the components' effects: the finding's own, or 3 significant digits when every
        effect is below 0.01 (three decimals would show them all as 0.00x)."""
        vals = [abs(v) for c in self.components for v in (c.effect, c.ci_low, c.ci_high) if v is not None]
        if vals and max(vals) < 0.01:
            return "sig"
        return self.num_kind

    @property
    def n_significant(self) -> int:
        return sum(bool(a.significant) for a in self.ablations)

    @property
    def value_text(self) -> str:
        """What ``before`` / ``after`` measure, in words."""
        a, b = (list(self.groups) + ["", ""])[:2]
        if self.metric == "effect_size":
            return f"image-EAT effect size d (X = {a}, Y = {b})" if a else "effect size d"
        if self.metric == "skew":
            return (f"retrieval skew of {a} (log of its share among the top k over its target share)" if a
                    else "retrieval skew")
        parts = self.ref.split(":")
        scope = f"class:{parts[1]}" if self.kind == "performance" and len(parts) == 3 else "overall"
        name = metric_label(self.metric, scope) if self.metric else "value"
        return f"{name} in {a} minus in {_group_name(b)}" if a else name

    @property
    def group_names(self) -> list[str]:
        """The compared groups for a reader ("rest" / "target" -> "all other images")."""
        return [_group_name(g) for g in self.groups]


def carried_findings(s: AuditSummary) -> list[CarriedFinding]:
    """The findings of section "Where a finding is carried (heads)", in the components stage's order
    (run.json), each with its ablation rows and top components; empty without those tables."""
    refs: list[str] = [f.ref for f in (s.components_info.findings if s.components_info else [])]
    refs += [r.finding for r in s.ablations] + [c.finding for c in s.components]
    info = {f.ref: f for f in (s.components_info.findings if s.components_info else [])}
    out: list[CarriedFinding] = []
    for ref in dict.fromkeys(refs):
        abl = [a for a in s.ablations if a.finding == ref]
        comp = sorted((c for c in s.components if c.finding == ref), key=lambda c: c.rank)
        if not abl and not comp:
            continue
        first = abl[0] if abl else None
        meta = info.get(ref)
        label = (first.label if first else "") or (meta.label if meta else "") or ref
        metric = (first.metric if first else "") or (meta.metric if meta else "") or \
            (comp[0].metric if comp else "")
        kind = (first.finding_kind if first else "") or (meta.kind if meta else "")
        groups = tuple(g.strip() for g in first.groups.split(" vs ", 1)) if first and first.groups else ()
        out.append(CarriedFinding(ref=ref, label=label, kind=kind, metric=metric,
                                  attribute=first.attribute if first else "", groups=groups, ablations=abl,
                                  components=comp, index=len(out)))
    return out
