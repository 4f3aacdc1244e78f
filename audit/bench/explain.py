"""``vision-audit bench explain``: cost of the explanation methods against their baselines.

Every ratio is measured in one process on the same batch, alternating ours and the baseline in
each repeat, and reports the median over repeats (after one warm-up call of each):

* capture + rollout  ÷ plain forward with the default fused attention      goal ≤ 1.25
* GAE                ÷ plain forward + backward (fused attention)           goal ≤ 1.30
* our IG (grid)      ÷ raw captum IG, same n_steps and internal_batch_size  goal ≤ 1.05
* our Grad-CAM       ÷ pytorch-grad-cam GradCAM on the same layer           goal ≤ 1.00
* head/MLP decompose ÷ plain forward of the same batch (last half of blocks) goal ≤ 1.50
  (on request: ``--methods decompose``)

Default: timm ``vit_small_patch16_224`` (random weights), batch 16, 224x224, CPU, 5 repeats. Any timm
model the adapters load works (``--model swin_tiny_patch4_window7_224``, ``--model convnext_atto``); the
Grad-CAM layer and pytorch-grad-cam's ``reshape_transform`` come from the adapter (``gradcam_layer``,
``gradcam_reshape``), and models without attention maps skip rollout and GAE with a note.
Exit code 0 whatever the outcome (a benchmark reports, it does not gate); 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

GOALS = {"rollout": 1.25, "gae": 1.30, "ig": 1.05, "gradcam": 1.00, "decompose": 1.50}
ALL = tuple(g for g in GOALS if g != "decompose")  # the default cases; decompose on request (--methods)


def _timer(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cases(adapter: Any, x: torch.Tensor, *, ig_steps: int, ibs: int | None, which: tuple[str, ...]):
    """(name, ours, baseline) callables; all closures over the same batch."""
    from captum.attr import IntegratedGradients

    from audit.explain.attention import attention_rollout
    from audit.explain.captum_methods import ig_method, make_baseline
    from audit.explain.gae import gae
    from audit.explain.gradcam import gradcam
    from audit.explain.targets import ClassTarget

    model = adapter.model
    layout = adapter.token_layout(tuple(x.shape[-2:]))
    target = ClassTarget(None).resolve(adapter, x)  # resolved once, outside the timings
    idx = list(target.index)  # type: ignore[arg-type]
    black = make_baseline(adapter, x, "black")

    def plain_forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        xi = x.detach().clone().requires_grad_(True)
        y = model(xi).gather(1, torch.tensor(idx)[:, None]).sum()
        torch.autograd.grad(y, [xi])

    cases = []
    if not adapter.attention_maps:  # Swin / ConvNeXt: no attention maps for rollout / GAE
        which = tuple(m for m in which if m not in ("rollout", "gae"))
    if "rollout" in which:
        cases.append(
            (
                "rollout",
                "capture + rollout",
                lambda: attention_rollout(adapter, x),
                "plain forward",
                plain_forward,
            )
        )
    if "gae" in which:
        cases.append(
            ("gae", "GAE", lambda: gae(adapter, x, target=target), "forward + backward", forward_backward)
        )
    if "ig" in which:

        def ours_ig() -> None:
            ig_method(adapter, x, target=target, baseline="black", n_steps=ig_steps, internal_batch_size=ibs)

        def raw_ig() -> None:
            IntegratedGradients(model).attribute(
                x.detach().clone().requires_grad_(True),
                baselines=black,
                target=idx,
                n_steps=ig_steps,
                internal_batch_size=ibs,
            )

        cases.append(("ig", f"IG (n_steps={ig_steps}, ibs={ibs})", ours_ig, "raw captum IG", raw_ig))
    if "gradcam" in which:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        reshape = adapter.gradcam_reshape(layout)  # tokens / channels-last -> (B, C, gh, gw); None: already so
        tg = [ClassifierOutputTarget(i) for i in idx]

        def grad_cam_lib() -> None:
            # built per call and released (its hooks would otherwise slow every other case down)
            with GradCAM(model=model, target_layers=[adapter.gradcam_layer()], reshape_transform=reshape) as cam:
                cam(input_tensor=x, targets=tg)

        cases.append(
            ("gradcam", "Grad-CAM", lambda: gradcam(adapter, x, target=target), "pytorch-grad-cam", grad_cam_lib)
        )
    if "decompose" in which and adapter.attention_maps:
        from audit.components.decompose import decompose

        view = adapter.residual_view()  # built once, as the pipeline does per run
        cases.append(("decompose", "head/MLP decomposition", lambda: decompose(adapter, x, view=view),
                      "plain forward", plain_forward))
    return cases


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    ap = argparse.ArgumentParser(prog="vision-audit bench explain", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_small_patch16_224", help="timm model name (random weights)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224, help="square input size (the model is built for it)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per case (median; >= 5 for claims)")
    ap.add_argument("--ig-steps", type=int, default=8)
    ap.add_argument("--internal-batch-size", type=int, default=32)
    ap.add_argument("--methods", default=",".join(ALL), help=f"comma-separated subset of {','.join(GOALS)} (default {','.join(ALL)})")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) and 2
    which = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    bad = [m for m in which if m not in GOALS]
    if bad or args.batch < 1 or args.repeats < 1 or args.size < 16:
        print(
            f"error: unknown methods {bad} (choose from {tuple(GOALS)}) or bad --batch/--repeats/--size",
            file=sys.stderr,
        )
        return 2
    before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, which)
    finally:
        torch.set_num_threads(before)


def _run(args: argparse.Namespace, which: tuple[str, ...]) -> int:
    from audit.errors import ModelLoadError
    from audit.models import load_model

    torch.manual_seed(0)
    try:
        adapter = load_model(f"timm:{args.model}", pretrained=False, img_size=args.size)
    except (TypeError, ModelLoadError):  # CNNs (ConvNeXt) take no img_size: any multiple of their stride
        adapter = load_model(f"timm:{args.model}", pretrained=False)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    print(
        f"model timm:{args.model} (random weights), batch {args.batch}, {args.size}x{args.size}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.repeats} repeats"
    )
    if args.repeats < 5:
        print("note: fewer than 5 repeats: a smoke run, not a claim")
    if not adapter.attention_maps and {"rollout", "gae"} & set(which):
        print(f"note: rollout/GAE left out: {adapter.attention_refusal}")
    cases = _cases(adapter, x, ig_steps=args.ig_steps, ibs=args.internal_batch_size, which=which)
    times: dict[str, tuple[list[float], list[float]]] = {c[0]: ([], []) for c in cases}
    for _, _, ours, _, base in cases:  # warm-up
        ours()
        base()
    for r in range(args.repeats):
        for key, _, ours, _, base in cases:
            if r % 2:  # alternate the order to cancel drift
                times[key][1].append(_timer(base))
                times[key][0].append(_timer(ours))
            else:
                times[key][0].append(_timer(ours))
                times[key][1].append(_timer(base))
    header = f"{'case':<28} {'ours s':>9} {'baseline':<20} {'base s':>9} {'ratio':>7} {'goal':>6}  result"
    print(header)
    print("-" * len(header))
    for key, label, _, blabel, _ in cases:
        o, b = statistics.median(times[key][0]), statistics.median(times[key][1])
        ratio = o / b
        ok = "pass" if ratio <= GOALS[key] else "miss"
        print(f"{label:<28} {o:>9.3f} {blabel:<20} {b:>9.3f} {ratio:>7.3f} {GOALS[key]:>6.2f}  {ok}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
