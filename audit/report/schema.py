"""The schema of audit.json (pydantic v2): one model per table row, and :class:`AuditSummary`.

Built from a run by :func:`audit.report.summary.build_summary`; its ``schema_version`` changes
whenever a field changes meaning."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from audit.findings import metric_key
from audit.stats.rules import ALPHA, MIN_GROUP_SIZE

SUMMARY_SCHEMA_VERSION = 1
DEFAULT_MIN_GROUP_SIZE = MIN_GROUP_SIZE  # one setting for every group statistic (audit/stats/rules.py)
DEFAULT_ALPHA = ALPHA
INTERSECTION_SEP = "×"

Num = float | None


MAX_LEDGER_ROWS = 25


# --------------------------------------------------------------------------- schema
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolInfo(_Model):
    name: str = "vision-audit"
    version: str


class Provenance(_Model):
    run_id: str | None = None
    run_created: str | None = None
    run_finished: str | None = None
    model_spec: str | None = None
    model_name: str | None = None
    model_family: str | None = None
    model_kind: str = "classifier"
    checkpoint: str | None = None
    fingerprint: str | None = None
    class_names: list[str] = []
    dataset_manifest: str | None = None
    dataset_fingerprint: str | None = None
    n_rows: int | None = None
    n_used: int | None = None
    n_skipped: int = 0
    label_column: str | None = None
    group_columns: list[str] = []
    has_masks: bool = False
    device: str | None = None
    dtype: str | None = None
    backend: str | None = None
    methods: list[str] = []
    versions: dict[str, str] = {}
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE
    alpha: float = DEFAULT_ALPHA
    #: resolved preprocessing: {"values": {...}, "sources": {key: source}, "warnings": [...]}
    preprocessing: dict[str, Any] = {}
    #: the linear probe head of a frozen backbone (model.probe), in words; None for a model's own head
    probe: str | None = None
    #: deletion baseline of the faithfulness scores ("blur" / "black")
    deletion_baseline: str | None = None


class FindingRow(_Model):
    """One row of the findings ledger (:data:`audit.findings.FINDINGS_COLUMNS`)."""

    rank: int
    kind: str
    attribute: str
    metric: str
    scope: str
    family: str
    worst_group: str
    best_group: str
    worst_value: Num
    best_value: Num
    gap: Num
    ci_low: Num
    ci_high: Num
    n_worst: int | None
    n_best: int | None
    p_value: Num
    p_adj: Num
    correction: str
    significant: bool
    status: str
    effect: Num
    source: str
    text: str


class CompositionRow(_Model):
    attribute: str
    group: str
    n: int
    share: float
    n_labelled: int
    sparse: bool


class PerformanceRow(_Model):
    attribute: str
    group: str
    metric: str
    cls: str
    value: Num
    ci_low: Num
    ci_high: Num
    n: int
    n_rows: int
    small: bool
    note: str = ""

    @property
    def key(self) -> str:
        """Metric name that never collides: ``balanced_accuracy`` / ``balanced_accuracy[macro]`` / ``tpr[cat]``."""
        return metric_key(self.metric, self.cls)


class DisparityRow(_Model):
    attribute: str
    metric: str
    cls: str
    k: int
    n_excluded: int
    max_group: str
    min_group: str
    max_value: Num
    min_value: Num
    difference: Num
    diff_ci_low: Num
    diff_ci_high: Num
    ratio: Num
    ratio_ci_low: Num
    ratio_ci_high: Num
    p_value: Num
    p_holm: Num
    p_bh: Num
    significant: bool
    test: str
    note: str = ""
    family: str = "range"
    correction: str = ""

    @property
    def key(self) -> str:
        """Metric name that never collides (see :func:`audit.findings.metric_key`)."""
        return metric_key(self.metric, self.cls)


class EmbeddingGroupRow(_Model):
    attribute: str
    group: str
    n: int
    dispersion: Num
    dispersion_ci_low: Num
    dispersion_ci_high: Num
    small: bool = False


class EmbeddingDistanceRow(_Model):
    attribute: str
    group_a: str
    group_b: str
    n_a: int
    n_b: int
    cosine_distance: Num
    p_value: Num
    p_holm: Num


class LinearProbeRow(_Model):
    attribute: str
    k: int
    n: int
    balanced_accuracy: Num
    bacc_ci_low: Num
    bacc_ci_high: Num
    auc: Num
    majority_rate: Num
    null_mean: Num
    null_p95: Num
    p_value: Num


class MMDRow(_Model):
    attribute: str
    group_a: str
    group_b: str
    n_a: int
    n_b: int
    mmd2: Num
    p_value: Num
    p_holm: Num
    estimator: str


class EmbeddingStats(_Model):
    groups: list[EmbeddingGroupRow] = []
    distances: list[EmbeddingDistanceRow] = []
    linear_probe: list[LinearProbeRow] = []
    mmd: list[MMDRow] = []


class AssociationRow(_Model):
    test: str
    attribute: str
    X: str
    Y: str
    A: str
    B: str
    n_x: int
    n_y: int
    effect_size: Num
    p_value: Num
    n_perm: int
    exact: bool
    #: the words of the text sets (from the run's config) and the prompt around them
    a_words: str = ""
    b_words: str = ""
    prompt: str = ""


class HarmfulRateRow(_Model):
    attribute: str
    group: str
    n: int
    rate: Num
    ci_low: Num
    ci_high: Num
    small: bool


class HarmfulDisparityRow(_Model):
    attribute: str
    k: int
    difference: Num
    diff_ci_low: Num
    diff_ci_high: Num
    max_group: str
    min_group: str
    p_value: Num
    p_holm: Num
    significant: bool
    label_set: str


class RetrievalSkewRow(_Model):
    query: str
    attribute: str
    k: int
    group: str
    skew: Num
    max_skew: Num
    min_skew: Num
    ndkl: Num
    target: str


class ClipStats(_Model):
    association: list[AssociationRow] = []
    harmful_rates: list[HarmfulRateRow] = []
    harmful_disparities: list[HarmfulDisparityRow] = []
    retrieval_skew: list[RetrievalSkewRow] = []


class FaithfulnessRow(_Model):
    method: str
    metric: str
    value: Num
    ci_low: Num
    ci_high: Num
    n: int


class VerdictRow(_Model):
    """A method's faithfulness score against a random map (or chance), with its verdict
    (table ``faithfulness_verdicts``)."""

    method: str
    score: str
    baseline: str = ""
    perturbation: str = ""
    value: Num = None
    random_value: Num = None
    difference: Num = None
    ci_low: Num = None
    ci_high: Num = None
    n: int = 0
    p_adj: Num = None
    verdict: str
    reason: str = ""


class SanityRow(_Model):
    method: str
    step: int
    randomized_blocks: str
    spearman: Num
    ci_low: Num
    ci_high: Num
    n: int
    flagged: bool


class RegionMassRow(_Model):
    method: str
    attribute: str
    group: str
    n: int
    value: Num
    ci_low: Num
    ci_high: Num
    p_value: Num
    small: bool


#: finding metrics whose values are effect sizes (shown with fmt kind "effect"); every other metric is a rate
EFFECT_METRICS = ("effect_size", "skew", "ndkl")
#: how many of each finding's top components (table ``components``, by rank) the summary keeps
TOP_COMPONENTS = 5


def metric_num_kind(metric: str) -> Literal["effect", "rate"]:
    """The :func:`audit.fmt.fmt` kind of a finding's values: ``"effect"`` for effect sizes and skews,
    ``"rate"`` (the default) for rates and rate gaps."""
    return "effect" if metric in EFFECT_METRICS else "rate"


class AblationRow(_Model):
    """Top-k heads mean-ablated together against k random heads of the same layers (table ``ablations``).

    ``before`` / ``after`` are the finding's value on the test half (``metric``: an effect size d, a rate
    gap ...); ``reduction`` = ``|before| - |after|``. The finding columns (``finding_kind`` ...
    ``label``) are empty in runs written before they existed."""

    finding: str
    k: int
    components: str
    n_test: int
    before: Num
    after: Num
    reduction: Num
    random_mean: Num
    random_q95: Num = None
    n_random: int
    #: True: every k-set of the layers' heads was tried (``n_random`` = all of them)
    exact: bool = False
    random_p: Num
    p_adj: Num
    significant: bool
    accuracy_before: Num = None
    accuracy_after: Num = None
    finding_kind: str = ""
    metric: str = ""
    attribute: str = ""
    #: the two compared groups, "a vs b" (b = "rest" / "target": every other image)
    groups: str = ""
    #: a sentence head for the reader, e.g. "recall (TPR) of class 'triangle' by background (dotted vs plain)"
    label: str = ""

    @property
    def num_kind(self) -> Literal["effect", "rate"]:
        return metric_num_kind(self.metric)

    @property
    def random_sets(self) -> str:
        """How many random k-sets were compared: ``"16 (all)"`` when every k-set was tried."""
        return f"{self.n_random} (all)" if self.exact else str(self.n_random)

    @property
    def result(self) -> str:
        return "significant" if self.significant else "not significant"


class ComponentRow(_Model):
    """One of a finding's top components (table ``components``, rank <= :data:`TOP_COMPONENTS`): its
    mean-ablation effect on the finding (positive: ablating it moves the finding towards 0)."""

    finding: str
    component: str
    layer: int | None = None
    #: -1 for an MLP
    head: int | None = None
    #: "head" or "mlp"
    kind: str = ""
    metric: str = ""
    n: int
    effect: Num
    ci_low: Num
    ci_high: Num
    rank: int
    #: the texts (CLIP: TextSpan over a vocabulary) or classes (classifier) explaining its contribution
    roles: str = ""

    @property
    def num_kind(self) -> Literal["effect", "rate"]:
        return metric_num_kind(self.metric)


class ComponentFinding(_Model):
    """A finding the components stage decomposed (run.json ``components.findings``)."""

    ref: str
    kind: str = ""
    metric: str = ""
    label: str = ""


class ComponentsInfo(_Model):
    """How the components stage ran (run.json ``components``)."""

    layers: list[int] = []
    n_images: int | None = None
    #: the decomposed output: "embedding" (CLIP) or "logits" (classifier)
    output: str = ""
    #: where the roles come from: "vocabulary" (TextSpan), "classes" or "none"
    roles_from: str = ""
    n_random: int | None = None
    correction: str = ""
    findings: list[ComponentFinding] = []
    notes: list[str] = []


class SliceRow(_Model):
    """One error slice candidate (table ``slices``): found on the discovery half, tested on the other."""

    slice_id: int
    scope: str
    status: str
    confirmed: bool
    small: bool
    n_confirm: int
    n_rest: int
    error_rate: Num
    rest_error_rate: Num
    difference: Num
    ci_low: Num
    ci_high: Num
    p_value: Num
    p_adj: Num
    description: str = ""
    top_words: str = ""
    overlap: str = ""
    typical_row_ids: str = ""
    note: str = ""

    @property
    def typical(self) -> list[int]:
        return [int(x) for x in self.typical_row_ids.split()]


class GalleryMap(_Model):
    method: str
    deletion_auc: Num = None
    insertion_auc: Num = None


class GalleryItem(_Model):
    row_id: int
    image_id: str
    path: str
    kind: Literal["error", "correct"]
    attribute: str
    group: str
    label: str | None
    pred: str
    score: Num
    maps: list[GalleryMap] = []
    #: the attention maps of this image are dominated by high-norm artefact tokens (table artifact_images)
    caveat: str = ""


class Gallery(_Model):
    attribute: str | None = None
    worst_group: str | None = None
    reason: str = ""
    items: list[GalleryItem] = []


class AuditSummary(_Model):
    """The content of audit.json (schema version 1)."""

    schema_version: Literal[1] = SUMMARY_SCHEMA_VERSION
    generated: str
    tool: ToolInfo
    provenance: Provenance
    composition: list[CompositionRow] = []
    performance: list[PerformanceRow] = []
    disparities: list[DisparityRow] = []
    embeddings: EmbeddingStats | None = None
    clip: ClipStats | None = None
    faithfulness: list[FaithfulnessRow] = []
    verdicts: list[VerdictRow] = []
    sanity: list[SanityRow] = []
    region_mass: list[RegionMassRow] = []
    #: error slices nobody labelled (empty when the run searched none: see ``slices_note``)
    slices: list[SliceRow] = []
    slices_note: str = ""
    #: top-k heads against random heads (table ``ablations``; empty unless components.enabled)
    ablations: list[AblationRow] = []
    #: each decomposed finding's top components by rank (table ``components``, at most TOP_COMPONENTS each)
    components: list[ComponentRow] = []
    #: how the components stage ran (None when the run has no component tables)
    components_info: ComponentsInfo | None = None
    gallery: Gallery = Gallery()
    limitations: list[str] = []
    #: the findings ledger, ranked (the only source of every stated conclusion)
    findings: list[FindingRow] = []
    #: the ledger's count sentence (audit.findings.summary_line)
    findings_summary: str = ""
    #: the ledger's first sentences (audit.findings.headline)
    headline: list[str] = []

    def performance_table(self, *, main: bool = True) -> list[tuple[int, PerformanceRow]]:
        """(index into ``performance``, row) for the main (multiclass-wide) or per-class rows."""
        keep = ("__all__", "__macro__")
        return [(i, r) for i, r in enumerate(self.performance) if (r.cls in keep) == main]

    def ledger_rows(self, limit: int = MAX_LEDGER_ROWS) -> list[FindingRow]:
        """The findings table shown in the reports: every significant or flagged row, then the next
        ranked rows up to ``limit``."""
        must = [f for f in self.findings if f.significant or f.status == "flagged"]
        rest = [f for f in self.findings if not (f.significant or f.status == "flagged")]
        return must + rest[: max(0, limit - len(must))]

    @property
    def method_verdicts(self) -> dict[str, str]:
        """method -> its one verdict ("better than random", "not distinguishable from random",
        "fails the sanity check"); methods without a verdicts table get none."""
        return {v.method: v.verdict for v in self.verdicts}

    def methods_present(self) -> bool:
        """Whether the run stored explanation maps."""
        return bool(self.provenance.methods)
