"""The dashboard in a real browser: the system Chromium driven by Playwright.

One journey against a full server (role "all": API, scheduler, worker) on
loopback, seeded with a drifting and a healthy task: sign in (a wrong token
first), overview worst first, the task page's charts, Recalibrate until the
worker's job succeeds and activates a new version, roll back with the
confirmation step, sign out.
Screenshots of every page go to artifacts/screenshots/.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.app import create_app
from monitor.dashboard.session import SESSION_COOKIE
from monitor.runtime import ROLE_SERVICES
from monitor.settings import Settings
from tests.dashboard.conftest import ADMIN_TOKEN
from tests.dashboard.seed import DRIFTING, HEALTHY, seed_dashboard
from tests.support.servers import serve_app

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which("chromium") is None,
        reason="no system Chromium on PATH (apt-get install -y chromium)",
    ),
]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TERMINAL = ("succeeded", "rejected", "failed")


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def browser() -> Any:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_operator_journey(
    browser: Any, dashboard_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    seed_dashboard(sessions)
    worker_runs = bool(ROLE_SERVICES.get("worker"))
    with serve_app(create_app(dashboard_settings, role="all")) as base:
        page = browser.new_page(viewport={"width": 1360, "height": 900})

        # Not signed in: sent to the login page; a wrong token is refused.
        page.goto(f"{base}/dashboard")
        assert page.url.startswith(f"{base}/dashboard/login")
        shot(page, "01-login")
        page.fill("input[name=token]", "not-the-token")
        with page.expect_response(lambda r: r.url.endswith("/dashboard/login")) as answer:
            page.click("button[type=submit]")
        assert answer.value.status == 401
        assert "not the admin token" in page.inner_text("main")
        shot(page, "02-login-refused")

        # Signed in: the overview lists the drifting (firing) task first.
        page.fill("input[name=token]", ADMIN_TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/dashboard")
        tasks = page.locator("tr[data-task]")
        assert tasks.count() == 2
        assert tasks.nth(0).get_attribute("data-task") == DRIFTING
        assert tasks.nth(1).get_attribute("data-task") == HEALTHY
        assert "firing" in tasks.nth(0).inner_text()
        shot(page, "03-overview")

        # The task page: reliability diagrams with bars, for the active version and raw.
        page.click(f"a.task-link:text('{DRIFTING}')")
        page.wait_for_url(f"{base}/dashboard/tasks/{DRIFTING}")
        assert page.locator("svg.reliability").count() == 2
        assert page.locator("svg.reliability rect.bar").count() >= 5
        assert page.locator("svg.timeseries polyline").count() >= 2
        assert page.locator("tr.is-active[data-version='2']").count() == 1
        shot(page, "04-task")

        # Recalibrate: the job appears, and the worker (role "all") finishes it. The
        # seeded answers were labelled at T* = 8 while served at T = 1.2, so the fit
        # must improve the held-out NLL and ECE: the job succeeds and activates v4.
        page.click("button:text('Recalibrate')")
        page.wait_for_url(re.compile(rf".*/dashboard/tasks/{DRIFTING}#jobs$"))
        assert "queued" in page.inner_text(".flash")
        job_row = page.locator("#jobs tbody tr").first
        job_text = job_row.inner_text()
        assert "manual" in job_text
        status = _job_status(job_text)
        if worker_runs:
            deadline = time.monotonic() + 90
            while status not in TERMINAL and time.monotonic() < deadline:
                time.sleep(0.5)
                page.reload()
                job_text = page.locator("#jobs tbody tr").first.inner_text()
                status = _job_status(job_text)
            assert status == "succeeded", f"job {status} (after at most 90 s): {job_text}"
            assert page.locator("tr.is-active[data-version='4']").count() == 1
            assert page.locator("tr.is-active").count() == 1
        else:  # no worker registered for this build: the job waits in the queue
            assert status == "queued"
        shot(page, "05-task-after-recalibrate")

        # Roll back to v1 through the confirmation page; the active version changes.
        page.click("tr[data-version='1'] a.button")
        assert "/calibrations/" in page.url
        assert "Roll back" in page.inner_text("h1")
        shot(page, "06-confirm-rollback")
        page.click("button:text('Yes, roll back')")
        page.wait_for_url(re.compile(rf".*/dashboard/tasks/{DRIFTING}#versions$"))
        assert "Version 1" in page.inner_text(".flash")
        assert page.locator("tr.is-active[data-version='1']").count() == 1
        assert page.locator("tr.is-active").count() == 1

        for name, path in (
            ("07-alerts", "alerts"),
            ("08-jobs", "jobs"),
            ("09-webhooks", "webhooks"),
        ):
            page.goto(f"{base}/dashboard/{path}")
            assert page.locator("h1").count() == 1
            shot(page, name)
        assert page.locator("section.webhook").count() == 2
        assert page.locator("button:text('Re-enable')").count() == 1

        # Sign out: the session is gone, a copy of its cookie included.
        copied = [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
        assert len(copied) == 1
        page.click("button:text('Sign out')")
        page.wait_for_url(f"{base}/dashboard/login")
        page.goto(f"{base}/dashboard/jobs")
        assert page.url.startswith(f"{base}/dashboard/login")
        page.context.add_cookies(copied)
        page.goto(f"{base}/dashboard/jobs")
        assert page.url.startswith(f"{base}/dashboard/login")


def _job_status(row_text: str) -> str:
    for status in ("queued", "running", *TERMINAL):
        if status in row_text.split():
            return status
    return "unknown"
