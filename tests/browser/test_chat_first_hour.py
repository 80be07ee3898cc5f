"""What a new person meets in the chat page (issue 19), in a real Chromium at desktop and
phone sizes: a phone gives the thread the screen, with the conversations in a drawer and
the account links behind a menu; the names say what things are; a system prompt per
conversation; a conversation exported as Markdown and JSON."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from apps.chat.models import Conversation
from apps.gateway.models import PromptRequest
from tests.browser.test_chat_experience import ask, barista, open_chat, shoot  # noqa: F401
from tests.chat.test_images import png
from tests.conftest import make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}


def box(locator):
    found = locator.bounding_box()
    assert found is not None, locator
    return found


def test_on_a_phone_the_thread_has_the_screen_and_conversations_are_a_drawer(browser, barista):  # noqa: F811
    _, url = barista
    make_user("fay")
    page = open_chat(browser, url, "fay", viewport=PHONE)
    ask(page, "first conversation on a phone")
    page.goto(f"{url}/")
    ask(page, "a second one, to fill the list")

    # The thread and composer take the screen below the top bar; the drawer is closed.
    sidebar = page.locator("#sidebar")
    expect(sidebar).not_to_be_in_viewport()
    thread = box(page.locator("#thread"))
    topbar = box(page.locator(".topbar"))
    assert thread["height"] >= PHONE["height"] - topbar["height"] - 2
    assert thread["width"] >= PHONE["width"] - 1
    # The top bar is one line: a menu button, not wrapped links.
    assert topbar["height"] < 60
    expect(page.get_by_role("link", name="API keys")).to_be_hidden()
    shoot(page, "chat-phone-drawer-closed")

    page.get_by_role("button", name="Chats").click()
    # Slid all the way in (the drawer moves in over a fifth of a second).
    page.wait_for_function(
        "() => document.getElementById('sidebar').getBoundingClientRect().left >= 0"
    )
    expect(sidebar).to_be_in_viewport()
    expect(sidebar.locator(".conversations a")).to_have_count(2)
    for link in sidebar.locator(".conversations a").all():
        assert box(link)["width"] > 200  # whole entries, not clipped to a strip
    shoot(page, "chat-phone-drawer-open")
    page.keyboard.press("Escape")
    expect(sidebar).not_to_be_in_viewport()
    page.get_by_role("button", name="Chats").click()
    sidebar.get_by_role("link", name="first conversation on a phone").click()
    expect(page.get_by_role("heading", name="first conversation on a phone")).to_be_visible()
    expect(sidebar).not_to_be_in_viewport()

    page.get_by_role("button", name="Menu").click()
    expect(page.get_by_role("link", name="API keys")).to_be_visible()
    expect(page.get_by_role("link", name="Usage")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    shoot(page, "chat-phone-menu-open")
    page.close()


def test_on_a_desktop_names_say_what_they_are_and_nothing_is_cut(browser, barista):  # noqa: F811
    _, url = barista
    make_user("gus")
    page = open_chat(browser, url, "gus")
    expect(page.get_by_role("link", name="Usage")).to_be_visible()  # the top bar's page
    expect(page.locator("#params summary")).to_have_text("Model options")
    # The model picker shows the whole name; the keyboard hint is one line.
    picker = page.get_by_label("Model")
    expect(picker).to_contain_text("sim-chat (simulated)")
    widths = picker.evaluate("s => [s.scrollWidth, s.clientWidth]")
    assert widths[0] <= widths[1], widths
    line = float(
        page.locator("#composer-hint").evaluate("e => getComputedStyle(e).lineHeight")[:-2]
    )
    assert box(page.locator("#composer-hint"))["height"] < 1.5 * line
    expect(page.get_by_role("button", name="Chats")).to_be_hidden()
    page.close()


SIZES = pytest.mark.parametrize(
    "viewport", [{"width": 1280, "height": 860}, PHONE], ids=["desktop", "phone"]
)


@SIZES
def test_a_system_prompt_goes_first_and_a_conversation_exports(browser, barista, viewport):  # noqa: F811
    _, url = barista
    make_user("hal")
    page = open_chat(browser, url, "hal", viewport=viewport)
    # Set before the first prompt: it goes with it, and becomes the conversation's.
    page.get_by_role("button", name="System prompt").click()
    dialog = page.get_by_role("dialog", name="System prompt")
    dialog.get_by_label("System prompt").fill("Answer like a barista.")
    dialog.get_by_role("button", name="Save").click()
    ask(page, "what is a cortado?")
    first = PromptRequest.objects.get()
    assert first.messages[0] == {"role": "system", "content": "Answer like a barista."}
    conversation = Conversation.objects.get(owner__username="hal")
    assert conversation.system_prompt == "Answer like a barista."

    # Changed later: saved on the conversation, the next prompt uses the new one.
    page.get_by_role("button", name="System prompt").click()
    expect(dialog.get_by_label("System prompt")).to_have_value("Answer like a barista.")
    dialog.get_by_label("System prompt").fill("Answer in one line.")
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_text("System prompt saved")).to_be_visible()
    ask(page, "and a flat white?")
    latest = PromptRequest.objects.latest("queued_at")
    assert latest.messages[0] == {"role": "system", "content": "Answer in one line."}
    assert [m["role"] for m in latest.messages] == ["system", "user", "assistant", "user"]

    # Exported, as Markdown and as JSON.
    page.get_by_text("More", exact=True).click()
    with page.expect_download() as markdown:
        page.get_by_role("link", name="Export as Markdown").click()
    text = open(markdown.value.path(), encoding="utf-8").read()
    assert markdown.value.suggested_filename.endswith(".md")
    assert "**System prompt:**\n\nAnswer in one line." in text
    assert "## You\n\nwhat is a cortado?" in text and "## sim-chat" in text
    page.get_by_text("More", exact=True).click()
    with page.expect_download() as exported:
        page.get_by_role("link", name="Export as JSON").click()
    document = json.loads(open(exported.value.path(), encoding="utf-8").read())
    assert [m["role"] for m in document["messages"]] == ["user", "assistant"] * 2
    assert document["system_prompt"] == "Answer in one line."
    page.close()


@SIZES
def test_an_image_attached_to_a_prompt_reaches_the_model_and_stays_in_the_thread(
    browser, start_simulator, start_worker, start_web, viewport
):
    sim = start_simulator("--ttft", "0.1", "--tps", "80", "--tokens", "30")
    sim.register(alias="sim-chat", accepts_images=True)
    start_simulator().register(alias="sim-text", name="text-only")
    start_worker()
    url = start_web()
    make_user("ivy")
    page = open_chat(browser, url, "ivy", viewport=viewport)
    attach = page.get_by_role("button", name="Image")
    page.get_by_label("Model").select_option("sim-text")
    expect(attach).to_be_hidden()  # this model does not read images
    page.get_by_label("Model").select_option("sim-chat")
    expect(attach).to_be_visible()

    # A small PNG goes as it is; a big photo-like one is shrunk to fit the limit.
    page.locator("#attach-input").set_input_files(
        [
            {"name": "small.png", "mimeType": "image/png", "buffer": png()},
            {"name": "big.png", "mimeType": "image/png", "buffer": png(700, 700, noise=True)},
        ]
    )
    expect(page.locator("#attached img")).to_have_count(2)
    answer = ask(page, "what do you see?")
    expect(answer).to_contain_text("I see 2 images (image/png, image/jpeg)")
    expect(page.locator(".message.user .attachments img")).to_have_count(2)
    expect(page.locator("#attached img")).to_have_count(0)  # sent: the tray is empty
    row = PromptRequest.objects.get()
    sizes = [len(part["image_url"]["url"]) for part in row.messages[-1]["content"][1:]]
    assert max(sizes) < 500_000 * 4 / 3 + 100  # the big one was shrunk below the limit
    page.reload()
    expect(page.locator(".message.user .attachments img")).to_have_count(2)
    shoot(page, f"chat-{'phone' if viewport is PHONE else 'desktop'}-image")
    page.close()
