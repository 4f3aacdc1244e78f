"""timm Vision Transformers: ViT, DeiT (incl. distilled), register-token ViTs (DINOv2 with
registers), CLIP vision towers, mean-pooled ViTs, EVA-02 (rotary position embeddings, SwiGLU)
and BEiT (relative position bias, mean pooling with ``fc_norm``).

Attention capture: every supported attention class (``_eager_attention()``) computes, in its eager
branch (``fused_attn=False``), ``softmax(q k^T * scale [+ relative position bias / mask])`` after
its own rotary embedding of ``q`` and ``k`` (EVA) and passes the probabilities through
``attn_drop`` before ``attn @ v``; one patch of ``attn_drop`` therefore serves them all. A class
whose eager branch differs needs its own patch here before it is added to ``_eager_attention()``.

Spec: ``timm:NAME`` (any ``timm.create_model`` name), optional local checkpoint.
Options (``ModelSpec.options``) are passed to ``timm.create_model`` (e.g. ``img_size``,
``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``num_classes``, ``class_token``,
``global_pool``, ``reg_tokens``, ``dynamic_img_size``) except these, read by the adapter:

* ``class_names``: list of class names (length must equal the number of classes);
* ``pretrained``: ``False`` builds a randomly initialised model (tests, the zoo);
  default: download timm's pretrained weights when no checkpoint is given;
* ``model_kwargs``: a dict of further ``timm.create_model`` keyword arguments (merged
  with the other options; used by the canary zoo);
* ``preprocess``: the user's preprocessing values (``load_model(preprocess=...)``).

Preprocessing, per key: the user's value > the preprocessing stored with the checkpoint
(:func:`audit.models.checkpoints.checkpoint_preprocess`) > timm's default data config for the
architecture (``timm_default``; a ``pretrained_cfg_overlay`` option still works and counts as
the user's). A checkpoint without its own record gets a warning naming the guessed values.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from audit.errors import ModelLoadError, UsageError
from audit.models.base import (
    Adapter,
    AttentionPatch,
    ModelSpec,
    Preprocess,
    TokenLayout,
    Tower,
    pop_preprocess_options,
    resolve_preprocess,
    with_guess_warning,
)
from audit.models.checkpoints import check_state_dict, load_checkpoint
from audit.registry import ADAPTERS

_ADAPTER_OPTIONS = ("class_names", "pretrained")
#: pickers for timm models that are not ViTs (Swin, ConvNeXt), appended by the modules that know them
#: (audit/models/timm_hier.py): each maps a built model to its Adapter class, or None
NON_VIT_ADAPTERS: list[Any] = []
_INTERP = {"bilinear", "bicubic", "nearest", "lanczos"}


def no_network_message(spec: str, err: BaseException, example: str) -> str:
    """Shared text for a hub download that failed (no network in this environment)."""
    return (
        f"cannot download the weights of {spec}: no network access to the model hub "
        f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}). "
        f"Give a local weights file instead: `--checkpoint PATH` on the command line, or "
        f"load_model({example!r}, checkpoint=PATH) in Python (.safetensors preferred)"
    )


@ADAPTERS.register(
    "timm", kind="classifier", attention=True, example="timm:vit_base_patch16_224",
    checkpoint_help="--checkpoint PATH: a state dict (.safetensors; .pth/.bin read weights-only) of the named "
                    "architecture, loaded strictly (--num-classes N when its head differs)",
)
class TimmViTAdapter(Adapter):
    """Adapter for ``timm`` VisionTransformer-family models (classifier kind)."""

    family: ClassVar[str] = "timm"
    examples: ClassVar[tuple[str, ...]] = (
        "timm:vit_base_patch16_224",
        "timm:deit_small_distilled_patch16_224",
        "timm:vit_small_patch14_reg4_dinov2.lvd142m",
        "timm:vit_base_patch16_clip_224.openai_ft_in12k_in1k",
    )
    description: ClassVar[str] = "timm ViT / DeiT (distilled) / register ViTs / CLIP vision towers"
    input_size_hint: ClassVar[str] = (
        "build it with dynamic image size: model.options.dynamic_img_size: true (explain: --option "
        "dynamic_img_size=true), or build it for that size with model.options.img_size"
    )

    def __init__(self, spec: ModelSpec, model: nn.Module, class_names: list[str] | None,
                 preprocess: Preprocess) -> None:
        self.spec = spec
        self.model = model
        self.kind = "classifier"
        self.class_names = class_names
        self.preprocess = preprocess

    # -- loading -----------------------------------------------------------------
    @classmethod
    def load(cls, spec: ModelSpec, *, device: str | torch.device = "cpu") -> TimmViTAdapter:
        import timm

        opts = dict(spec.options)
        class_names = opts.pop("class_names", None)
        pretrained_opt = opts.pop("pretrained", None)
        user_pp, pp_layers = pop_preprocess_options(opts, what=f"timm:{spec.name}")
        extra = opts.pop("model_kwargs", None) or {}
        if not isinstance(extra, dict):
            raise ModelLoadError(f"timm:{spec.name}: option model_kwargs must be a dict, got {type(extra).__name__}")
        opts = {**extra, **opts}
        name = spec.name
        arch = name.split(".", 1)[0]
        if not timm.is_model(arch):
            close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
            raise ModelLoadError(
                f"timm has no model named {name!r}; close names: {', '.join(close) or '(none)'}; "
                "see timm.list_models()"
            )
        if class_names is not None and "num_classes" not in opts:
            opts["num_classes"] = len(class_names)
        from_hub = False
        ckpt_pp: dict[str, Any] | None = None
        if spec.checkpoint is not None:
            sd, ckpt_pp = load_checkpoint(spec.checkpoint)
            try:
                model = timm.create_model(name, pretrained=False, **opts)
            except (TypeError, ValueError, AssertionError, RuntimeError) as e:
                raise ModelLoadError(f"timm could not build {spec.family}:{name} with options {opts}: {e}") from e
            head_keys = _head_keys(model)
            n_ckpt = _ckpt_num_classes(sd, head_keys)
            hint = (
                f"The checkpoint's head has {n_ckpt} classes: pass num_classes={n_ckpt} "
                f"(option num_classes / class_names with {n_ckpt} names)."
                if n_ckpt is not None
                else "The checkpoint has no classification head: pass num_classes=0 for a feature model."
            )
            _check_pool_keys(model, sd, name=name, source=spec.checkpoint)
            check_state_dict(model, sd, source=spec.checkpoint, spec=f"timm:{name}", head_keys=head_keys,
                             head_hint=hint)
            model.load_state_dict(sd, strict=True)
        elif pretrained_opt is False:
            model = timm.create_model(name, pretrained=False, **opts)
        else:
            from_hub = True
            try:
                model = timm.create_model(name, pretrained=True, **opts)
            except (TypeError, ValueError, AssertionError) as e:
                raise ModelLoadError(f"timm could not build timm:{name} with options {opts}: {e}") from e
            except Exception as e:  # hub / network errors have many types
                raise ModelLoadError(no_network_message(f"timm:{name}", e, f"timm:{name}")) from e
        model.eval().to(device)
        ADAPTERS.names()  # imports every module of audit/models: each non-ViT picker has added itself
        adapter_cls = next((c for c in (pick(model) for pick in NON_VIT_ADAPTERS) if c is not None), cls)
        if adapter_cls is cls:
            _check_supported(model, name)
        n_classes = int(getattr(model, "num_classes", 0) or 0)
        if class_names is None:
            class_names = _pretrained_labels(model, n_classes) if from_hub else None
            if class_names is None and n_classes > 0:
                class_names = [f"class_{i}" for i in range(n_classes)]
        elif len(class_names) != n_classes:
            raise ModelLoadError(
                f"timm:{name}: {len(class_names)} class_names given but the model has {n_classes} classes"
            )
        overlay = opts.get("pretrained_cfg_overlay") or {}
        layers = [("user", user_pp), ("user", _overlay_values(overlay)), *pp_layers, ("checkpoint", ckpt_pp or {}),
                  ("timm_default", _default_values(model))]
        pp = resolve_preprocess(layers)
        if spec.checkpoint is not None:
            pp = with_guess_warning(pp, checkpoint=spec.checkpoint, basis=f"timm's default for {name}",
                                    recorded=ckpt_pp is not None)
        return adapter_cls(spec, model, list(class_names) if class_names else None, pp)

    # -- layout ---------------------------------------------------------------------
    def token_layout(self, input_size: tuple[int, int] | None = None) -> TokenLayout:
        m = self.model
        size = tuple(input_size) if input_size is not None else self.preprocess.size
        if not self.supports_input_size(size):  # type: ignore[arg-type]
            raise UsageError(
                f"{self.spec} accepts input size {self.preprocess.size} only (got {size}); build it with "
                "option dynamic_img_size=True for other sizes"
            )
        kinds = _prefix_kinds(m)
        if len(kinds) != int(m.num_prefix_tokens):
            raise UsageError(
                f"{self.spec}: cannot tell the prefix tokens apart ({m.num_prefix_tokens} prefix tokens, "
                f"recognised {kinds})"
            )
        # pooling "token" reads the CLS token (index 0); "avg" averages the patch tokens (checked at load)
        pooled = 0 if getattr(m, "global_pool", "token") == "token" else None
        pe = m.patch_embed
        if hasattr(pe, "dynamic_feat_size"):
            grid = tuple(int(g) for g in pe.dynamic_feat_size(size))
        else:
            ph, pw = pe.patch_size
            grid = (size[0] // ph, size[1] // pw)
        return TokenLayout(prefix_kinds=tuple(kinds), pooled=pooled, grid=grid)  # type: ignore[arg-type]

    def supports_input_size(self, size: tuple[int, int]) -> bool:
        pe = self.model.patch_embed
        h, w = int(size[0]), int(size[1])
        if tuple(pe.img_size) == (h, w):
            return True
        if not getattr(self.model, "dynamic_img_size", False):
            return False
        ph, pw = pe.patch_size
        if getattr(pe, "dynamic_img_pad", False):
            return h >= 1 and w >= 1
        return h >= ph and w >= pw and h % ph == 0 and w % pw == 0

    def vision_blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def attention_patches(self, tower: Tower = "vision") -> list[AttentionPatch]:
        """One patch per block: records the post-softmax attention entering ``attn.attn_drop``.

        The eager branch (``fused_attn=False``) of every class in ``_eager_attention()``
        (ViT/DeiT/DINOv2 ``Attention``, ``AttentionRope``, EVA's ``EvaAttention`` with rotary
        q/k, BEiT's ``Attention`` with relative position bias) computes the softmax (after rope
        and bias) and passes it through ``attn_drop`` before ``attn @ v``; the patch replaces
        that dropout module's forward by one that records its input and then applies the
        dropout. The rest of the forward is timm's code, so the outputs equal timm's eager path
        exactly. ``setup`` switches ``fused_attn`` off on the existing module; ``teardown``
        restores it.
        """
        if tower != "vision":
            raise UsageError(f"{self.spec} has no {tower} tower (timm models are image classifiers)")
        patches = []
        for i, blk in enumerate(self.model.blocks):
            attn = getattr(blk, "attn", None)
            drop = getattr(attn, "attn_drop", None)
            if type(attn) not in _eager_attention() or not hasattr(attn, "fused_attn") or not isinstance(drop, nn.Module):
                raise UsageError(
                    f"{self.spec}: block {i} uses {type(attn).__name__}, whose attention probabilities "
                    f"cannot be captured (supported: {', '.join(sorted(_eager_attention().values()))})"
                )
            patches.append(AttentionPatch(module=drop, forward=_recording_dropout(drop),
                                          setup=_flag_setter(attn, "fused_attn", False),
                                          teardown=_flag_restorer(attn, "fused_attn")))
        return patches

    def gradcam_layer(self) -> nn.Module:
        last = self.model.blocks[-1]
        return last.norm1 if self.token_layout().pooled is not None else last

    # -- forward -----------------------------------------------------------------------
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)  # (B, N, C)
        return self.model.forward_head(feats, pre_logits=True)  # (B, D)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if not getattr(self.model, "num_classes", 0):
            raise UsageError(f"{self.spec} was built without a classification head (num_classes=0)")
        return self.model(x)  # (B, C); distilled DeiT: mean of both heads (timm's eval output)

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass through the blocks: pre-logits embedding and timm's eval logits."""
        if not getattr(self.model, "num_classes", 0):
            raise UsageError(f"{self.spec} was built without a classification head (num_classes=0)")
        feats = self.model.forward_features(x)  # (B, N, C)
        emb = self.model.forward_head(feats, pre_logits=True)  # (B, D)
        return emb, self.model.forward_head(feats)  # (B, C)

    def residual_view(self) -> Any:
        """timm blocks: heads enter ``attn.proj``; ViT / DeiT / DINOv2 blocks scale their branches with the
        ``ls1`` / ``ls2`` modules (the MLP branch is ``ls2``'s output), EVA / EVA-02 and BEiT blocks with the bare
        parameters ``gamma_1`` / ``gamma_2`` (the MLP branch is ``mlp``'s output times ``gamma_2``); final norm
        ``norm`` (token pooling) or ``fc_norm`` (mean pooling); the head ``head``.

        Refused (:class:`UsageError`): distilled and attention-pooled models, post-norm blocks, an inner norm on
        the concatenated heads before ``attn.proj`` (EVA-02 ``scale_attn_inner``, ViT ``scale_attn_norm``: it
        mixes the heads, so no per-head split is exact), and two norms or a per-token norm before mean pooling."""
        from audit.models.residual import BlockView, ResidualView, pre_hook_recorder

        m = self.model
        if getattr(m, "dist_token", None) is not None or getattr(m, "attn_pool", None) is not None:
            raise UsageError(f"{self.spec}: distilled (two-head) and attention-pooled ViTs cannot be decomposed")
        blocks = []
        for i, blk in enumerate(m.blocks):
            attn = getattr(blk, "attn", None)
            proj = getattr(attn, "proj", None)
            if not isinstance(proj, nn.Linear):
                raise UsageError(f"{self.spec}: block {i} ({type(blk).__name__}) is not a timm ViT block "
                                 "(no attn.proj projection of the concatenated heads)")
            inner = getattr(attn, "norm", None)
            if inner is not None and not isinstance(inner, nn.Identity):
                raise UsageError(
                    f"{self.spec}: block {i} normalises the concatenated heads ({type(attn).__name__}.norm = "
                    f"{type(inner).__name__}, e.g. EVA-02 scale_attn_inner / ViT scale_attn_norm) before attn.proj; "
                    "that norm mixes the heads, so the output is not a sum of per-head contributions and the "
                    "head/MLP decomposition would give wrong numbers"
                )
            attn_scale, mlp_branch, mlp_scale = _branch_scales(blk, spec=self.spec, index=i)
            blocks.append(BlockView(block=blk, record_heads=pre_hook_recorder(proj), proj_weight=proj.weight,
                                    proj_bias=proj.bias, attn_scale=attn_scale, n_heads=int(attn.num_heads),
                                    mlp_branch=mlp_branch, mlp_scale=mlp_scale))
        lay = self.token_layout()
        fc_norm = getattr(m, "fc_norm", None)
        tok_norm = getattr(m, "norm", None)
        after = fc_norm is not None and not isinstance(fc_norm, nn.Identity)
        if after and tok_norm is not None and not isinstance(tok_norm, nn.Identity):
            raise UsageError(f"{self.spec}: the model normalises twice (norm on every token, then fc_norm on the "
                             "pooled vector); the decomposition linearises one final norm only")
        norm = fc_norm if after else (tok_norm if tok_norm is not None else nn.Identity())
        # a mean-pooled model without fc_norm: the per-token norm is linearised token by token before the mean
        norm_after_pool = after or (lay.pooled is None and isinstance(norm, nn.Identity))
        head = m.head if getattr(m, "num_classes", 0) else None
        fwd = self.logits if head is not None else self.encode_image
        return ResidualView(blocks=blocks, layout=lay, final_norm=norm, norm_after_pool=norm_after_pool,
                            head_weight=None if head is None else head.weight,
                            head_bias=None if head is None else head.bias,
                            output="logits" if head is not None else "embedding", forward=fwd,
                            token_pool="mean" if lay.pooled is None and not norm_after_pool else "pooled")


# -- helpers -------------------------------------------------------------------------------
def _recording_dropout(drop: nn.Module):
    cls_forward = type(drop).forward

    def forward(attn: torch.Tensor, *, record) -> torch.Tensor:
        record(attn)  # (B, H, N, N) post-softmax
        return cls_forward(drop, attn)

    return forward


def _flag_setter(obj: Any, attr: str, value: Any):
    def setup() -> Any:
        old = getattr(obj, attr)
        setattr(obj, attr, value)
        return old

    return setup


def _flag_restorer(obj: Any, attr: str):
    def teardown(old: Any) -> None:
        setattr(obj, attr, old)

    return teardown


def _branch_scales(blk: nn.Module, *, spec: Any, index: int) -> tuple[Any, nn.Module, Any]:
    """``(attn_scale, mlp_branch, mlp_scale)`` of one pre-norm block (see :class:`audit.models.residual.BlockView`).

    * timm ``vision_transformer.Block`` (ViT, DeiT, DINOv2, CLIP towers): ``LayerScale`` modules ``ls1`` / ``ls2``
      (or identities); the MLP branch is ``ls2``'s output;
    * EVA / EVA-02 ``EvaBlock`` and BEiT ``Block``: bare parameters ``gamma_1`` / ``gamma_2`` (or ``None``)
      multiplied in the block's forward; the MLP branch is ``mlp``'s output times ``gamma_2``.
    """
    from timm.models.beit import Block as BeitBlock
    from timm.models.eva import EvaBlock
    from timm.models.vision_transformer import Block as VitBlock

    from audit.models.residual import scale_of

    if isinstance(blk, VitBlock) or (hasattr(blk, "ls1") and hasattr(blk, "ls2")):
        return scale_of(blk.ls1), blk.ls2, None
    if isinstance(blk, EvaBlock | BeitBlock):
        g1, g2 = getattr(blk, "gamma_1", None), getattr(blk, "gamma_2", None)
        for name, g in (("gamma_1", g1), ("gamma_2", g2)):
            if g is not None and not isinstance(g, torch.Tensor):
                raise UsageError(f"{spec}: block {index} has {name} of type {type(g).__name__}; expected a "
                                 "layer-scale parameter or None")
        return g1, blk.mlp, g2
    raise UsageError(f"{spec}: block {index} is a {type(blk).__name__}; the head/MLP decomposition knows the "
                     "pre-norm blocks of timm ViT / DeiT / DINOv2 (ls1/ls2), EVA / EVA-02 and BEiT (gamma_1/gamma_2) "
                     "only (post-norm and parallel blocks do not add each branch to the stream unchanged)")


def _head_keys(model: nn.Module) -> tuple[str, ...]:
    """State-dict keys of the classification head(s): ``head`` (ViT, DeiT, EVA, BEiT) and DeiT's
    ``head_dist``. A feature model's ``nn.Identity`` head still names ``head.weight`` / ``head.bias``,
    so a checkpoint that has a head is reported as a head mismatch (with the num_classes hint)."""
    keys = []
    for prefix in ("head", "head_dist"):
        mod = getattr(model, prefix, None)
        if isinstance(mod, nn.Module):
            own = ["weight", "bias"] if prefix == "head" and isinstance(mod, nn.Identity) else list(mod.state_dict())
            keys += [f"{prefix}.{k}" for k in own]
    return tuple(keys)


def _prefix_kinds(model: nn.Module) -> list[str]:
    """Kinds of the prefix tokens in timm's order: CLS, distillation, registers.

    ViT keeps ``has_class_token`` / ``num_reg_tokens``; EVA and BEiT keep only the parameters
    ``cls_token`` / ``reg_token`` (``(1, n, C)``)."""
    kinds: list[str] = []
    if getattr(model, "has_class_token", getattr(model, "cls_token", None) is not None):
        kinds.append("cls")
    if getattr(model, "dist_token", None) is not None:
        kinds.append("dist")
    n_reg = getattr(model, "num_reg_tokens", None)
    if n_reg is None:
        reg = getattr(model, "reg_token", None)
        n_reg = int(reg.shape[1]) if isinstance(reg, torch.Tensor) else 0
    return kinds + ["reg"] * int(n_reg)


def _eager_attention() -> dict[type, str]:
    """Attention classes whose eager branch passes the post-softmax attention through ``attn_drop``
    (read in timm 1.0's ``layers/attention.py``, ``models/eva.py``, ``models/beit.py``)."""
    from timm.layers.attention import Attention, AttentionRope
    from timm.models.beit import Attention as BeitAttention
    from timm.models.eva import EvaAttention

    return {Attention: "timm.layers.Attention (ViT, DeiT, DINOv2, CLIP)", AttentionRope: "timm.layers.AttentionRope",
            EvaAttention: "timm.models.eva.EvaAttention (EVA-02)",
            BeitAttention: "timm.models.beit.Attention (BEiT)"}


def _check_pool_keys(model: nn.Module, sd: dict[str, torch.Tensor], *, name: str, source: Any) -> None:
    """A checkpoint with ``fc_norm`` (the norm after mean pooling: BEiT, EVA, ``global_pool='avg'``)
    for a model built with token pooling, or the reverse, gets the option that fits it."""
    has = any(k.startswith("fc_norm.") for k in sd)
    built = any(k.startswith("fc_norm.") for k in model.state_dict())
    if has != built:
        want = "avg" if has else "token"
        raise ModelLoadError(
            f"checkpoint {source} does not fit timm:{name}: the checkpoint {'has' if has else 'has no'} fc_norm "
            f"(the norm after mean pooling) and the model as built {'has none' if has else 'has one'}; pass "
            f"global_pool={want!r} (option global_pool, on the command line --option global_pool={want})"
        )


def _ckpt_num_classes(sd: dict[str, torch.Tensor], head_keys: tuple[str, ...]) -> int | None:
    w = sd.get("head.weight", sd.get("head.fc.weight"))  # ViT: head; Swin / ConvNeXt: head.fc
    return int(w.shape[0]) if w is not None and w.dim() == 2 else None


_SUPPORTED = "ViT, DeiT, DINOv2 (with registers), EVA-02, BEiT and CLIP vision towers"


def _check_supported(model: nn.Module, name: str) -> None:
    """Refuse, at load time, a timm model whose tokens or attention the adapter cannot explain."""
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed") or not hasattr(model, "num_prefix_tokens"):
        raise ModelLoadError(
            f"timm:{name} is not a VisionTransformer-style model (needs blocks, patch_embed, num_prefix_tokens); "
            f"vision-audit explains {_SUPPORTED}"
        )
    known = _eager_attention()
    for i, blk in enumerate(model.blocks):
        attn = getattr(blk, "attn", None)
        if type(attn) not in known:
            raise ModelLoadError(
                f"timm:{name}: block {i} ({type(blk).__name__}) uses attention {type(attn).__name__}, whose "
                f"attention probabilities vision-audit cannot capture exactly; supported: "
                f"{', '.join(sorted(known.values()))} ({_SUPPORTED})"
            )
    kinds = _prefix_kinds(model)
    if len(kinds) != int(model.num_prefix_tokens):
        raise ModelLoadError(
            f"timm:{name}: cannot tell its {model.num_prefix_tokens} prefix tokens apart (recognised {kinds})"
        )
    pool = getattr(model, "global_pool", "token")
    bad = None
    if getattr(model, "attn_pool", None) is not None:
        bad = "attention pooling (global_pool='map')"
    elif pool == "token" and (not kinds or kinds[0] != "cls"):
        bad = "token pooling without a class token"
    elif pool not in ("token", "avg"):
        bad = f"global_pool={pool!r}"
    elif pool == "avg" and getattr(model, "pool_include_prefix", False):
        bad = "mean pooling that includes the prefix tokens (pool_include_prefix=True)"
    if bad is not None:
        raise ModelLoadError(
            f"timm:{name}: {bad} has no single pooled token or patch mean to explain; build it with "
            "option global_pool='token' (class token) or global_pool='avg' (mean of the patch tokens)"
        )


def _pretrained_labels(model: nn.Module, n_classes: int) -> list[str] | None:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    names = cfg.get("label_names")
    if names and len(names) == n_classes:
        return list(names)
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset:
            info = ImageNetInfo(subset)
            descs = info.label_descriptions(as_dict=False)
            if len(descs) == n_classes:
                return [d.split(",")[0] for d in descs]
    except Exception:  # noqa: BLE001 - label metadata is a nicety, never a load failure
        return None
    return None


def _default_values(model: nn.Module) -> dict[str, Any]:
    """timm's data config for the model as built (its input size is the built one)."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    _, h, w = cfg["input_size"]
    built = tuple(int(s) for s in getattr(getattr(model, "patch_embed", None), "img_size", (h, w)))  # no patch_embed: CNNs
    if (h, w) != built:  # options such as img_size=32 override the pretrained config's size
        h, w = built
    interp = cfg.get("interpolation", "bicubic")
    return {
        "input_size": (int(h), int(w)),
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
        "interpolation": interp if interp in _INTERP else "bicubic",
        "crop_pct": min(float(cfg.get("crop_pct", 1.0) or 1.0), 1.0),
        "resize_mode": "squash" if cfg.get("crop_mode") == "squash" else "shortest",
    }


def _overlay_values(overlay: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing keys of a user's ``pretrained_cfg_overlay`` (its input_size aside: the
    built model's size governs, as before)."""
    out: dict[str, Any] = {}
    for k in ("mean", "std"):
        if overlay.get(k) is not None:
            out[k] = tuple(float(v) for v in overlay[k])
    if overlay.get("interpolation") in _INTERP:
        out["interpolation"] = overlay["interpolation"]
    if overlay.get("crop_pct") is not None:
        out["crop_pct"] = min(float(overlay["crop_pct"]), 1.0)
    if overlay.get("crop_mode") is not None:
        out["resize_mode"] = "squash" if overlay["crop_mode"] == "squash" else "shortest"
    return out

