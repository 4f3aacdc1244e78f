"""Real-browser test: `streamlit run` on a free 127.0.0.1 port, every page opened in headless
Chromium through the sidebar navigation for a classifier and a CLIP run; a screenshot of each
page is kept (tests/artifacts/dashboard/ or $VISION_AUDIT_ARTIFACTS/dashboard/), and the test
fails if Streamlit shows an exception element."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from audit.runs import Run

CHROMIUM = "/usr/bin/chromium"
TITLES = ["Overview", "Explain", "Groups", "Embeddings", "CLIP probe", "Compare"]
H1 = {"Compare": "Compare runs"}

WAIT_MS = 300_000  # generous: on a loaded 2-core machine a cold first page can take minutes

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (install it: make browser)"),
]


@pytest.fixture(scope="module")
def artifacts() -> Path:
    root = Path(os.environ.get("VISION_AUDIT_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts")
    out = root / "dashboard"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_every_page_in_a_real_browser(clf_run: Run, clip_run: Run, control_run: Run, artifacts: Path) -> None:
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from playwright.sync_api import sync_playwright

    from audit.bench.dashboard import launch_browser, serve, wait_rendered

    runs = [clf_run, clip_run, control_run]
    with serve([r.path for r in runs], log_path=artifacts / "server.log") as url, sync_playwright() as p:
        assert url.startswith("http://127.0.0.1:")
        browser = launch_browser(p, executable=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.goto(url, wait_until="commit")
            wait_rendered(page, title="Overview", timeout_ms=WAIT_MS)
            for run_index, tag in [(0, "classifier"), (1, "clip")]:
                if run_index:
                    page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").click()
                    page.get_by_role("option", name=f"{clip_run.path.parent.name}/{clip_run.path.name}").click()
                for title in TITLES:
                    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
                    wait_rendered(page, title=H1.get(title, title), timeout_ms=WAIT_MS)
                    shot = artifacts / f"{tag}-{title.lower().replace(' ', '_')}.png"
                    page.screenshot(path=str(shot))  # Streamlit scrolls inside stMain: a tall viewport
                    errors = page.locator('[data-testid="stException"]')
                    assert errors.count() == 0, f"{tag} {title}: {errors.first.inner_text()} (see {shot})"
                    assert shot.stat().st_size > 10_000
                # the selected run is the one shown
                page.get_by_test_id("stSidebarNav").get_by_text("Overview", exact=True).click()
                wait_rendered(page, title="Overview", timeout_ms=WAIT_MS)
                spec = runs[run_index].meta["model"]["spec"]
                assert page.get_by_text(spec, exact=True).count() >= 1
        finally:
            browser.close()
