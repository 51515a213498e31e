"""The dashboard in real headless Chromium (Debian's ``chromium``, driven by Playwright):
enter the token, submit tasks, watch the numbers move, retry a dead letter, and keep a
screenshot in tests/artifacts/.

Skipped without /usr/bin/chromium, unless TASKHUB_REQUIRE_BROWSER=1 (CI), which makes a
missing browser a failure. Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.support.configs import ROOT
from tests.support.dashboard import CAPACITY, TOKEN, dashboard_config, submit
from tests.support.http_requests import get_job
from tests.support.processes import wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "tests" / "artifacts"
# A client-chosen user id that would run script if the page ever parsed it as HTML.
XSS_USER = '<img src=x onerror="window.__xss=1">'

if not CHROMIUM.exists():
    reason = f"{CHROMIUM} is missing (Debian: apt-get install chromium)"
    if os.environ.get("TASKHUB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"TASKHUB_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture
def page() -> Page:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


def number(page: Page, element_id: str) -> float:
    text = page.text_content(f"#{element_id}") or "-"
    return float(text) if text != "-" else 0.0


def test_the_dashboard_shows_live_numbers_and_retries_a_dead_letter(
    ns, redis_url, spawn, tmp_path: Path, page: Page
) -> None:
    problems: list[str] = []  # script errors and CSP violations
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    (tmp_path / "broken.flag").touch()
    config = dashboard_config(ns, redis_url, tmp_path)
    beat = {"name": "beat", "task": "log_completion", "user_id": "cron", "interval": 2}
    server = spawn({**config, "schedules": [beat]}, "run")

    page.goto(f"{server.url}/dashboard")
    page.fill("#token", "not-the-token-at-all")
    page.click("#connect")
    page.wait_for_selector("#login-error:has-text('not accepted')")
    problems.clear()  # the 401 itself is logged to the console
    page.fill("#token", TOKEN)
    page.click("#connect")
    page.wait_for_selector("#panels:not([hidden])")

    for user in ("alice", "bob", "flood", XSS_USER):
        for _ in range(CAPACITY):
            assert submit(server.url, user).status_code == 200
    for user in ("flood",) * 6 + (XSS_USER,) * 2:
        assert submit(server.url, user).status_code == 429
    job_id = submit(server.url, "carol", "doomed").json()["job_id"]

    page.wait_for_function(
        "() => parseFloat(document.getElementById('admitted-rate').textContent) > 0"
    )
    page.wait_for_function(
        "() => parseFloat(document.getElementById('refused-rate').textContent) > 0"
    )
    page.wait_for_selector("#top-refused tr:nth-child(2) td.key")
    row = page.wait_for_selector(f"#failed tr[data-job-id='{job_id}']")
    assert row is not None
    keys = page.eval_on_selector_all(
        "#top-refused td.key", "cells => cells.map(c => c.textContent)"
    )
    assert keys == ["flood", XSS_USER]
    assert page.eval_on_selector_all("#top-refused tr", "rows => rows.length") == 2
    assert page.evaluate("window.__xss") is None
    assert page.query_selector("main img") is None  # the id stayed text
    assert number(page, "admitted-rate") > 0 and number(page, "refused-rate") > 0
    assert "ValueError: boom" in (row.text_content() or "")
    wait_until(lambda: number(page, "dead") == 1, timeout=10)
    page.wait_for_selector("#schedule-rows td.id:has-text('schedule.beat.')")  # its last tick
    assert "every 2 s" in (page.text_content("#schedule-rows") or "")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"))

    (tmp_path / "broken.flag").unlink()
    row.query_selector("button.retry").click()
    page.wait_for_selector(f"#failed tr[data-job-id='{job_id}']", state="detached")
    page.wait_for_selector("#failed td.empty:has-text('no dead letters')")
    job = wait_until(lambda: (get_job(server.url, job_id) or {}).get("status") == "complete", 15)
    assert job, get_job(server.url, job_id)
    page.wait_for_function("() => document.getElementById('dead').textContent === '0'")
    polls: list[str] = []  # one poll a second still: the retry's extra poll made no second loop
    page.on("request", lambda r: polls.append(r.url) if "/api/summary" in r.url else None)
    page.wait_for_timeout(4_000)
    assert 2 <= len(polls) <= 6, polls
    page.screenshot(path=str(ARTIFACTS / "dashboard-after-retry.png"))
    assert problems == []
