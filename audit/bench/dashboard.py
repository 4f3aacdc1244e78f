"""Dashboard speed in a real browser: ``vision-audit bench dashboard [--n N] [--out DIR] [--keep]``.

Builds a synthetic run of ``n`` (default 10,000) images with 4 stored explanation methods, starts
``streamlit run dashboards/app.py`` on a free 127.0.0.1 port, and drives headless Chromium with
Playwright to measure

* first page: from navigation to the Overview page fully rendered (title shown, no script running,
  every image loaded): the first visit of each of ``--servers`` fresh servers (cold caches; the
  median is the figure) and 5 later visits;
* the floor: the same measurement on a two-element Streamlit app (Streamlit's own load time in
  this browser on this machine, which no app can beat);
* switching images in Explain: from the click on "next ▶" to the new image's overlays rendered,
  the median over ``--switches`` (default 7) clicks.

It prints each figure against its goal (first page ≤ 2 s, switch ≤ 0.5 s) and returns 0 when
both are met, 1 otherwise. Needs Chromium at ``/usr/bin/chromium`` (or ``--chromium PATH``) and
the ``playwright`` package.

The run builder here is self-contained and scales to any ``n``: per-row tables, arrays and maps are
synthetic (shapes on three backgrounds with a planted accuracy gap, maps concentrated on the
object), the group tables are computed with :mod:`audit.stats`. The test factory
(``tests/run_factory.make_run``) is not used because its embedding statistics are quadratic in n
(an n×n kernel matrix: ~25 GB at n = 10,000).

The server helpers (:func:`serve`, :func:`wait_rendered`, :func:`launch_browser`) are also used by
the real-browser test in ``tests/app/``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import UsageError

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
GOAL_FIRST_PAGE_S = 2.0
GOAL_SWITCH_S = 0.5
METHODS = ("rollout", "gae", "gradcam", "ig")
CLASSES = ("circle", "square", "triangle", "cross")
BACKGROUNDS = ("plain", "grass", "water")
COLOURS = ("red", "blue")


# ----------------------------------------------------------------------------- run builder
def _render_images(labels: np.ndarray, bgs: np.ndarray, cols: np.ndarray, rng: np.random.Generator,
                   size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images (n, size, size, 3) uint8, masks (n, size, size) bool)``: one shape per image."""
    n = labels.size
    bg_rgb = np.array([(225, 225, 225), (70, 150, 60), (60, 110, 200)], dtype=np.float32)
    fg_rgb = np.array([(210, 40, 40), (30, 30, 170)], dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    r = rng.integers(size // 6, size // 4, n)
    cx = rng.integers(r + 2, size - r - 2)
    cy = rng.integers(r + 2, size - r - 2)
    dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]  # (n, s, s)
    rr = r[:, None, None]
    masks = np.select(
        [labels[:, None, None] == 0, labels[:, None, None] == 1, labels[:, None, None] == 2],
        [dx**2 + dy**2 <= rr**2, (np.abs(dx) <= rr) & (np.abs(dy) <= rr),
         (np.abs(dy) <= rr) & (np.abs(dx) <= (dy + rr) / 2)],
        ((np.abs(dx) <= rr // 3) & (np.abs(dy) <= rr)) | ((np.abs(dy) <= rr // 3) & (np.abs(dx) <= rr)),
    )
    img = np.broadcast_to(bg_rgb[bgs][:, None, None, :], (n, size, size, 3)).copy()
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    img[masks] = fg_rgb[np.repeat(cols, masks.reshape(n, -1).sum(1))]
    return np.clip(img, 0, 255).astype(np.uint8), masks


def build_run(path: str | os.PathLike[str], *, n: int = 10_000, methods: Sequence[str] = METHODS,
              grid: tuple[int, int] = (8, 8), image_size: int = 64, seed: int = 0, n_boot: int = 200) -> Path:
    """Write a complete synthetic run of ``n`` images with maps of every method for every image.

    Args:
        path: run directory (replaced if it exists).
        n: images.
        methods: stored explanation methods.
        grid: patch grid of the maps (image_size must be divisible by it).
        image_size: side of the square PNG images.
        seed: seed of everything random.
        n_boot: bootstrap replicates (and permutations) for the group tables.

    Returns:
        The run directory.
    """
    import pandas as pd
    from PIL import Image

    from audit.runs import Run
    from audit.stats.performance import disparity_tests, group_performance

    path = Path(path)
    rng = np.random.default_rng(seed)
    run = Run.create(path, overwrite=True)
    img_dir = path / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    labels = rng.integers(0, len(CLASSES), n)
    bgs = rng.integers(0, len(BACKGROUNDS), n)
    cols = (rng.random(n) < np.where(bgs == 2, 0.12, 0.35)).astype(int)
    correct = rng.random(n) < np.where(bgs == 2, 0.70, 0.93)
    preds = np.where(correct, labels, (labels + rng.integers(1, len(CLASSES), n)) % len(CLASSES))
    score = np.where(correct, rng.beta(9, 2, n), rng.beta(4, 4, n) * 0.6 + 0.3)
    gh, gw = grid
    ph, pw = image_size // gh, image_size // gw
    paths: list[str] = []
    maps = {m: np.empty((n, gh, gw), dtype=np.float32) for m in methods}
    quality = {"rollout": 0.5, "gae": 0.9, "gradcam": 0.75, "ig": 0.8}
    for start in range(0, n, 500):
        stop = min(n, start + 500)
        sl = slice(start, stop)
        imgs, masks = _render_images(labels[sl], bgs[sl], cols[sl], rng, image_size)
        obj = masks.reshape(stop - start, gh, ph, gw, pw).mean(axis=(2, 4))  # (b, gh, gw) object share
        for m in methods:
            q = quality.get(m, 0.6)
            maps[m][sl] = q * obj + (1 - q) * rng.random(obj.shape)
        for j in range(stop - start):
            f = img_dir / f"img_{start + j:05d}.png"
            Image.fromarray(imgs[j]).save(f, compress_level=1)
            paths.append(str(f))
    row_id = np.arange(n, dtype=np.int64)
    groups = {"background": np.array(BACKGROUNDS)[bgs], "colour": np.array(COLOURS)[cols]}
    samples = pd.DataFrame({"row_id": row_id, "image_id": [f"img_{i:05d}" for i in range(n)], "path": paths,
                            "label": np.array(CLASSES)[labels], **groups, "mask_path": None})
    pred = pd.DataFrame({"row_id": row_id, "label": np.array(CLASSES)[labels], "label_idx": labels.astype(np.int64),
                         "pred": np.array(CLASSES)[preds], "pred_idx": preds.astype(np.int64), "score": score,
                         "label_score": np.where(correct, score, (1 - score) / 3), "correct": correct, **groups})
    run.write_table("samples", samples)
    run.write_table("predictions", pred)
    emb = (rng.normal(size=(len(CLASSES), 32))[labels] + rng.normal(size=(3, 32))[bgs]
           + rng.normal(size=(n, 32))).astype(np.float32)
    run.write_array_file("embeddings", {"image": emb, "row_id": row_id})
    u, s, _ = np.linalg.svd(emb - emb.mean(0), full_matrices=False)
    run.write_table("projection", pd.DataFrame({"row_id": row_id, "x": u[:, 0] * s[0], "y": u[:, 1] * s[1],
                                                "method": "pca", **groups, "label": pred["label"],
                                                "pred": pred["pred"], "correct": correct}))
    faith = []
    for m in methods:
        run.write_maps(m, maps[m], row_id)
        mass = maps[m].reshape(n, -1)
        share = np.sort(mass, axis=1)[:, -gh * gw // 4:].sum(1) / mass.sum(1)  # top-quarter mass share
        faith.append(pd.DataFrame({
            "row_id": row_id, "method": m, "deletion_auc": np.clip(0.6 - 0.5 * share + rng.normal(0, 0.02, n), 0, 1),
            "insertion_auc": np.clip(0.2 + 0.6 * share + rng.normal(0, 0.02, n), 0, 1),
            "random_deletion_auc": np.clip(0.45 + rng.normal(0, 0.03, n), 0, 1),
            "random_insertion_auc": np.clip(0.42 + rng.normal(0, 0.03, n), 0, 1),
            "pointing_hit": None, "mass_in_mask": None, "target_class": pred["pred"]}))
    run.write_table("faithfulness", pd.concat(faith, ignore_index=True))
    gcols = ["background", "colour"]
    run.write_table("group_performance", group_performance(pred, group_cols=gcols, n_boot=n_boot, seed=seed))
    run.write_table("disparities", disparity_tests(pred, group_cols=gcols, n_boot=n_boot, n_perm=n_boot, seed=seed))
    run.meta.update({
        "config": {"model": {"spec": "bench:synthetic", "checkpoint": None},
                   "stats": {"min_group_size": 50, "alpha": 0.05, "n_boot": n_boot, "n_perm": n_boot}},
        "model": {"spec": "bench:synthetic", "kind": "classifier", "family": "bench", "fingerprint": f"synthetic-{seed}",
                  "class_names": list(CLASSES), "n_blocks": 4, "name": "synthetic benchmark run"},
        "dataset": {"manifest": "(synthetic)", "fingerprint": f"synthetic-{n}-{seed}", "n_rows": n, "n_used": n,
                    "label_column": "label", "group_columns": gcols, "has_masks": False, "root": str(img_dir)},
        "device": "cpu", "dtype": "float32", "backend": "local",
        "headline": [f"synthetic benchmark run: {n:,} images, {len(methods)} methods with a map for every image"],
        "limitations": ["maps, embeddings and faithfulness scores are synthetic (dashboard benchmark)"],
    })
    run.finish("complete")
    return path


# ----------------------------------------------------------------------------- server and browser
def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(runs: Sequence[str | os.PathLike[str]], *, port: int | None = None, policy: str | None = None,
          timeout: float = 90.0, log_path: str | os.PathLike[str] | None = None, app: Path = APP) -> Iterator[str]:
    """Run ``streamlit run dashboards/app.py`` headless on 127.0.0.1 and yield its base URL.

    Waits for ``/_stcore/health``; stops the server (its process only) on exit.

    Raises:
        UsageError: the server did not come up within ``timeout`` seconds (its log is quoted).
    """
    port = port or free_port()
    from audit.dashboard_command import streamlit_command

    cmd = streamlit_command(app, host="127.0.0.1", port=port, runs=runs,
                            extra=("--server.fileWatcherType", "none", "--server.runOnSave", "false"))
    if policy:
        cmd += ["--policy", str(policy)]
    log = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()  # noqa: SIM115
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(APP.parent.parent))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                tail = log.read().decode("utf-8", "replace")[-3000:]
                raise UsageError(f"the dashboard server did not start on {url} (exit {proc.poll()}):\n{tail}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def launch_browser(playwright: Any, *, executable: str = CHROMIUM) -> Any:
    """Headless Chromium from ``executable`` with the flags the project uses."""
    return playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)


_IDLE_JS = """
(title) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (app.getAttribute('data-test-connection-state') !== 'CONNECTED') return false;
  if (app.querySelector('[data-testid="stMain"] [data-testid="stSkeleton"]')) return false;  // lazy parts
  const h = [...document.querySelectorAll('h1')].map(e => e.textContent.trim());
  if (title && !h.some(t => t.startsWith(title))) return false;
  const imgs = [...app.querySelectorAll('[data-testid="stMain"] img')];
  return imgs.every(i => i.complete && i.naturalWidth > 0);
}
"""


def wait_rendered(page: Any, *, title: str | None = None, timeout_ms: float = 300_000) -> None:
    """Wait until the app shows ``title`` as its h1, no script is running and every image has loaded.

    Uses the ``data-test-script-state`` attribute Streamlit sets on ``stApp`` ("running" /
    "notRunning"). After a click, wait first for a change you expect (e.g. new text): right after
    the click the state may still read "notRunning" from the previous run.
    """
    page.wait_for_selector('[data-testid="stAppViewContainer"]', timeout=timeout_ms)
    page.wait_for_function(_IDLE_JS, arg=title, timeout=timeout_ms, polling=20)


_HEADING_JS = "() => ([...document.querySelectorAll('h3')].map(e => e.textContent.trim())" \
              ".find(t => t.startsWith('Image #')) || '')"
_HEADING_CHANGED_JS = "(b) => { const t = (" + _HEADING_JS + ")(); return t !== '' && t !== b; }"


def _image_heading(page: Any) -> str:
    """Text of the Explain page's "Image #<row id>" heading ('' when absent)."""
    return str(page.evaluate(_HEADING_JS))


def _page_load(browser: Any, url: str, title: str) -> float:
    """Seconds from navigation to ``title``'s page fully rendered, in a new tab."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        t0 = time.perf_counter()
        page.goto(url, wait_until="commit")
        wait_rendered(page, title=title)
        return time.perf_counter() - t0
    finally:
        page.close()


def first_page(url: str, *, visits: int = 1, chromium: str = CHROMIUM, title: str = "Overview") -> list[float]:
    """Load times of ``visits`` successive first visits (new tabs) of the app at ``url``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_browser(p, executable=chromium)
        try:
            return [_page_load(browser, url, title) for _ in range(visits)]
        finally:
            browser.close()


def measure(url: str, *, switches: int = 7, warm_visits: int = 5, chromium: str = CHROMIUM) -> dict[str, Any]:
    """Drive the dashboard at ``url`` (a fresh server) and return the timings in seconds."""
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = launch_browser(p, executable=chromium)
        try:
            out["first_page_cold_s"] = _page_load(browser, url, "Overview")
            out["first_page_warm_s"] = [_page_load(browser, url, "Overview") for _ in range(warm_visits)]
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            t0 = time.perf_counter()
            page.goto(f"{url}/explain", wait_until="commit")
            wait_rendered(page, title="Explain")
            out["explain_page_s"] = time.perf_counter() - t0
            times = []
            for _ in range(switches):
                before = _image_heading(page)
                t0 = time.perf_counter()
                page.get_by_role("button", name="next ▶").click()
                page.wait_for_function(_HEADING_CHANGED_JS, arg=before, timeout=300_000, polling=10)
                wait_rendered(page, title="Explain")
                times.append(time.perf_counter() - t0)
            out["switch_s"] = times
            out["switch_median_s"] = statistics.median(times)
        finally:
            browser.close()
    return out


_FLOOR_APP = '''import streamlit as st

st.title("Overview")
st.write("The smallest page: Streamlit's own load time in this browser on this machine.")
'''


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vision-audit bench dashboard``."""
    ap = argparse.ArgumentParser(prog="vision-audit bench dashboard", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="images in the synthetic run (default 10000)")
    ap.add_argument("--out", type=Path, help="where to build the run (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the built run")
    ap.add_argument("--reuse", action="store_true", help="reuse a complete run already at --out")
    ap.add_argument("--switches", type=int, default=7, help="image switches to time (median; default 7)")
    ap.add_argument("--servers", type=int, default=3,
                    help="fresh servers whose first page is timed (median; default 3)")
    ap.add_argument("--chromium", default=CHROMIUM)
    args = ap.parse_args(list(argv or []))
    if not Path(args.chromium).is_file():
        raise UsageError(f"Chromium not found at {args.chromium}; install it (`make browser`) or pass --chromium PATH")
    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.mkdtemp(prefix="vision-audit-bench-")
        out = Path(tmp) / "run"
    try:
        if args.reuse and (out / "run.json").is_file():
            print(f"reusing the run at {out}")
        else:
            t0 = time.perf_counter()
            build_run(out, n=args.n)
            print(f"built a {args.n:,}-image run with {len(METHODS)} methods in {time.perf_counter() - t0:.1f} s: {out}")
        t0 = time.perf_counter()
        with serve([out]) as url:
            print(f"server up in {time.perf_counter() - t0:.1f} s at {url}")
            res = measure(url, switches=args.switches, chromium=args.chromium)
        colds = [res["first_page_cold_s"]]
        for _ in range(max(0, args.servers - 1)):
            with serve([out]) as url:
                colds += first_page(url, chromium=args.chromium)
        with tempfile.TemporaryDirectory() as d:  # the floor: a two-element Streamlit app, same browser
            floor_app = Path(d) / "floor.py"
            floor_app.write_text(_FLOOR_APP)
            with serve([], app=floor_app) as url:
                floor = first_page(url, visits=5, chromium=args.chromium)
    finally:
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    cold = statistics.median(colds)
    warm = statistics.median(res["first_page_warm_s"])
    ok_first = cold <= GOAL_FIRST_PAGE_S
    ok_switch = res["switch_median_s"] <= GOAL_SWITCH_S

    def each(ts: Sequence[float]) -> str:
        return ", ".join(f"{t:.2f}" for t in ts)

    print(f"first page, fresh server: median {cold:.2f} s over {len(colds)} servers ({each(colds)})  "
          f"goal ≤ {GOAL_FIRST_PAGE_S} s  {'OK' if ok_first else 'MISSED'}")
    print(f"first page, later visits: median {warm:.2f} s ({each(res['first_page_warm_s'])})")
    print(f"Streamlit floor (two-element app, same browser): median {statistics.median(floor):.2f} s ({each(floor)})")
    print(f"Explain page first render:       {res['explain_page_s']:.2f} s")
    print(f"switch image in Explain: median {res['switch_median_s']:.3f} s over {len(res['switch_s'])} "
          f"(each: {', '.join(f'{t:.3f}' for t in res['switch_s'])})  goal ≤ {GOAL_SWITCH_S} s  "
          f"{'OK' if ok_switch else 'MISSED'}")
    return 0 if ok_first and ok_switch else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
