"""Staff watch /console/metrics/ in a real headless Chromium while prompts run."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from apps.chat.services import chat_prompt_submit
from tests.browser.conftest import fill_sign_in
from tests.conftest import OUTPUT_DIR, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_metrics_page_moves_while_prompts_run(
    browser, start_simulator, start_worker, start_web, lifted_limits
):
    simulator = start_simulator("--ttft", "0.3", "--tps", "40", "--tokens", "40")
    simulator.register(alias="sim-chat", name="sim-east")
    make_user("sam", staff=True)
    person = make_user("pat")
    start_worker()
    url = start_web()

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{url}/console/metrics/")
    fill_sign_in(page, "sam")
    expect(page.locator("#live-text")).to_have_text("Live", timeout=10_000)
    expect(page.locator('[data-now="workers"]')).to_have_text("1", timeout=5_000)

    for round_ in range(6):  # prompts keep coming while we watch
        for index in range(8):
            chat_prompt_submit(user=person, model="sim-chat", content=f"metrics {round_} {index}")
        time.sleep(0.5)
    rate = page.locator('[data-now="rate"]')
    expect(rate).not_to_have_text("—", timeout=5_000)
    expect(page.locator("#legend-inflight")).to_contain_text("sim-east")
    path = page.locator("#chart-throughput path").first
    assert len(path.get_attribute("d") or "") > 10  # a line was drawn
    latency = page.locator('[data-now="latency"]').inner_text()
    assert latency != "—" and "s" in latency
    # The last minute, close up: the axis says so and the lines are drawn across it.
    page.get_by_role("button", name="1 min").click()
    expect(page.locator("#chart-throughput text").filter(has_text="−1 min")).to_have_count(1)
    OUTPUT_DIR.mkdir(exist_ok=True)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(OUTPUT_DIR / "console-metrics.png"), full_page=True)
    page.close()
