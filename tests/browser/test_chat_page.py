"""A person in a real headless Chromium: sign in, send a prompt, watch it stream."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import fill_sign_in
from tests.conftest import OUTPUT_DIR, make_user, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page, username):
    """Fill in the sign-in form the page shows, and land on the chat page."""
    fill_sign_in(page, username)
    expect(page.get_by_role("heading", name="What can I help with?")).to_be_visible()


def test_sign_in_send_a_prompt_and_watch_the_answer_stream(
    browser, start_simulator, start_worker, start_web
):
    sim = start_simulator("--ttft", "0.3", "--tps", "25", "--tokens", "50")
    sim.register(alias="sim-chat")
    make_user("carol")
    start_worker()
    url = start_web()
    word = f"walrus-{uuid.uuid4().hex[:8]}"

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{url}/")
    expect(page).to_have_url(f"{url}/accounts/login/?next=/")
    sign_in(page, "carol")
    expect(page.get_by_label("Model")).to_contain_text("sim-chat (simulated)")

    prompt = page.get_by_label("Your prompt")
    prompt.fill(f"Tell me about the {word}")
    prompt.press("Enter")

    answer = page.locator(".message.assistant .bubble").last
    # While streaming, the bubble holds part of the answer and shows the typing cursor.
    expect(answer).to_have_class("bubble typing", timeout=10_000)
    expect(answer).to_contain_text(word, timeout=10_000)
    expect(page.locator(".message.assistant .meta").last).to_contain_text("Streaming")
    expect(answer).not_to_have_class(re.compile(r"\btyping\b"), timeout=15_000)
    expect(page.locator(".message.assistant .meta").last).to_contain_text("(simulated)")
    assert f'"Tell me about the {word}"' in answer.inner_text()
    assert "/c/" in page.url
    # The new conversation appears in the sidebar at once, titled by the prompt.
    expect(page.locator(".conversations a[aria-current=page]")).to_contain_text(word)
    OUTPUT_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT_DIR / "chat-desktop.png"))

    # Reloading shows the conversation from the database.
    page.reload()
    expect(page.locator(".message.user .bubble")).to_have_text(f"Tell me about the {word}")
    expect(page.locator(".message.assistant .bubble")).to_contain_text(word)
    expect(page.locator(".conversations a[aria-current=page]")).to_contain_text("Tell me about")
    page.close()


@pytest.mark.parametrize(
    "viewport",
    [{"width": 1280, "height": 800}, {"width": 390, "height": 844}],
    ids=["desktop", "phone"],
)
def test_stop_button_cancels_an_answer_mid_stream(
    browser, start_simulator, start_worker, start_web, viewport
):
    from apps.gateway.models import PromptRequest

    sim = start_simulator("--ttft", "0.2", "--tps", "4", "--tokens", "200")
    sim.register(alias="sim-chat")
    make_user("dave")
    start_worker()
    url = start_web()
    page = browser.new_page(viewport=viewport)
    page.goto(f"{url}/accounts/login/")
    sign_in(page, "dave")
    page.get_by_label("Your prompt").fill("tell me a very long story")
    page.get_by_label("Your prompt").press("Enter")
    answer = page.locator(".message.assistant .bubble").last
    expect(answer).to_contain_text("You said", timeout=10_000)
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_visible()
    stop.click()
    expect(page.locator(".message.assistant .meta").last).to_have_text("Stopped", timeout=10_000)
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(answer).not_to_have_class(re.compile(r"\btyping\b"))  # no typing cursor any more
    shown = answer.inner_text()
    row = PromptRequest.objects.get()
    assert row.status == "cancelled"
    # The partial answer is kept: after a reload it is there, marked stopped...
    wait_for(lambda: PromptRequest.objects.get().answer != "", timeout=10)
    page.reload()
    kept = page.locator(".message.assistant .bubble").last
    expect(kept).to_contain_text(shown.strip()[:40])
    expect(page.locator(".message.assistant .meta").last).to_have_text("Stopped")
    # ...and goes with the next prompt as part of the conversation.
    page.get_by_label("Your prompt").fill("go on")
    page.get_by_label("Your prompt").press("Enter")
    wait_for(lambda: PromptRequest.objects.count() == 2, timeout=10)
    history = PromptRequest.objects.latest("queued_at").messages
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[1]["content"].startswith(shown.strip()[:40])
    page.close()


def test_a_waiting_prompt_shows_its_place_in_line(browser, start_simulator, start_web, settings):
    from apps.chat.services import chat_prompt_submit

    sim = start_simulator("--ttft", "0")
    sim.register(alias="sim-chat")
    erin = make_user("erin")
    for index in range(2):  # two prompts ahead, and no worker running yet
        chat_prompt_submit(user=erin, model="sim-chat", content=f"ahead {index}")
    url = start_web()
    page = browser.new_page(viewport={"width": 390, "height": 760})
    page.goto(f"{url}/accounts/login/")
    sign_in(page, "erin")
    page.get_by_label("Your prompt").fill("how long is the line?")
    page.get_by_label("Your prompt").press("Enter")
    expect(page.locator(".message.assistant .meta").last).to_contain_text(
        "#3 in line · about", timeout=10_000
    )
    OUTPUT_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT_DIR / "chat-phone-queued.png"))
    page.close()
