"""Real-browser test: `streamlit run` on a free 127.0.0.1 port, every page opened in headless
Chromium through the sidebar navigation for a classifier and a CLIP run, at 1400×1000 and at
1024×768. On every page: no exception or error box, and nothing wider than the main column (no
horizontal overflow of the page; at 1400 px no table scrolls sideways either, so no column is cut
to "sma…"). A screenshot of each page is kept (tests/artifacts/dashboard/ or
$VISION_AUDIT_ARTIFACTS/dashboard/). Skipped, with the reason, without Chromium (`make browser`
installs it) or the playwright package."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from audit.runs import Run

CHROMIUM = "/usr/bin/chromium"
TITLES = ["Overview", "Explain", "Groups", "Slices", "Embeddings", "CLIP probe", "Compare", "Components"]
H1 = {"Compare": "Compare runs", "Slices": "Error slices nobody labelled", "Components": "Where a finding is carried"}
VIEWPORTS = [(1400, 1000), (1024, 768)]
WIDE = 1400  # at this width every table fits the main column as well
SHOT_HEIGHT = 2600  # Streamlit scrolls inside stMain: screenshots are taken with a tall viewport

WAIT_MS = 300_000  # generous: on a loaded 2-core machine a cold first page can take minutes

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(2400),
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (install it: make browser)"),
]

# What runs past the main column: the page itself, any element outside the dataframes, and (when
# asked) a dataframe whose own grid scrolls sideways. Error boxes: exceptions and st.error.
LAYOUT_JS = """
(tables) => {
  const main = document.querySelector('[data-testid="stMain"]');
  const block = main.querySelector('[data-testid="stMainBlockContainer"]') || main;
  const right = block.getBoundingClientRect().right - parseFloat(getComputedStyle(block).paddingRight) + 1;  // content box
  const out = [];
  if (main.scrollWidth > main.clientWidth + 1) out.push(`the main column scrolls: ${main.scrollWidth} > ${main.clientWidth} px`);
  for (const el of block.querySelectorAll('*')) {
    if (el.closest('[data-testid="stDataFrame"]')) continue;
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > right + 1) {
      out.push(`${el.tagName.toLowerCase()} ${el.getAttribute('data-testid') || ''} "${(el.innerText || '').slice(0, 40)}" ends at ${Math.round(r.right)} > ${Math.round(right)} px`);
      if (out.length > 5) break;
    }
  }
  if (tables) {
    for (const s of block.querySelectorAll('[data-testid="stDataFrame"] .dvn-scroller')) {
      if (s.scrollWidth > s.clientWidth + 1) {
        const head = [...s.closest('[data-testid="stDataFrame"]').querySelectorAll('[role="columnheader"]')]
          .map(h => h.innerText.trim()).filter(Boolean).slice(0, 6).join(', ');
        out.push(`a table scrolls sideways (${s.scrollWidth} > ${s.clientWidth} px; columns ${head})`);
      }
    }
  }
  const errors = [...block.querySelectorAll('[data-testid="stException"], [data-testid="stAlertContentError"]')]
    .map(e => e.innerText.slice(0, 200));
  return {overflow: out, errors: errors};
}
"""

CHIPS_JS = """
() => [...document.querySelectorAll('[data-testid="stMain"] [data-baseweb="tag"] span')]
  .filter(s => s.scrollWidth > s.clientWidth + 1).map(s => s.innerText)
"""


@pytest.fixture(scope="module")
def artifacts() -> Path:
    root = Path(os.environ.get("VISION_AUDIT_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts")
    out = root / "dashboard"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _open(page, title: str) -> None:
    from audit.bench.dashboard import wait_rendered

    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    time.sleep(0.3)  # right after the click the app may still read "notRunning" from the previous run
    wait_rendered(page, title=H1.get(title, title), timeout_ms=WAIT_MS)


def test_every_page_in_a_real_browser(clf_run: Run, clip_run: Run, control_run: Run, artifacts: Path) -> None:
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from playwright.sync_api import sync_playwright

    from audit.bench.dashboard import launch_browser, serve, wait_rendered

    runs = [clf_run, clip_run, control_run]
    problems: list[str] = []
    with serve([r.path for r in runs], log_path=artifacts / "server.log") as url, sync_playwright() as p:
        assert url.startswith("http://127.0.0.1:")
        browser = launch_browser(p, executable=CHROMIUM)
        try:
            for width, height in VIEWPORTS:
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(url, wait_until="commit")
                wait_rendered(page, title="Overview", timeout_ms=WAIT_MS)
                for run_index, tag in [(0, "classifier"), (1, "clip")]:
                    if run_index:
                        page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").click()
                        page.get_by_role("option", name=f"{clip_run.path.parent.name}/{clip_run.path.name}").click()
                    for title in TITLES:
                        _open(page, title)
                        shot = artifacts / f"{width}x{height}-{tag}-{title.lower().replace(' ', '_')}.png"
                        res = page.evaluate(LAYOUT_JS, width >= WIDE)
                        page.set_viewport_size({"width": width, "height": SHOT_HEIGHT})
                        wait_rendered(page, title=H1.get(title, title), timeout_ms=WAIT_MS)
                        page.screenshot(path=str(shot))
                        page.set_viewport_size({"width": width, "height": height})
                        assert shot.stat().st_size > 10_000
                        problems += [f"{width}x{height} {tag} {title}: error box: {e} (see {shot.name})"
                                     for e in res["errors"]]
                        problems += [f"{width}x{height} {tag} {title}: {o} (see {shot.name})" for o in res["overflow"]]
                    # the selected run is the one shown
                    _open(page, "Overview")
                    spec = runs[run_index].meta["model"]["spec"]
                    assert page.get_by_text(spec, exact=True).count() >= 1
                # a chosen filter value is shown whole, not cut to "d…"
                _open(page, "Explain")
                page.get_by_test_id("stMultiSelect").first.click()
                page.get_by_role("option").first.click()
                page.keyboard.press("Escape")
                time.sleep(0.3)
                wait_rendered(page, title="Explain", timeout_ms=WAIT_MS)
                cut = page.evaluate(CHIPS_JS)
                problems += [f"{width}x{height} Explain: filter chip cut: {c!r}" for c in cut]
                page.close()
        finally:
            browser.close()
    assert not problems, "\n".join(problems)
