"""``vision-audit explain``: explain image files with several methods into one PNG grid.

One row per image, one column per method (after the image itself); each map is drawn on the
model's patch grid (``--smooth``: bilinear) over the image in grey with a colour bar of its range
(per-image scale), and titled with its method's verdict against a random map over the given images,
the explained target, the predicted class and its probability, its deletion AUC
(lower = more faithful), the AUC of a random map and the deletion baseline (``--baseline``, blur
by default as ``explain.baseline`` in a run config), e.g. "deletion AUC 0.31 (random 0.52, blur
baseline)". A CLIP prompt target has no class probability, so its maps carry no deletion AUC.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit.errors import UsageError


def model_args_from_cli(args: Any) -> dict[str, Any]:
    """``explain_images`` keyword arguments from the explain subcommand's loading options.

    ``--input-size N`` or ``H,W``; ``--mean``/``--std`` ``R,G,B``; ``--option KEY=VALUE`` (VALUE read
    as a YAML scalar: ``true``, ``3``, ``0.5``, ``name``); ``--class-names a,b,c``.

    Raises:
        UsageError: a value that does not parse, naming the flag.
    """
    pp: dict[str, Any] = {}
    if getattr(args, "input_size", None):
        size = _numbers(args.input_size, "--input-size", int)
        if len(size) not in (1, 2):
            raise UsageError(f"--input-size {args.input_size!r}: give N or H,W (e.g. 224 or 224,320)")
        pp["input_size"] = size[0] if len(size) == 1 else tuple(size)
    for key in ("resize", "crop_pct", "resize_mode", "interpolation"):
        if getattr(args, key, None) is not None:
            pp[key] = getattr(args, key)
    for key in ("mean", "std"):
        if getattr(args, key, None):
            vals = _numbers(getattr(args, key), f"--{key}", float)
            if len(vals) != 3:
                raise UsageError(f"--{key} {getattr(args, key)!r}: give three comma-separated values R,G,B")
            pp[key] = tuple(vals)
    options: dict[str, Any] = {}
    for item in getattr(args, "option", None) or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option {item!r}: use KEY=VALUE, e.g. --option dynamic_img_size=true")
        options[key.strip()] = _yaml_scalar(raw, item)
    names = [c.strip() for c in args.class_names.split(",") if c.strip()] if getattr(args, "class_names", None) \
        else None
    return {"preprocess": pp or None, "options": options or None, "class_names": names,
            "num_classes": getattr(args, "num_classes", None)}


def _numbers(text: str, flag: str, kind: type) -> list[Any]:
    try:
        return [kind(v) for v in str(text).replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected comma-separated numbers") from None


def _yaml_scalar(raw: str, item: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise UsageError(f"--option {item!r}: the value is not a YAML scalar ({e})") from None


def print_methods() -> int:
    """``vision-audit explain --list-methods``: one line per registered method with its metadata.

    Columns: the method, ``target`` (``ignored`` for target-free methods, else ``used``),
    ``attention`` (``needs`` when the family must expose attention probabilities), ``gradient``
    (``yes`` when it backpropagates), ``families`` (``all`` unless the registration names some),
    and the description.
    """
    from audit.explain.api import method_metadata

    rows = method_metadata()
    width = max([len("method"), *(len(r["name"]) for r in rows)])
    print(f"{'method':<{width}}  {'target':<7}  {'attention':<9}  {'gradient':<8}  {'families':<10}  description")
    for r in rows:
        fams = ",".join(r["families"]) if r.get("families") else "all"
        print(f"{r['name']:<{width}}  {'ignored' if r['target_free'] else 'used':<7}  "
              f"{'needs' if r['needs_attention'] else '-':<9}  {'yes' if r['gradient'] else 'no':<8}  "
              f"{fams:<10}  {r.get('description', '')}")
    print("\ntarget ignored = target-free (the map does not depend on the class or prompt); attention needs = the "
          "model family must expose attention (vision-audit models lists the methods per family)")
    return 0


def _print_preprocessing(pp: Any, sizes: Sequence[tuple[int, int]], names: Sequence[str]) -> None:
    """The resolved preprocessing and its sources (one line), then the warnings a run would record."""
    print(f"preprocessing: {pp.describe()}", file=sys.stderr)
    texts = list(pp.warnings)
    up = pp.upscale_warning(sizes, names=names)
    if up:
        texts.append(up)
    for text in texts:
        print(f"warning: {text}", file=sys.stderr)


def explain_images(
    images: Sequence[Path],
    *,
    model: str,
    checkpoint: Path | None = None,
    methods: Sequence[str] = ("rollout",),
    target: str | None = None,
    prompt: str | None = None,
    out: Path = Path("explain.png"),
    steps: int = 16,
    device: str = "cpu",
    baseline: str = "blur",
    preprocess: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    smooth: bool = False,
) -> int:
    """Explain ``images`` with ``methods`` into one PNG grid at ``out``.

    Maps are drawn on the model's patch grid (one block per patch); ``smooth=True`` (``--smooth``)
    interpolates them bilinearly instead.

    ``preprocess`` (``model.preprocess`` keys), ``options`` (``model.options``), ``class_names`` and
    ``num_classes`` load the model as a run config would; the resolved preprocessing and where each
    value came from are printed on stderr, with the same warnings as a run.
    """
    import torch
    from tqdm.auto import tqdm

    from audit.data import open_image
    from audit.explain import ClassTarget, PromptTarget, explain
    from audit.explain.faithfulness import deletion_insertion, random_map_like
    from audit.models import load_model
    from audit.registry import METHODS

    if baseline not in ("blur", "black"):
        raise UsageError(f"--baseline {baseline!r}: use blur or black (what deleted patches become)")
    methods = [m.strip() for m in methods if m.strip()]
    for m in methods:
        METHODS.get(m)  # unknown method -> UsageError listing the known ones
    opts = dict(options or {})
    if num_classes is not None:
        opts["num_classes"] = int(num_classes)
    adapter = load_model(model, checkpoint=str(checkpoint) if checkpoint else None, device=device,
                         class_names=list(class_names) if class_names else None, preprocess=preprocess or None,
                         **opts)
    if adapter.kind == "clip" and prompt is None:
        raise UsageError(f"{model} is a CLIP model: give --prompt TEXT to explain its similarity to a text")
    if prompt is not None and adapter.kind != "clip":
        raise UsageError(f"--prompt needs a CLIP model; {model} is a classifier (use --target CLASS)")
    tf = adapter.preprocess.transform()
    pil, xs = [], []
    for p in images:
        img = open_image(p)
        pil.append(img)
        xs.append(tf(img))
    _print_preprocessing(adapter.preprocess, [im.size for im in pil], [Path(p).name for p in images])
    x = torch.stack(xs).to(device)
    if prompt is not None:
        tgt = PromptTarget(prompt)
    elif target is not None:
        names = adapter.class_names or []
        if target.isdigit():
            idx = int(target)
        elif target in names:
            idx = names.index(target)
        else:
            raise UsageError(f"--target {target!r} is neither a class index nor one of the class names {names[:20]}")
        tgt = ClassTarget(index=idx)
    else:
        tgt = ClassTarget(index=None)
    results = {}
    bar = tqdm(total=len(methods), desc="explain", unit="method", file=sys.stderr, disable=not sys.stderr.isatty())
    for m in methods:
        e = explain(adapter, x, method=m, target=tgt)
        if prompt is None:
            rnd = random_map_like(e.grid_maps, seed=0)
            kw = {"target": tgt, "steps": steps, "mode": "deletion", "baseline": baseline}
            faith = deletion_insertion(adapter, x, e.grid_maps, **kw)
            base = deletion_insertion(adapter, x, rnd, **kw)
            results[m] = (e, faith.deletion_auc, base.deletion_auc)
        else:  # a single prompt has no class probability: no deletion curve
            results[m] = (e, None, None)
        bar.update(1)
    bar.close()
    verdicts = _verdicts(results, baseline)
    fig = overlay_grid(pil, x, adapter, results, baseline=baseline, verdicts=verdicts, target=tgt, smooth=smooth)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out} ({len(images)} image(s) x {len(methods)} method(s))")
    for m, (verdict, reason) in verdicts.items():
        print(f"  {m}: {verdict} ({reason})")
    return 0


def _verdicts(results, baseline: str) -> dict[str, tuple[str, str]]:
    """method -> (verdict, reason): deletion AUC against the random map, paired over the images."""
    import numpy as np
    import pandas as pd

    from audit.explain.verdicts import faithfulness_verdicts

    frames = []
    for m, (e, dele, rnd) in results.items():
        if dele is None:
            continue
        ok = np.asarray([not p for p in e.problems])
        frames.append(pd.DataFrame({
            "method": m, "row_id": np.arange(len(dele)),
            "deletion_auc": np.where(ok, dele, np.nan), "random_deletion_auc": np.where(ok, rnd, np.nan),
            "map_problem": [p or "" for p in e.problems],
        }))
    if not frames:
        return {}
    v = faithfulness_verdicts(pd.concat(frames, ignore_index=True), None, perturbation=baseline)
    return {r.method: (r.verdict, r.reason) for r in v.drop_duplicates("method").itertuples()}


def _predictions(adapter: Any, x: Any) -> tuple[list[str], list[float], Any] | None:
    """``(predicted class names, their probabilities, (B, C) probabilities)`` of a classifier; None for CLIP."""
    import torch

    if adapter.kind == "clip":
        return None
    with torch.no_grad():
        probs = torch.softmax(adapter.logits(x).float(), dim=-1).cpu()  # (B, C)
    names = list(adapter.class_names or [])
    idx = probs.argmax(-1).tolist()
    return ([names[i] if i < len(names) else str(i) for i in idx], [float(probs[b, i]) for b, i in enumerate(idx)],
            probs)


def _target_text(target: Any, names: Sequence[str], b: int) -> tuple[str | None, int | None]:
    """What image ``b``'s map explains, in words, and the class index (None: the predicted class or a prompt)."""
    from audit.explain import ClassTarget, PromptTarget

    if isinstance(target, PromptTarget):
        return f"prompt \u201c{target.text}\u201d", None
    if isinstance(target, ClassTarget) and target.index is not None:
        i = target.index if isinstance(target.index, int) else list(target.index)[b]
        return (names[i] if i < len(names) else str(i)), int(i)
    return None, None


def overlay_grid(pil, x, adapter, results, *, baseline: str = "blur", verdicts=None, target=None, smooth: bool = False):
    """Figure: rows = images, columns = the image then one map per method (OO API).

    Every map is drawn on its patch grid (``smooth``: bilinear instead) over the image in grey with a
    colour bar of its own range (per-image scale, :mod:`audit.viz.maps`); its title names the method's
    verdict (``verdicts``: method -> (verdict, reason)), the explained ``target`` and the predicted
    class with its probability (classifiers), its deletion AUC, the random map's and the deletion
    ``baseline``.
    """
    import numpy as np
    from matplotlib.figure import Figure

    from audit.explain.quality import draw_problem
    from audit.viz.figures import map_panel
    from audit.viz.maps import prediction_line

    n, k = len(pil), len(results)
    verdicts = verdicts or {}
    pred = _predictions(adapter, x)
    names = list(adapter.class_names or [])
    fig = Figure(figsize=(2.8 * (k + 1), 3.0 * n))
    axes = fig.subplots(n, k + 1, squeeze=False)
    shown = adapter.preprocess.denormalize(x).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        axes[i, 0].imshow(shown[i])
        axes[i, 0].set_title("image", fontsize=8)
        tgt, tgt_idx = _target_text(target, names, i)
        if pred is None:  # CLIP with a prompt: no classes, so no prediction
            note = prediction_line(target=tgt)
        else:
            pname, pscore, probs = pred
            note = prediction_line(target=pname[i] if tgt is None else tgt, prediction=pname[i], score=pscore[i],
                                   target_score=None if tgt_idx is None else float(probs[i, tgt_idx]))
        for j, (m, (e, dele, rnd)) in enumerate(results.items(), start=1):
            head = f"{m}: {verdicts[m][0]}" if m in verdicts else m
            if e.problems[i]:  # NaN/Inf or constant: name it, never draw it as a blank or uniform map
                draw_problem(axes[i, j], e.problems[i], image=shown[i])
                axes[i, j].set_title(m, fontsize=7)
                print(f"warning: {m}, image {i + 1}: {e.problems[i]}", file=sys.stderr)
                continue
            grid = e.grid_maps[i].detach().float().cpu().numpy()  # raw (gh, gw); normalised for display only
            if dele is None:
                title = f"{head}\n{note}\n(prompt: no deletion AUC)"
            else:
                title = (f"{head}\n{note}\ndeletion AUC {float(dele[i]):.2f} (random {float(rnd[i]):.2f}, "
                         f"{baseline} baseline)")
            map_panel(axes[i, j], shown[i], grid, title=title, smooth=smooth, fontsize=7)
    for ax in np.ravel(axes):
        ax.set_axis_off()
    fig.tight_layout(h_pad=2.5)
    return fig
