"""Staff run Barista from the console in a real headless Chromium: the overview's health
cards, pausing a queue, and the audit log that records it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import fill_sign_in
from tests.conftest import OUTPUT_DIR, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_overview_then_pause_and_resume_a_queue(browser, start_simulator, start_worker, start_web):
    start_simulator().register(alias="sim-chat", name="sim-east")
    make_user("sam", staff=True)
    start_worker()
    url = start_web()
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.goto(f"{url}/console/")
    fill_sign_in(page, "sam")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    for part, summary in (
        ("redis", "answering in"),
        ("database", "answering in"),
        ("workers", "1 alive"),
        ("backends", "1 of 1 usable"),
    ):
        card = page.locator(f'[data-check="{part}"]')
        expect(card).to_have_class("health-card is-ok")
        expect(card).to_contain_text(summary)
    OUTPUT_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT_DIR / "console-overview.png"), full_page=True)

    page.get_by_role("navigation", name="Console").get_by_role("link", name="Queues").click()
    row = page.locator('tr[data-queue="interactive"]')
    row.get_by_role("button", name="Pause").click()
    expect(page.get_by_text("Paused interactive")).to_be_visible()
    expect(row).to_contain_text("paused")
    row.get_by_role("button", name="Resume").click()
    expect(row).to_contain_text("taking")
    page.get_by_role("link", name="Audit log").click()
    expect(page.locator("table")).to_contain_text("queue.resume")
    expect(page.locator("table")).to_contain_text("queue.pause")
    page.close()
