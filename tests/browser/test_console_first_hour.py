"""The console as a new staff member meets it in a real headless Chromium (issue 19): a
cancelled request is not shown as failed, refusals and client errors are counted on the
live metrics page, its tiles share one row at 1280 px and say what the window held when
all is idle, and on a phone the console's sections all stay in sight. Screenshots for
docs/screenshots/ are written to test-output/screenshots/."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from apps.api.services import api_key_create
from apps.chat.services import chat_prompt_submit
from apps.gateway.admission import API_RATE_KEY
from apps.gateway.models import PromptRequest
from tests.browser.conftest import fill_sign_in
from tests.conftest import OUTPUT_DIR, fill_rate_windows, make_user, wait_for
from tests.console.test_cancelled_jobs import hang_up_mid_answer

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = OUTPUT_DIR / "screenshots"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def signed_in(browser: Any, url: str, path: str, viewport: dict[str, int]) -> Page:
    page = browser.new_page(viewport=viewport)
    page.goto(f"{url}{path}")
    fill_sign_in(page, "sam")
    return page


def boxes(page: Page, selector: str) -> list[dict[str, float]]:
    return [item.bounding_box() for item in page.locator(selector).all()]  # type: ignore[misc]


def clipped(page: Page, selector: str) -> list[str]:
    """Elements whose content is wider than their box (cut off, or spilling out)."""
    return page.locator(selector).evaluate_all(
        "els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)"
    )


def test_the_console_in_its_first_hour(
    browser, start_simulator, start_worker, start_web, settings, lifted_limits
):
    fast = start_simulator("--ttft", "0.2", "--tps", "40", "--tokens", "30")
    fast.register(alias="sim-chat", name="sim-east")
    slow = start_simulator("--ttft", "30")
    slow.register(alias="sim-slow", name="sim-west")
    make_user("sam", staff=True)
    pat = make_user("pat")
    settings.BARISTA_JOB_TIMEOUT = 2  # pat's prompt to the slow model fails
    failing = chat_prompt_submit(user=pat, model="sim-slow", content="too slow")
    settings.BARISTA_JOB_TIMEOUT = 60
    start_worker()
    url = start_web()
    wait_for(lambda: PromptRequest.objects.get(id=failing.id).status == "failed", timeout=15)

    # A program: answered, refused twice (one a minute), a wrong model, a bad body…
    limited_key, limited = api_key_create(owner=pat, name="one a minute", requests_per_minute=1)
    _, key = api_key_create(owner=pat, name="script")
    api = f"{url}/v1/chat/completions"

    def ask(token: str, body: dict[str, Any] | bytes) -> int:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        content = body if isinstance(body, bytes) else None
        sent = httpx.post(
            api, headers=headers, content=content, json=None if content else body, timeout=20
        )
        return sent.status_code

    prompt = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}
    assert ask(limited, prompt) == 200
    # Its one request of the minute is used — in the next minute's count too, should the
    # minute end between these requests (the refusals must not depend on the clock).
    fill_rate_windows(
        lambda window: API_RATE_KEY.format(scope="key", id=limited_key.pk, window=window), 1
    )
    assert [ask(limited, prompt) for _ in range(2)] == [429, 429]
    assert ask(key, {**prompt, "model": "gpt-4o"}) == 404
    assert ask(key, b"{oops") == 400
    # …and one that hangs up while its answer is being made (a slow model).
    hang_up_mid_answer(url, key, lambda: slow.stats()["requests_total"] == 2, model="sim-slow")
    hung_up = PromptRequest.objects.get(source=PromptRequest.Source.API, model="sim-slow")
    for index in range(12):  # people chatting meanwhile
        chat_prompt_submit(user=pat, model="sim-chat", content=f"chat {index}")
    wait_for(
        lambda: (
            set(PromptRequest.objects.values_list("status", flat=True))
            == {"done", "failed", "cancelled"}
        ),
        timeout=20,
    )
    assert PromptRequest.objects.get(id=hung_up.id).status == "cancelled"

    # The overview: the failure in red, the hang-up apart and neutral.
    page = signed_in(browser, url, "/console/", DESKTOP)
    failed = page.locator('tr[data-queue="interactive"] a.count-failed')
    cancelled = page.locator('tr[data-queue="bulk"] a.count-cancelled')
    expect(failed).to_have_text("1")
    expect(cancelled).to_have_text("1")
    expect(page.locator('tr[data-queue="bulk"] a.count-failed')).to_have_count(0)
    red = page.evaluate("getComputedStyle(document.body).getPropertyValue('--danger').trim()")
    assert colour(failed) == colour_of(page, red)
    assert colour(cancelled) == colour(page.locator("main h1"))  # the text's own
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "console-overview.png"), full_page=True)
    cancelled.click()
    expect(page.locator(f'tr[data-job="{hung_up.id}"]')).to_contain_text("cancelled")
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    page.screenshot(path=str(SCREENSHOTS / "console-jobs-cancelled.png"), full_page=True)
    page.close()

    # Live metrics: the refusals and the client's errors, by reason and by status.
    page = signed_in(browser, url, "/console/metrics/", DESKTOP)
    expect(page.locator("#live-text")).to_have_text("Live", timeout=10_000)
    breakdown = page.locator("#breakdown")
    expect(breakdown.locator('tr[data-label="rate_limit_exceeded"]')).to_contain_text("2")
    expect(breakdown.locator('tr[data-label="api 404"]')).to_contain_text("1")
    expect(breakdown.locator('tr[data-label="api 400"]')).to_contain_text("1")
    expect(page.locator('[data-now="errors"]')).to_have_text("1 · 2")
    expect(page.locator("#legend-errors")).to_contain_text("refused 2")
    # Idle now: the tiles keep what the window held, and say it is not this second's.
    latency = page.locator('[data-now="latency"]')
    expect(latency).to_have_class(re.compile(r"\bis-idle\b"), timeout=15_000)
    expect(latency).to_have_text(re.compile(r"^\d[\d.]*\u00a0s$"))
    expect(page.locator('[data-now="latency-note"]')).to_contain_text("idle, last")
    expect(page.locator('[data-now="rate-note"]')).to_have_text(re.compile(r"^\d+ in 15 min$"))
    # Seven tiles, one row, nothing spilling out of its tile.
    tops = {round(box["y"]) for box in boxes(page, "#now .stat")}
    assert len(boxes(page, "#now .stat")) == 7 and len(tops) == 1, tops
    assert clipped(page, "#now .stat") == []
    page.get_by_role("button", name="1 min").click()
    expect(page.locator("#chart-throughput text").filter(has_text="−1 min")).to_have_count(1)
    page.screenshot(path=str(SCREENSHOTS / "console-metrics.png"), full_page=True)
    page.close()

    # A phone: every section of the console in sight, none cut short; tiles inside.
    for path, name in (("/console/", "overview"), ("/console/metrics/", "metrics")):
        page = signed_in(browser, url, path, PHONE)
        links = boxes(page, ".console-nav a")
        assert len(links) >= 9
        outside = [box for box in links if box["x"] < 0 or box["x"] + box["width"] > PHONE["width"]]
        assert outside == [], outside
        assert clipped(page, ".console-nav a") == []
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        if name == "metrics":
            expect(page.locator('[data-now="workers"]')).to_have_text("1", timeout=10_000)
            assert clipped(page, "#now .stat") == []
        page.screenshot(path=str(SCREENSHOTS / f"console-{name}-phone.png"))  # the first screen
        page.close()


def colour(locator: Any) -> str:
    return str(locator.evaluate("e => getComputedStyle(e).color"))


def colour_of(page: Page, css: str) -> str:
    """A CSS colour as the browser computes it (``rgb(…)``)."""
    return str(
        page.evaluate(
            """css => { const probe = document.createElement("span"); probe.style.color = css;
            document.body.append(probe); const c = getComputedStyle(probe).color;
            probe.remove(); return c; }""",
            css,
        )
    )
