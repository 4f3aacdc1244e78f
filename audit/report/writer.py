"""write_report: one run -> report.html/.md/.pdf + audit.json; two runs -> a comparison report."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from audit.errors import UsageError
from audit.report.carried import carried_findings
from audit.report.pdf import REPORT_DPI
from audit.report.summary import INTERSECTION_SEP, AuditSummary, build_summary
from audit.runs import Run, atomic_path, readable, write_bytes, write_json, write_text

Format = Literal["html", "md", "pdf", "json"]
FORMATS: tuple[str, ...] = ("html", "md", "pdf", "json")
PERF_FIGURE_METRICS = (("accuracy", "__all__"), ("balanced_accuracy", "__macro__"))
FOREST_METRICS = ("accuracy", "balanced_accuracy", "ece")
# every report figure is rendered at REPORT_DPI and shown in the PDF at its design size (fonts >= 6 pt on
# paper); a gallery figure is 1 + methods panels of GALLERY_PANEL_INCHES each (7 inches for 4 methods)
GALLERY_PANEL_INCHES = 1.4


def _explained_targets(run: Run) -> dict[tuple[int, str], str]:
    """(row_id, method) -> the class the stored map explains (``faithfulness.target_class``)."""
    if not run.has_table("faithfulness"):
        return {}
    f = run.table("faithfulness")
    if "target_class" not in f.columns:
        return {}
    f = f[f["target_class"].notna()]
    return {(int(r), str(m)): str(c) for r, m, c in zip(f["row_id"], f["method"], f["target_class"])}


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise UsageError(f"unknown report format(s) {', '.join(map(repr, bad))}; choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(formats))


def load_image(run: Run, path: str) -> np.ndarray | None:
    """The image at ``path`` (absolute, or relative to the dataset root) as ``(H, W, 3)`` uint8, or None."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_absolute():
        root = (run.meta.get("dataset") or {}).get("root")
        p = Path(root) / p if root else run.path / p
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError):
        return None


def build_figures(summary: AuditSummary, run: Run) -> tuple[dict[str, bytes], list[str], list[bytes]]:
    """All report figures as PNG bytes: ``(figures, names of the performance figures, gallery images)``."""
    from audit.viz.figures import (
        faithfulness_bars,
        figure_to_png_bytes,
        forest_plot,
        interval_plot,
        overlay_figure,
        projection_scatter,
        sanity_plot,
    )

    def png(fig: Any) -> bytes:
        return figure_to_png_bytes(fig, dpi=REPORT_DPI)

    figs: dict[str, bytes] = {}
    perf_names: list[str] = []
    for metric, cls in PERF_FIGURE_METRICS:
        rows = [r.model_dump() for r in summary.performance if r.metric == metric and r.cls == cls]
        if rows:
            figs[metric] = png(interval_plot(rows, title=f"{metric} by group", xlabel=metric))
            perf_names.append(metric)
    forest = [d.model_dump() for d in summary.disparities if d.metric in FOREST_METRICS]
    if forest:
        figs["forest"] = png(forest_plot(forest))
    if summary.faithfulness:
        figs["faithfulness"] = png(faithfulness_bars([r.model_dump() for r in summary.faithfulness]))
    if summary.sanity:
        figs["sanity"] = png(sanity_plot([r.model_dump() for r in summary.sanity]))
    if run.has_table("projection") and summary.provenance.group_columns:
        proj = run.table("projection")
        hue = next((g for g in summary.provenance.group_columns if g in proj.columns), None)
        if hue is not None:
            figs["projection"] = png(projection_scatter(proj, hue=hue))
    if summary.clip is not None and summary.clip.harmful_rates:
        rows = [r.model_dump() for r in summary.clip.harmful_rates]
        figs["harmful"] = png(interval_plot(rows, value="rate", title="harmful-label rate by group",
                                                            xlabel="harmful-label rate"))
    if summary.slices:
        figs.update(_slice_strips(summary, run, png))
    figs.update(_component_figures(summary, run, png))
    gallery: list[bytes] = []
    targets = _explained_targets(run)
    for it in summary.gallery.items:
        img = load_image(run, it.path)
        if img is None:
            img = np.full((64, 64, 3), 128, dtype=np.uint8)
        maps, tgt = {}, {}
        for gm in it.maps:
            m = run.map_for(gm.method, it.row_id)
            if m is not None:
                maps[gm.method] = np.asarray(m, dtype=np.float32)
                if (it.row_id, gm.method) in targets:
                    tgt[gm.method] = targets[(it.row_id, gm.method)]
        # deletion / insertion AUCs are in the table under each figure: the panels carry what the
        # table does not (verdict, target, prediction and its probability, the colour scale)
        fig = overlay_figure(img, maps, show_maps=False, verdicts=summary.method_verdicts, prediction=it.pred,
                             score=it.score, targets=tgt, panel_inches=GALLERY_PANEL_INCHES)
        # (no figure title: every format puts the image's kind, label and prediction right beside it)
        gallery.append(png(fig))
    return figs, perf_names, gallery


def _slice_strips(summary: AuditSummary, run: Run, png: Any, *, max_slices: int = 4,
                  n_images: int = 6) -> dict[str, bytes]:
    """``slice_<id>``: a strip of the most typical members of each confirmed slice, captioned with
    label / prediction (the slice is about errors: a reader sees which of them are wrong)."""
    from audit.viz.figures import image_strip

    pred = run.table("predictions").set_index("row_id") if run.has_table("predictions") else None
    samples = run.table("samples").set_index("row_id")
    out: dict[str, bytes] = {}
    for sl in [r for r in summary.slices if r.confirmed][:max_slices]:
        imgs, caps = [], []
        for rid in sl.typical[:n_images]:
            if rid not in samples.index:
                continue
            img = load_image(run, str(samples.loc[rid, "path"]))
            imgs.append(img if img is not None else np.full((64, 64, 3), 128, dtype=np.uint8))
            if pred is not None and rid in pred.index:
                p = pred.loc[rid]
                mark = "" if bool(p.get("correct")) else " ✗"
                caps.append(f"{p.get('label')} → {p.get('pred')}{mark}")
        if imgs:
            out[f"slice_{sl.slice_id}"] = png(image_strip(imgs, caps))
    return out


def _component_figures(summary: AuditSummary, run: Run, png: Any) -> dict[str, bytes]:
    """``components_<i>`` per decomposed finding (:func:`audit.report.carried.carried_findings`): the heads x layers
    heat map of effect (every component of table ``components``) and the top head's maps by group."""
    from audit.report.schema import TOP_COMPONENTS
    from audit.viz.components import components_figure

    carried = carried_findings(summary)
    if not carried or not run.has_table("components"):
        return {}
    comp = run.table("components")
    maps = run.table("component_maps") if run.has_table("component_maps") else None
    out: dict[str, bytes] = {}
    for f in carried:
        rows = comp[comp["finding"].astype(str) == f.ref]
        if rows.empty:
            continue
        m = maps[maps["finding"].astype(str) == f.ref] if maps is not None and len(maps) else None
        out[f.figure] = png(components_figure(rows, m, attribute=f.attribute, groups=f.groups, top=TOP_COMPONENTS))
    return out


def write_single(run: Run, out_dir: Path, formats: Sequence[str], *, model_card: bool = False,
                 model_card_base: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Write the reports of one run into ``out_dir``; see :func:`write_report`."""
    summary = build_summary(run)
    out: dict[str, Path] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    if "json" in formats:
        write_json(out_dir / "audit.json", summary.model_dump(mode="json"))
        out["json"] = readable(out_dir / "audit.json")
    if {"html", "md", "pdf"} & set(formats):
        figs, perf_names, gallery = build_figures(summary, run)
        if "html" in formats:
            from audit.report.html import render_html

            write_text(out_dir / "report.html", render_html(summary, figures=figs, gallery_images=gallery,
                                                             perf_figures=perf_names))
            out["html"] = out_dir / "report.html"
        if "md" in formats:
            from audit.report.markdown import render_markdown

            fdir = out_dir / "figures"
            fdir.mkdir(exist_ok=True)
            files = {}
            for name, data in figs.items():
                write_bytes(fdir / f"{name}.png", data)
                files[name] = f"figures/{name}.png"
            gfiles = []
            for i, data in enumerate(gallery):
                write_bytes(fdir / f"gallery-{i:02d}.png", data)
                gfiles.append(f"figures/gallery-{i:02d}.png")
            write_text(out_dir / "report.md", render_markdown(summary, figure_files=files, gallery_files=gfiles,
                                                               perf_figures=perf_names))
            out["md"] = out_dir / "report.md"
        if "pdf" in formats:
            from audit.report.pdf import render_pdf

            with atomic_path(out_dir / "report.pdf") as tmp:
                render_pdf(summary, tmp, figures=figs, gallery_images=gallery, perf_figures=perf_names)
            out["pdf"] = readable(out_dir / "report.pdf")
    if model_card:
        from audit.report.modelcard import write_model_card

        out["model_card"] = write_model_card(summary, out_dir / "MODEL_CARD.md", base=model_card_base)
    return out


def write_report(
    run_dirs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    formats: Sequence[Format] = ("html", "md", "pdf", "json"),
    model_card: bool = False,
    model_card_base: str | os.PathLike[str] | None = None,
) -> dict[str, Path]:
    """Write the report of one run, or the comparison of two.

    Args:
        run_dirs: one run directory (report) or two (comparison: the second run is "B",
            differences are B - A).
        out_dir: where to write; default ``RUN/report`` for one run and
            ``RUN_B/comparison`` for two.
        formats: any of "html" (one self-contained file), "md" (with a figures/ folder),
            "pdf", "json" (audit.json, or comparison.json for two runs).
        model_card: also write MODEL_CARD.md (one run only).
        model_card_base: an existing README.md / model card whose "Bias, Risks, and
            Limitations" and "Evaluation" sections are replaced (the rest is kept).

    Returns:
        format -> written path ("html", "md", "pdf", "json", and "model_card").

    Raises:
        RunError: a run directory is missing, unfinished or damaged.
        UsageError: wrong number of runs or an unknown format.

    Example:
        >>> write_report(["runs/demo/vit-biased"], formats=("html", "json"))   # doctest: +SKIP
    """
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    dirs = [Path(d) for d in run_dirs]
    fmts = _check_formats(formats)
    if len(dirs) == 1:
        run = Run.open(dirs[0])
        out = Path(out_dir) if out_dir is not None else dirs[0] / "report"
        return write_single(run, out, fmts, model_card=model_card, model_card_base=model_card_base)
    if len(dirs) == 2:
        if model_card:
            raise UsageError("--model-card needs one run (it describes one model); got two runs to compare")
        from audit.report.compare import write_comparison

        a, b = Run.open(dirs[0]), Run.open(dirs[1])
        out = Path(out_dir) if out_dir is not None else dirs[1] / "comparison"
        return write_comparison(a, b, out, fmts)
    raise UsageError(f"report takes one run (report) or two runs (comparison); got {len(dirs)}")


__all__ = ["FORMATS", "INTERSECTION_SEP", "build_figures", "load_image", "write_report", "write_single"]
