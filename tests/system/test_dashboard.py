"""The dashboard in a real browser: Debian's headless Chromium driven by
Playwright, against the whole running system with api_token set."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.app.local_system import LocalSystem, wait_for
from core.media import ffmpeg_path, make_sample_clip
from tests.fixtures.hostile_http import HostileServer
from tests.system.test_system import FAST, passes, wait_state

pytestmark = pytest.mark.timeout(240)

CHROMIUM = "/usr/bin/chromium"
TOKEN = "dashboard-t0ken"
# Enough for a slow, loaded 2-core machine to show a job's whole life.
PAGE_TIMEOUT_MS = 120_000
# Nothing in the browser may reach beyond this machine, nor download anything.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

playwright_api = pytest.importorskip("playwright.sync_api")
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with LocalSystem(tmp_path_factory.mktemp("dashboard"),
                     {**FAST, "NOMMER_API_TOKEN": TOKEN}) as running:
        running.client.token = TOKEN
        yield running


@pytest.fixture(scope="module")
def clip(system) -> Path:
    path = system.media_dir / "in" / "clip.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    make_sample_clip(ffmpeg_path(system.settings), str(path), duration_s=3, size="320x240")
    return path


@pytest.fixture
def page(system, tmp_path):
    """A page of a fresh browser profile, logged in to the dashboard with the token."""
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 900})
        try:
            tab = browser.new_page()
            tab.set_default_timeout(PAGE_TIMEOUT_MS)
            tab.goto(f"http://127.0.0.1:{system.api_port}/")
            # No token yet: the API answers 401 and the page asks for one.
            tab.locator("#login").wait_for(state="visible")
            tab.fill("#token", TOKEN)
            tab.click("#login button")
            tab.locator("#login").wait_for(state="hidden")
            yield tab
        finally:
            browser.close()


def _row(page, job_id: str):
    return page.locator(f'#jobs tr[data-job-id="{job_id}"]')


def test_a_job_is_watched_to_finished_without_a_reload(system, clip, page, tmp_path):
    out = system.media_dir / "out" / "dashboard.mp4"
    job_id = system.client.submit(clip.as_uri(), out.as_uri(), passes())

    row = _row(page, job_id)
    row.locator(".state.FINISHED").wait_for()

    assert row.locator(".progress").inner_text().strip() == "100%"
    assert out.name in row.inner_text() and clip.name in row.inner_text()
    assert page.evaluate("sessionStorage.getItem('nommer_token')") == TOKEN
    assert page.locator("#queued").inner_text() == "0"
    assert page.locator("#encoders tbody tr").count() >= 1
    shot = tmp_path / "dashboard-finished.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_job_is_cancelled_then_retried_from_the_page(system, clip, page):
    long_clip = system.media_dir / "in" / "long.mp4"
    make_sample_clip(ffmpeg_path(system.settings), str(long_clip), duration_s=30,
                     size="640x480")
    out = system.media_dir / "out" / "cancelled.mp4"
    job_id = system.client.submit(long_clip.as_uri(), out.as_uri(), passes())
    row = _row(page, job_id)

    row.locator("button.cancel").click()
    row.locator(".state.CANCELLED").wait_for()

    assert system.client.job(job_id)["state"] == "CANCELLED"
    assert row.locator("button.cancel").count() == 0
    page.select_option("#state-filter", "CANCELLED")
    # The finished job of the other test leaves the list: only this one is CANCELLED.
    playwright_api.expect(page.locator("#jobs tbody tr")).to_have_count(1, timeout=PAGE_TIMEOUT_MS)
    assert page.locator("#jobs tbody tr").get_attribute("data-job-id") == job_id

    row.locator("button.retry").click()
    page.select_option("#state-filter", "")
    row.locator(".state:not(.CANCELLED)").wait_for()
    job = wait_state(system, job_id, {"FINISHED", "ERROR"}, timeout_s=180)
    assert job["state"] == "FINISHED" and job["attempts"] >= 1


def test_a_finished_jobs_notification_is_sent_again_from_the_page(system, clip, page):
    receiver = HostileServer()
    try:
        out = system.media_dir / "out" / "notified-again.mp4"
        job_id = system.client.submit(clip.as_uri(), out.as_uri(), passes(),
                                      receiver.url("/ok"))
        row = _row(page, job_id)
        row.locator(".state.FINISHED").wait_for()

        def finished_sent():
            return [r for r in receiver.received("/ok")
                    if r["form"].get("unique_id") == job_id
                    and r["form"].get("job_state") == "FINISHED"]

        wait_for(finished_sent, 30, what="the FINISHED notification")
        row.locator("button.notify").click()
        wait_for(lambda: len(finished_sent()) == 2, 30, what="FINISHED sent again")
    finally:
        receiver.close()
