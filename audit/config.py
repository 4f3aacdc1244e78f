"""Audit configuration: pydantic models read from YAML (safe loader).

Unknown keys, wrong types and paths that do not exist are errors that name the
field (``model.spec``, ``data.manifest`` ...). Relative paths in a config file
are resolved against the file's directory.

Example (``audit.yaml``)::

    model:
      spec: timm:vit_base_patch16_224
      checkpoint: weights/vit_b16.safetensors
    data:
      manifest: data/fairface_val.csv
      columns: {image: file, label: null, groups: [race, gender, age]}
    explain:
      methods: [rollout, gae, gradcam]
    run:
      output: runs/fairface-vit
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from audit.data.schema import ColumnMap, ManifestFormat
from audit.errors import ConfigError
from audit.stats.rules import ALPHA, MIN_GROUP_SIZE


def _columns_with_label(cls: Any, v: Any) -> Any:
    """``columns`` without a ``label`` key read the label from a column named "label"."""
    if isinstance(v, dict) and "label" not in v:
        return {**v, "label": "label"}
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Interpolation = Literal["bilinear", "bicubic", "nearest", "lanczos"]


class PreprocessConfig(_Strict):
    """Explicit preprocessing; every key left out comes from the model's own config.

    Where each resolved value came from (``user``, checkpoint metadata, HF / open_clip config,
    timm's default for the architecture) is written to run.json and shown in every report.
    """

    input_size: int | tuple[int, int] | None = Field(
        default=None, description="(H, W) or one side fed to the model, e.g. 224")
    resize: int | None = Field(
        default=None, ge=1, description="shorter side before the centre crop (alternative to crop_pct)")
    crop_pct: float | None = Field(default=None, gt=0, le=1, description="input_size / resize, e.g. 0.875; 1 = no crop")
    resize_mode: Literal["shortest", "squash"] | None = Field(
        default=None, description="shortest: keep the aspect ratio, then centre-crop; squash: resize to input_size")
    interpolation: Interpolation | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @model_validator(mode="after")
    def _one_crop_rule(self) -> PreprocessConfig:
        if self.resize is not None and self.crop_pct is not None:
            raise ValueError("give resize or crop_pct, not both (crop_pct = input_size / resize)")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError("std values must be positive")
        return self

    def given(self) -> dict[str, Any]:
        """Only the keys the user set."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ProbeConfig(_Strict):
    """A linear head on a frozen backbone (``model.probe``): read from ``weights`` or fitted on ``manifest``.

    ``weights``: a safetensors file with exactly ``weight`` (C, D) and ``bias`` (C,) (class names
    from ``class_names`` or the file's metadata). ``manifest``: a labelled training manifest
    (``columns``, ``root``, ``format`` as in ``data``) on whose embeddings scikit-learn fits a
    multinomial logistic regression (``C``, ``max_iter``, ``seed``, ``standardize``); ``holdout``
    is the fraction held out by a seeded stratified split, or a labelled held-out manifest.
    """

    weights: Path | None = Field(default=None, description="safetensors head: weight (C, D), bias (C,)")
    class_names: list[str] | None = Field(default=None, description="with weights: the C class names in row order")
    manifest: Path | None = Field(default=None, description="labelled training manifest the head is fitted on")
    columns: ColumnMap = Field(default_factory=lambda: ColumnMap(label="label"))
    root: Path | None = None
    format: ManifestFormat = "auto"
    C: float = Field(default=1.0, gt=0, description="inverse L2 strength of the logistic regression")
    max_iter: int = Field(default=1000, ge=1)
    seed: int | None = Field(default=None, description="split and solver seed; default: stats.seed")
    standardize: bool = Field(default=True, description="z-score the embeddings (folded into W and b)")
    holdout: float | Path = Field(default=0.2, description="fraction held out (0: none) or a held-out manifest")
    allow_same_manifest: bool = Field(
        default=False, description="allow data.manifest as the training manifest (optimistic accuracy)")

    _label_column_default = field_validator("columns", mode="before")(_columns_with_label)

    @model_validator(mode="after")
    def _one_source(self) -> ProbeConfig:
        if (self.weights is None) == (self.manifest is None):
            raise ValueError("give weights (a safetensors head) or manifest (a labelled training manifest), "
                             "exactly one")
        fit_keys = {"columns", "root", "format", "C", "max_iter", "seed", "standardize", "holdout",
                    "allow_same_manifest"}
        if self.weights is not None and fit_keys & self.model_fields_set:
            raise ValueError(f"{sorted(fit_keys & self.model_fields_set)} only apply to a fitted head (manifest); "
                             "a weights file is used as it is")
        if self.manifest is not None and self.class_names is not None:
            raise ValueError("class_names go with weights; a fitted head's classes are the manifest's labels")
        if self.manifest is not None and self.columns.label is None:
            raise ValueError("columns.label: a probe is fitted on labelled images; name the label column")
        if isinstance(self.holdout, float) and not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be a fraction in [0, 1) or a manifest path (got {self.holdout})")
        return self


class ModelConfig(_Strict):
    """Which model to audit."""

    spec: str = Field(description="FAMILY:NAME, e.g. timm:vit_base_patch16_224 or zoo:vit-biased")
    checkpoint: Path | None = Field(default=None, description="local weights file or HF directory")
    name: str | None = Field(default=None, description="display name (default: the spec)")
    class_names: list[str] | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="family-specific load options")
    #: CLIP only: class -> prompts used to turn CLIP into a classifier (default: "a photo of a {class}")
    class_prompts: dict[str, list[str]] | None = None
    #: explicit preprocessing (any subset; the rest from the model's own config)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    #: a linear head on the (frozen) model's image embedding; the model's own head, if any, is not used
    probe: ProbeConfig | None = None

    @model_validator(mode="after")
    def _probe_alone(self) -> ModelConfig:
        if self.probe is not None and (self.class_prompts is not None or self.class_names is not None):
            raise ValueError("model.probe gives the classes (its manifest's labels or probe.class_names); "
                             "leave out model.class_prompts and model.class_names")
        return self

    @field_validator("spec")
    @classmethod
    def _spec_form(cls, v: str) -> str:
        if ":" not in v or v.startswith(":") or v.endswith(":"):
            raise ValueError("must be FAMILY:NAME, e.g. timm:vit_base_patch16_224 (see `vision-audit models`)")
        return v


class DataConfig(_Strict):
    manifest: Path = Field(description="CSV / Parquet manifest, or an ImageFolder directory")
    format: ManifestFormat = "auto"
    root: Path | None = Field(default=None, description="base directory of relative image paths")
    #: how the manifest's columns map to the audit's roles (audit.data.ColumnMap); in a config the
    #: label column defaults to "label" (``label: null`` for unlabelled data)
    columns: ColumnMap = Field(default_factory=lambda: ColumnMap(label="label"))
    skip_bad: bool = Field(default=False, description="record and skip unreadable rows instead of failing")
    missing_group: str | None = Field(default=None, description="name for a missing group value; default: error")
    limit: int | None = Field(default=None, ge=1, description="use only the first N rows")

    _label_column_default = field_validator("columns", mode="before")(_columns_with_label)


class ExplainConfig(_Strict):
    methods: list[str] = Field(default_factory=lambda: ["rollout", "gae", "gradcam"])
    max_images: int = Field(default=96, ge=0, description="images explained, stratified by group and correctness")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-method parameters")
    faithfulness: bool = True
    faithfulness_steps: int = Field(default=16, ge=2)
    baseline: Literal["black", "blur"] = "blur"
    sanity: bool = True
    sanity_images: int = Field(default=8, ge=1)
    store_attention: bool = Field(default=False, description="also store per-layer, per-head attention")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        from audit.registry import METHODS  # filled by audit.explain on first use

        known = METHODS.names()
        bad = [m for m in v if m not in known]
        if bad:
            raise ValueError(f"unknown explanation method(s) {bad}; known: {known} (`vision-audit explain --list-methods`)")
        return v

    @model_validator(mode="after")
    def _params_for_chosen(self) -> ExplainConfig:
        extra = sorted(set(self.params) - set(self.methods))
        if extra:
            raise ValueError(f"params given for method(s) {extra} that are not in methods {self.methods}")
        return self


Comparison = Literal["range", "pairwise", "one_vs_rest"]


def _default_metrics() -> list[str]:
    """Every metric of the table (audit/stats/metrics.py), in its order."""
    from audit.stats.metrics import metric_names

    return list(metric_names())


class StatsConfig(_Strict):
    min_group_size: int = Field(default=MIN_GROUP_SIZE, ge=1)
    n_boot: int = Field(default=1000, ge=50)
    n_perm: int = Field(default=1000, ge=50)
    alpha: float = Field(default=ALPHA, gt=0, lt=1)
    intersections: bool = True
    metrics: list[str] = Field(default_factory=_default_metrics)
    embeddings: bool = True
    #: which disparity families are tested: the max-min range over all groups (one test per
    #: attribute and metric), every pair of groups, and each group against the rest. Each row of
    #: the disparities table names its family and correction (Holm within the run's gate family).
    comparisons: list[Comparison] = Field(default_factory=lambda: ["range"], min_length=1)
    seed: int = 0

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        from audit.registry import METRICS  # filled by audit.stats.metrics on first use

        known = METRICS.names()
        bad = [m for m in v if m not in known]
        if bad:
            raise ValueError(f"unknown metric(s) {bad}; known: {known}")
        if not v:
            raise ValueError(f"name at least one metric; known: {known}")
        return v

    @field_validator("comparisons")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class AssociationTest(_Strict):
    """One image-EAT (Steed & Caliskan 2021): images of group X vs group Y, text sets A vs B.

    Give the texts directly (``a_texts``, ``b_texts``), or name two word sets of a WEAT set file
    (``set: weat_caliskan``, ``a: pleasant``, ``b: unpleasant``) put into ``template``.
    ``y_group: null`` makes it a single-category test of X.
    """

    name: str
    attribute: str
    x_group: str
    y_group: str | None = None
    a_texts: list[str] | None = None
    b_texts: list[str] | None = None
    set: str | None = Field(default=None, description="shipped WEAT set name or YAML path")
    a: str | None = Field(default=None, description="word set of `set` used as A")
    b: str | None = Field(default=None, description="word set of `set` used as B")
    template: str = "a photo of {}"

    @model_validator(mode="after")
    def _texts_or_set(self) -> AssociationTest:
        direct = bool(self.a_texts) and bool(self.b_texts)
        named = self.set is not None and self.a is not None and self.b is not None
        if direct == named:
            raise ValueError("give both a_texts and b_texts, or a WEAT `set` with its word sets `a` and `b` (not both)")
        if "{}" not in self.template:
            raise ValueError("template must contain '{}' where the word goes")
        return self

    def texts(self) -> tuple[list[str], list[str]]:
        """The A and B prompt texts."""
        if self.a_texts and self.b_texts:
            return list(self.a_texts), list(self.b_texts)
        from audit.stats.sets import load_set

        ws = load_set(self.set)
        sets = getattr(ws, "sets", None)
        if sets is None or self.a not in sets or self.b not in sets:
            from audit.errors import ConfigError

            raise ConfigError(
                f"clip.association {self.name!r}: set {self.set!r} has no word sets {self.a!r} and {self.b!r}"
                + (f" (it has {sorted(sets)})" if sets else " (it is not a WEAT set)")
            )
        return [self.template.format(w) for w in sets[self.a]], [self.template.format(w) for w in sets[self.b]]


class ClipConfig(_Strict):
    templates: list[str] = Field(default_factory=lambda: ["a photo of a {}."])
    label_set: str | None = Field(default="fairface_harmful", description="shipped label set name or YAML path")
    association: list[AssociationTest] = Field(default_factory=list)
    queries: list[str] = Field(default_factory=list)
    ks: list[int] = Field(default_factory=lambda: [10, 50, 100])
    skew_target: Literal["uniform", "dataset"] = "dataset"

    def association_words(self) -> dict[str, tuple[str, str, str]]:
        """test name -> (A words, B words, the prompt around them): what a reader needs in place of
        the set names "<test> A" / "<test> B". Tests whose word sets cannot be read are left out."""
        import os

        out: dict[str, tuple[str, str, str]] = {}
        for t in self.association:
            try:
                a_texts, b_texts = t.texts()
            except ConfigError:
                continue
            prefix = os.path.commonprefix([*a_texts, *b_texts])
            prefix = prefix[: prefix.rfind(" ") + 1] if " " in prefix else ""
            out[t.name] = (", ".join(x[len(prefix):] for x in a_texts), ", ".join(x[len(prefix):] for x in b_texts),
                           prefix + "…" if prefix else "")
        return out

    @field_validator("label_set")
    @classmethod
    def _known_set(cls, v: str | None) -> str | None:
        if v is None or v.endswith((".yaml", ".yml")) or "/" in v:
            return v  # a file: read (and checked) when the run starts
        from audit.stats.sets import shipped_sets

        known = shipped_sets()
        if v not in known:
            raise ValueError(f"unknown shipped set {v!r}; shipped: {known} (or give a .yaml path)")
        return v


class EmbedderConfig(_Strict):
    """A CLIP model whose image tower embeds the rows for slice discovery or naming (its text tower
    names the slices)."""

    spec: str = Field(description="FAMILY:NAME of a CLIP model, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k")
    checkpoint: Path | None = Field(default=None, description="local weights file or HF directory")
    options: dict[str, Any] = Field(default_factory=dict, description="family-specific load options")


class SlicesConfig(_Strict):
    """Error slices nobody labelled (audit/slices/, docs/RUN_FORMAT.md "Error slices"): found in
    embedding space on one half of the labelled rows, confirmed on the other half."""

    enabled: bool = Field(default=True, description="runs with labels only; a label-free run records why not")
    embedder: EmbedderConfig | None = Field(
        default=None, description="a CLIP model to name slices in words (and, with discover_on: embedder, "
                                  "to find them); default: the audited model (a CLIP run names its own)")
    discover_on: Literal["model", "embedder"] = Field(
        default="model", description="whose image embeddings the slices are found in")
    vocabulary: list[str] = Field(default_factory=lambda: ["default"],
                                  description="\"default\" (the shipped concepts) and/or vocabulary YAML paths")
    fdr: float = Field(default=0.05, gt=0, lt=1, description="Benjamini-Hochberg level over the candidates")
    per_class: bool = Field(default=True, description="also search within each class, not only over all rows")
    n_components: int = Field(default=16, ge=2, le=256, description="mixture components per scope, at most")
    seed: int | None = Field(default=None, description="split and mixture seed; default: stats.seed")

    @model_validator(mode="after")
    def _embedder_needed(self) -> SlicesConfig:
        if self.discover_on == "embedder" and self.embedder is None:
            raise ValueError("slices.discover_on: embedder needs slices.embedder (a CLIP model spec)")
        return self


class ComponentsConfig(_Strict):
    """Where a finding is carried: head/MLP decomposition, mean-ablation effects, top-k heads against
    random heads (audit/components/, docs/RUN_FORMAT.md "Components")."""

    enabled: bool = Field(default=False, description="costs one more forward over the audit set")
    findings: list[str] = Field(
        default_factory=list,
        description="finding references (association:<test>, harmful_label:<attribute>, accuracy:<attribute>, "
                    "tpr:<class>:<attribute>, retrieval:<query>:<attribute>, ...; audit/components/targets.py); "
                    "default: every association test, then the significant performance and harmful-label findings")
    max_findings: int = Field(default=3, ge=0, description="significant ledger findings taken when findings is empty")
    layers: int | None = Field(default=None, ge=1, description="last blocks decomposed; default half the depth")
    k: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], description="top-k head set sizes tested")
    n_random: int = Field(default=1000, ge=200, description="random head sets per k (all sets when fewer)")
    n_boot: int = Field(default=200, ge=20, description="bootstrap resamples of images per component effect")
    n_roles: int = Field(default=5, ge=0, description="top components named in words and mapped per group")
    map_images: int = Field(default=64, ge=1, description="images per group averaged in a head's spatial map")
    vocabulary: list[str] = Field(default_factory=lambda: ["default"],
                                  description="\"default\" (the shipped concepts) and/or vocabulary YAML paths")

    @field_validator("k")
    @classmethod
    def _k_positive(cls, v: list[int]) -> list[int]:
        if not v or any(int(k) < 1 for k in v):
            raise ValueError("components.k lists head set sizes, each at least 1")
        return sorted({int(k) for k in v})


class RunConfig(_Strict):
    output: Path
    batch_size: int = Field(default=32, ge=1)
    num_workers: int = Field(default=0, ge=0)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    backend: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    shard_size: int = Field(default=512, ge=1)
    resume: bool = False
    overwrite: bool = False
    cache_dir: Path | None = Field(default=None, description="shared cache of forward results; default: none")


class AuditConfig(_Strict):
    """The whole audit: one model on one dataset."""

    model: ModelConfig
    data: DataConfig
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    slices: SlicesConfig = Field(default_factory=SlicesConfig)
    components: ComponentsConfig = Field(default_factory=ComponentsConfig)
    run: RunConfig

    def resolve_paths(self, base: Path) -> AuditConfig:
        """Return a copy whose relative paths are made absolute against ``base``."""

        def fix(p: Path | None) -> Path | None:
            if p is None:
                return None
            return p if p.is_absolute() else (base / p)

        data = self.data.model_copy(update={"manifest": fix(self.data.manifest), "root": fix(self.data.root)})
        model = self.model.model_copy(update={"checkpoint": fix(self.model.checkpoint)})
        if model.probe is not None:
            pr = model.probe
            hold = fix(pr.holdout) if isinstance(pr.holdout, Path) else pr.holdout
            model = model.model_copy(update={"probe": pr.model_copy(update={
                "weights": fix(pr.weights), "manifest": fix(pr.manifest), "root": fix(pr.root), "holdout": hold})})
        run = self.run.model_copy(update={"output": fix(self.run.output), "cache_dir": fix(self.run.cache_dir)})
        sl = self.slices
        emb = sl.embedder.model_copy(update={"checkpoint": fix(sl.embedder.checkpoint)}) if sl.embedder else None
        vocab = [v if v == "default" else str(fix(Path(v))) for v in sl.vocabulary]
        slices = sl.model_copy(update={"embedder": emb, "vocabulary": vocab})
        return self.model_copy(update={"data": data, "model": model, "run": run, "slices": slices})

    def check_paths(self) -> None:
        """Raise ConfigError naming the field when an input path does not exist."""
        missing = []
        if not self.data.manifest.exists():
            missing.append(f"data.manifest: {self.data.manifest} does not exist")
        if self.data.root is not None and not self.data.root.is_dir():
            missing.append(f"data.root: {self.data.root} is not a directory")
        if self.model.checkpoint is not None and not self.model.checkpoint.exists():
            missing.append(f"model.checkpoint: {self.model.checkpoint} does not exist")
        pr = self.model.probe
        if pr is not None:
            missing += [f"model.probe.{k}: {v} does not exist" for k, v in
                        (("weights", pr.weights), ("manifest", pr.manifest),
                         ("holdout", pr.holdout if isinstance(pr.holdout, Path) else None)) if v is not None
                        and not Path(v).exists()]
            if pr.root is not None and not pr.root.is_dir():
                missing.append(f"model.probe.root: {pr.root} is not a directory")
        emb = self.slices.embedder
        if emb is not None and emb.checkpoint is not None and not emb.checkpoint.exists():
            missing.append(f"slices.embedder.checkpoint: {emb.checkpoint} does not exist")
        missing += [f"slices.vocabulary[{i}]: {v} does not exist" for i, v in enumerate(self.slices.vocabulary)
                    if v != "default" and not Path(v).exists()]
        if missing:
            raise ConfigError("config refers to paths that do not exist:\n  " + "\n  ".join(missing))


def _closest_key(loc: tuple) -> str | None:
    """The known key closest to an unknown one at ``loc`` (difflib), e.g. "colums" -> "columns"."""
    import difflib

    model: Any = AuditConfig
    for part in loc[:-1]:
        if isinstance(part, int):  # an item of a list: same model
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        sub = [c for c in (ann, *getattr(ann, "__args__", ())) if isinstance(c, type) and issubclass(c, BaseModel)]
        if not sub:
            return None
        model = sub[0]
    if not isinstance(loc[-1], str) or not hasattr(model, "model_fields"):
        return None
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return close[0] if close else None


def config_schema() -> dict[str, Any]:
    """The JSON schema of an audit config (``vision-audit run --schema``)."""
    return AuditConfig.model_json_schema()


def _format_validation(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            hint = _closest_key(err.get("loc", ()))
            msg = ("unknown key" + (f" (did you mean {hint}?)" if hint else "")
                   + "; `vision-audit run --schema` prints every key")
        elif "input" in err and err.get("type") not in ("missing",):
            shown = repr(err["input"])
            msg = f"{msg} (got {shown[:80]})"
        lines.append(f"  {loc}: {msg}")
    return f"{source}: invalid config\n" + "\n".join(lines)


def parse_config(data: dict[str, Any], *, source: str = "config", base: Path | None = None, check_paths: bool = True) -> AuditConfig:
    """Validate a config dict; errors name the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with keys model, data, run (got {type(data).__name__})")
    try:
        cfg = AuditConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(source, exc)) from None
    if base is not None:
        cfg = cfg.resolve_paths(base)
    if check_paths:
        cfg.check_paths()
    return cfg


def load_yaml(path: str | Path) -> Any:
    """Read YAML with the safe loader; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None


def load_config(path: str | Path, *, overrides: dict[str, Any] | None = None, check_paths: bool = True) -> AuditConfig:
    """Load and validate an audit config file.

    ``overrides`` is a nested dict merged over the file (used by CLI flags).
    """
    p = Path(path)
    data = load_yaml(p) or {}
    if overrides:
        data = _merge(data, overrides)
    return parse_config(data, source=str(p), base=p.resolve().parent, check_paths=check_paths)


def _merge(a: Any, b: dict[str, Any]) -> Any:
    if not isinstance(a, dict):
        return b
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out.get(k), v) if isinstance(v, dict) else v
    return out
