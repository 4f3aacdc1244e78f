"""Which findings the ``components`` stage decomposes, each as a function of the model's outputs.

A *target* is one finding of the run (a row the ledger has, or will have, for the tables written so
far) re-computed from the decomposed outputs, so that mean-ablating a head changes it:

============================  ===============================================  ==================
reference (``components.findings``)  the finding                              runs
============================  ===============================================  ==================
``association:<test>``        image-EAT effect size d of a ``clip.association``  CLIP
                              test (a bare test name is read the same)
``harmful_label:<attribute>`` harmful-label rate gap, worst vs best group      CLIP with a label set
``<metric>:<attribute>``      an overall group metric's gap (``accuracy``,     labelled runs
                              ``error_rate``)
``<metric>:<class>:<attribute>``  a per-class gap (``tpr``, ``fnr``, ``fpr``,  labelled runs
                              ``precision``, ``selection_rate``)
``retrieval:<query>:<attribute>``  retrieval skew@k of the over-represented      CLIP with queries
                              group (its log share among the top k against
                              the ``clip.skew_target``)
============================  ===============================================  ==================

The two groups compared are the ledger row's worst and best groups (for a one-vs-rest row, the group
and all other images). With ``components.findings`` empty the stage takes every association test
and then the significant outcome findings above, in ledger order, up to ``components.max_findings``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from audit.components.ablate import FindingSpec, association_finding, harmful_gap_finding
from audit.errors import ConfigError

__all__ = ["OVERALL_METRICS", "PER_CLASS_METRICS", "Target", "check_references", "parse_reference", "resolve_targets"]

#: per-class metrics the stage can recompute from hard predictions: (rows counted, rows hit)
PER_CLASS_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]] = {
    "tpr": lambda y, p, c: (y == c, p == c),
    "fnr": lambda y, p, c: (y == c, p != c),
    "fpr": lambda y, p, c: (y != c, p == c),
    "precision": lambda y, p, c: (p == c, y == c),
    "selection_rate": lambda y, p, c: (np.ones_like(y, dtype=bool), p == c),
}
OVERALL_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "accuracy": lambda y, p: (y >= 0, p == y),
    "error_rate": lambda y, p: (y >= 0, p != y),
}


@dataclass(frozen=True)
class Target:
    """One finding to decompose.

    Attributes:
        ref: its reference (the ``components.findings`` syntax), the key of tables ``components`` and
            ``ablations`` (column ``finding``).
        spec: the finding as a function of the outputs.
        kind: ``association``, ``harmful_label``, ``performance`` or ``retrieval_skew``.
        metric: what the number is (``effect_size``, ``harmful_label_rate``, ``tpr``, ``skew`` ...).
        attribute: the group column.
        groups: ``(group_a, group_b)`` compared (``group_b`` is ``"rest"`` for a one-vs-rest finding).
        label: a sentence head for the reader, e.g. "recall (TPR) of class 'triangle' by background
            (dotted vs plain)".
    """

    ref: str
    spec: FindingSpec
    kind: str
    metric: str
    attribute: str
    groups: tuple[str, str]
    label: str


def _pair_mask(values: np.ndarray, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    va = values == a
    vb = ~va if b == "rest" else values == b
    return va, vb


def _rate_gap_spec(name: str, values: np.ndarray, a: str, b: str,
                   counted_hit: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> FindingSpec:
    """``rate(group a) - rate(group b)`` where ``counted_hit(out, rows)`` gives, per row, whether it is
    counted and whether it is a hit (e.g. label == c and prediction == c for a recall)."""
    va, vb = _pair_mask(values, a, b)

    def evaluate(out: np.ndarray, rows: np.ndarray) -> float:
        counted, hit = counted_hit(out, rows)
        ia, ib = counted & va[rows], counted & vb[rows]
        if not ia.any() or not ib.any():
            return float("nan")
        return float(hit[ia].mean() - hit[ib].mean())

    return FindingSpec(name=name, kind="rate_gap", evaluate=evaluate)


def _retrieval_spec(name: str, values: np.ndarray, group: str, query: np.ndarray, k: int, n_total: int,
                    target: str) -> FindingSpec:
    """log(share of ``group`` among the top k' images / its target share), k' = k scaled to the rows."""
    q = np.asarray(query, dtype=np.float64)
    q = q / max(np.linalg.norm(q), 1e-12)
    n_groups = len(set(values.tolist()))

    def evaluate(out: np.ndarray, rows: np.ndarray) -> float:
        o = out / np.linalg.norm(out, axis=1, keepdims=True).clip(min=1e-12)
        kk = max(1, round(k * len(rows) / n_total))
        top = np.argsort(-(o @ q), kind="stable")[:kk]
        share = float((values[rows][top] == group).mean())
        tgt = float((values[rows] == group).mean()) if target == "dataset" else 1.0 / n_groups
        return float(math.log(max(share, 1.0 / kk) / max(tgt, 1e-12)))

    return FindingSpec(name=name, kind="retrieval_skew", evaluate=evaluate)


class NotInLedger(ConfigError):
    """A reference whose finding the run did not test (too few images, no such metric): noted, not decomposed."""


def _groups_of(ledger: pd.DataFrame, mask: pd.Series, ref: str) -> tuple[str, str]:
    rows = ledger[mask]
    if rows.empty:
        raise NotInLedger(f"components.findings {ref!r}: the run has no such finding (tested rows are listed by "
                          "`vision-audit findings RUN`); check the attribute, class and metric")
    r = rows.iloc[0]
    if r["status"] == "not tested" or not r["worst_group"] or not r["best_group"]:
        raise NotInLedger(f"components.findings {ref!r}: that finding was not tested ({r['text']})")
    best = str(r["best_group"])
    return str(r["worst_group"]), ("rest" if r["family"] == "one_vs_rest" else best)


_REFERENCE_HELP = ("use association:<test>, harmful_label:<attribute>, accuracy|error_rate:<attribute>, "
                   "tpr|fnr|fpr|precision|selection_rate:<class>:<attribute> or retrieval:<query>:<attribute>")


def parse_reference(ref: str, association_tests: Sequence[str] = ()) -> tuple[str, tuple[str, ...]]:
    """``ref`` -> ``(kind, parts)``: ``("association", (test,))``, ``("harmful_label", (attribute,))``,
    ``("retrieval", (query, attribute))``, ``("metric", (metric, attribute))`` or
    ``("metric", (metric, class, attribute))``. A bare association test name is ``association:<name>``.

    Raises:
        ConfigError: ``ref`` is not a finding reference (the message lists the forms).
    """
    head, _, rest = str(ref).partition(":")
    if not rest and ref in association_tests:
        return "association", (str(ref),)
    if head == "association" and rest:
        return "association", (rest,)
    if head == "harmful_label" and rest and ":" not in rest:
        return "harmful_label", (rest,)
    if head == "retrieval" and ":" in rest:
        query, _, attr = rest.rpartition(":")
        if query and attr:
            return "retrieval", (query, attr)
    parts = str(ref).split(":")
    if (len(parts) == 2 and parts[0] in OVERALL_METRICS or len(parts) == 3 and parts[0] in PER_CLASS_METRICS) \
            and all(parts):
        return "metric", tuple(parts)
    raise ConfigError(f"components.findings {ref!r} is not a finding reference; {_REFERENCE_HELP}")


def check_references(config: Any, *, clip: bool, class_names: Sequence[str], group_columns: Sequence[str]) -> None:
    """Refuse, before the forward pass, a ``components.findings`` reference this run cannot decompose:
    an unknown association test, query, group column or class, or a kind the model does not have.
    (Whether the finding was *tested* is known only from the run's tables; the stage checks that.)"""
    cfg = config.components
    if not cfg.enabled:
        return
    assoc = [t.name for t in config.clip.association] if clip else []
    for ref in cfg.findings:
        kind, parts = parse_reference(ref, assoc)
        where = f"components.findings {ref!r}"
        if kind in ("association", "harmful_label", "retrieval") and not clip:
            raise ConfigError(f"{where}: {kind} findings need a CLIP model; this run's model is a classifier")
        if kind == "association" and parts[0] not in assoc:
            raise ConfigError(f"components.findings names {parts[0]!r}, which is not a clip.association test; "
                              f"known: {assoc}")
        if kind == "harmful_label" and not config.clip.label_set:
            raise ConfigError(f"{where}: harmful-label findings need clip.label_set")
        if kind == "retrieval" and parts[0] not in config.clip.queries:
            raise ConfigError(f"{where}: the query is not one of clip.queries {list(config.clip.queries)}")
        attr = parts[-1] if kind != "association" else None
        if attr is not None and attr not in group_columns:
            raise ConfigError(f"{where}: {attr!r} is not a group column of the data ({list(group_columns)})")
        if kind == "metric":
            if not class_names:
                raise ConfigError(f"{where}: group-metric findings need a labelled run with classes")
            if len(parts) == 3 and parts[1] not in class_names:
                raise ConfigError(f"{where}: class {parts[1]!r} is not one of the run's classes {list(class_names)[:12]}")


def resolve_targets(ctx: Any, *, to_logits: Callable[[np.ndarray], np.ndarray] | None,
                    text_embeddings: Callable[[Sequence[str]], np.ndarray]) -> tuple[list[Target], list[str]]:
    """The targets of this run's ``components`` stage and the notes on findings left out.

    Args:
        ctx: the pipeline context (config, run with the tables written so far, predictions, class names).
        to_logits: outputs -> class logits (the classifier head, or zero-shot over the class prompts);
            ``None`` when the run has no classes.
        text_embeddings: texts -> normalised text embeddings (CLIP runs).

    Raises:
        ConfigError: a reference that names no finding of the run, or one this model cannot recompute.
    """
    from audit.findings import findings_for_run

    cfg = ctx.config.components
    meta = ctx.predictions
    clip = getattr(ctx.adapter, "kind", None) == "clip"
    # explicit references: the same check the pipeline made before the forward pass (one place for it)
    check_references(ctx.config, clip=clip, class_names=ctx.class_names, group_columns=ctx.group_columns)
    ledger = findings_for_run(ctx.run)  # the ledger of the tables written so far
    labels = meta["label_idx"].to_numpy()
    notes: list[str] = []
    assoc = {t.name: t for t in (ctx.config.clip.association if clip else [])}

    def col(attr: str, ref: str) -> np.ndarray:
        if attr not in meta.columns or attr not in ctx.group_columns:
            raise ConfigError(f"components.findings {ref!r}: {attr!r} is not a group column of the run "
                              f"({list(ctx.group_columns)})")
        return meta[attr].astype(str).to_numpy()

    def preds(out: np.ndarray) -> np.ndarray:
        assert to_logits is not None
        return to_logits(out).argmax(axis=1)

    def build(ref: str) -> Target:
        kind, parts = parse_reference(ref, list(assoc))
        if kind == "association":
            t = assoc[parts[0]]
            a_texts, b_texts = t.texts()
            spec = association_finding(ref, col(t.attribute, ref), t.x_group, t.y_group, text_embeddings(a_texts),
                                       text_embeddings(b_texts))
            return Target(ref, spec, "association", "effect_size", t.attribute, (str(t.x_group), str(t.y_group)),
                          f"association {t.name} by {t.attribute} ({t.x_group} vs {t.y_group})")
        if kind == "harmful_label":
            attr = parts[0]
            a, b = _groups_of(ledger, (ledger["kind"] == "harmful_label") & (ledger["attribute"] == attr), ref)
            from audit.stats.sets import load_set

            labels_df = load_set(ctx.config.clip.label_set).to_frame()
            emb = text_embeddings(labels_df["label"].tolist())
            harmful = labels_df["kind"].astype(str).eq("harmful").to_numpy()
            values = col(attr, ref)
            if b == "rest":
                values = np.where(values == a, a, "rest")
            spec = harmful_gap_finding(ref, values, emb, harmful, a, b)
            return Target(ref, spec, "harmful_label", "harmful_label_rate", attr, (a, b),
                          f"harmful-label rate by {attr} ({a} vs {b})")
        if kind == "retrieval":
            query, attr = parts
            m = (ledger["kind"] == "retrieval_skew") & (ledger["attribute"] == attr) & \
                ledger["scope"].str.startswith(f"query:{query}@")
            rows = ledger[m]
            if rows.empty:
                raise NotInLedger(f"components.findings {ref!r}: no retrieval skew by {attr!r} for that query")
            r = rows.sort_values("gap", ascending=False).iloc[0]
            k = int(str(r["scope"]).rsplit("@", 1)[1])
            g = str(r["worst_group"])
            spec = _retrieval_spec(ref, col(attr, ref), g, text_embeddings([query])[0], k, len(meta),
                                   ctx.config.clip.skew_target)
            return Target(ref, spec, "retrieval_skew", "skew", attr, (g, "target"),
                          f"retrieval '{query}' top-{k} skew of {attr}={g}")
        if to_logits is None or not (labels >= 0).any():
            raise ConfigError(f"components.findings {ref!r}: group-metric findings need a labelled run with classes")
        from audit.findings.naming import metric_label

        metric, attr = parts[0], parts[-1]
        scope = "overall" if len(parts) == 2 else f"class:{parts[1]}"
        a, b = _groups_of(ledger, (ledger["kind"] == "performance") & (ledger["metric"] == metric)
                          & (ledger["scope"] == scope) & (ledger["attribute"] == attr), ref)
        if len(parts) == 2:
            fn = OVERALL_METRICS[metric]

            def counted_hit(out: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                return fn(labels[rows], preds(out))
        else:
            c, fnc = list(ctx.class_names).index(parts[1]), PER_CLASS_METRICS[metric]

            def counted_hit(out: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                return fnc(labels[rows], preds(out), c)

        return Target(ref, _rate_gap_spec(ref, col(attr, ref), a, b, counted_hit), "performance", metric, attr,
                      (a, b), f"{metric_label(metric, scope)} by {attr} ({a} vs {b})")

    if cfg.findings:
        chosen = []
        for r in cfg.findings:
            try:
                chosen.append(build(r))
            except NotInLedger as e:  # named, but this data did not allow the test: said, not decomposed
                notes.append(f"{e}; not decomposed")
        return chosen, notes
    refs = [f"association:{n}" for n in assoc]
    chosen: list[Target] = [build(r) for r in refs]
    others = ledger[ledger["significant"] & ledger["kind"].isin(["performance", "harmful_label"])]
    for r in others.to_dict("records"):
        if len(chosen) - len(refs) >= cfg.max_findings:
            break
        if r["kind"] == "harmful_label":
            ref = f"harmful_label:{r['attribute']}"
        elif r["scope"] == "overall" and r["metric"] in OVERALL_METRICS:
            ref = f"{r['metric']}:{r['attribute']}"
        elif str(r["scope"]).startswith("class:") and r["metric"] in PER_CLASS_METRICS:
            ref = f"{r['metric']}:{str(r['scope'])[6:]}:{r['attribute']}"
        else:
            notes.append(f"components: ledger finding {r['rank']} ({r['metric']}, {r['scope']}) cannot be "
                         "recomputed from hard predictions and is not decomposed")
            continue
        if ref in {t.ref for t in chosen}:
            continue
        try:
            chosen.append(build(ref))
        except ConfigError as e:
            notes.append(f"components: {e}")
    if not chosen:
        notes.append("components: the run has no association test and no significant performance or "
                     "harmful-label finding to decompose")
    return chosen, notes
