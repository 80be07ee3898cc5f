"""Staff in a real headless Chromium: the backend list updates live, and Drain works."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import fill_sign_in
from tests.conftest import OUTPUT_DIR, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_staff_watch_backends_live_and_drain_one(browser, start_simulator, start_web, live_conn):
    simulator = start_simulator()
    backend = simulator.register(name="gpu-east", max_concurrency=8)
    make_user("sam", staff=True)
    url = start_web()

    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(f"{url}/console/backends/")
    fill_sign_in(page, "sam")
    row = page.locator(f'tr[data-backend="{backend.pk}"]')
    expect(row).to_contain_text("0 / 8")

    # Three prompts in flight, as workers' leases would show: the page catches up by itself.
    live_conn.zadd(f"barista:backend:{backend.pk}:leases", {f"lease-{i}": 9e12 for i in range(3)})
    expect(row.locator('[data-live="in_flight"]')).to_have_text("3 / 8", timeout=5_000)

    row.get_by_role("button", name="Drain").click()
    expect(page.get_by_role("status")).to_contain_text("gpu-east is now draining")
    expect(row.locator(".pill-draining")).to_be_visible()
    OUTPUT_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT_DIR / "console-backends.png"))
    page.goto(f"{url}/console/audit/")
    expect(page.locator("#audit")).to_contain_text("backend.draining")
    page.close()
