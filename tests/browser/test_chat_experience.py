"""The chat page as people use it, in a real headless Chromium against real daphne, worker
and simulator processes: Markdown answers, regenerate and edit, rename and delete, cached
answers marked, a dropped connection, a web process killed under `manage.py up`, hostile
text, a model that is down — and screenshots at desktop and phone widths, light and dark."""

from __future__ import annotations

import os
import re
import signal
import sqlite3

import pytest
from playwright.sync_api import expect

from apps.backends.models import Backend
from apps.chat.models import Conversation
from apps.gateway.models import PromptRequest
from tests.browser.conftest import fill_sign_in
from tests.conftest import OUTPUT_DIR, make_user, wait_for
from tests.gateway.test_up import Output, consecutive_free_ports, ready, start_up, up_env

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = OUTPUT_DIR / "screenshots"
NOT_TYPING = re.compile(r"^(?!.*\btyping\b)")


@pytest.fixture
def barista(start_simulator, start_worker, start_web):
    """A simulator (0.1 s to the first token, 40 tokens/s), a worker and daphne."""
    sim = start_simulator("--ttft", "0.1", "--tps", "40", "--tokens", "40")
    sim.register(alias="sim-chat")
    start_worker()
    return sim, start_web()


def open_chat(browser, url, username, **page_options):
    page_options.setdefault("viewport", {"width": 1280, "height": 860})
    page = browser.new_page(**page_options)
    page.goto(f"{url}/accounts/login/")
    fill_sign_in(page, username)
    expect(page.get_by_label("Your prompt")).to_be_visible()
    return page


def ask(page, text):
    page.get_by_label("Your prompt").fill(text)
    page.get_by_label("Your prompt").press("Enter")
    answer = page.locator(".message.assistant .bubble").last
    expect(answer).to_have_class(NOT_TYPING, timeout=20_000)
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    return answer


def shoot(page, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def test_an_answer_renders_as_markdown_with_a_code_block_to_copy(browser, barista):
    _, url = barista
    make_user("carol")
    for scheme, viewport, name in (
        ("light", {"width": 1280, "height": 860}, "desktop-light"),
        ("dark", {"width": 1280, "height": 860}, "desktop-dark"),
        ("light", {"width": 390, "height": 844}, "phone-light"),
        ("dark", {"width": 390, "height": 844}, "phone-dark"),
    ):
        page = open_chat(browser, url, "carol", viewport=viewport, color_scheme=scheme)
        answer = ask(page, f"Show me some Markdown about brewing ({name})")
        expect(answer.get_by_role("heading", name="Brewing notes")).to_be_visible()
        expect(answer.locator("li strong")).to_have_text("Grind")
        expect(answer.locator("table td").first).to_have_text("cortado")
        code = answer.locator("pre code.language-python")
        expect(code).to_contain_text("def brew(shots: int) -> str:")
        expect(answer.locator("pre .copy-code")).to_be_visible()
        page.locator(".message.assistant .meta").last.scroll_into_view_if_needed()
        shoot(page, f"chat-{name}")
        # The same answer, rendered by the server on a reload.
        page.reload()
        reloaded = page.locator(".message.assistant .bubble").last
        expect(reloaded.locator("pre code.language-python")).to_contain_text("def brew")
        expect(reloaded.locator("pre .copy-code")).to_have_count(1)
        page.close()


def test_regenerate_and_edit_replace_the_last_exchange(browser, barista):
    sim, url = barista
    make_user("dora")
    page = open_chat(browser, url, "dora")
    ask(page, "first question")
    ask(page, "second question")
    expect(page.locator(".message")).to_have_count(4)

    page.get_by_role("button", name="Regenerate").click()
    expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=20_000)
    expect(page.locator(".message.assistant .bubble").last).to_have_class(NOT_TYPING)
    expect(page.locator(".message")).to_have_count(4)
    # A new answer from the backend (not the cache): three calls in all.
    assert sim.stats()["requests_total"] == 3

    page.locator(".message.user").last.get_by_role("button", name="Edit").click()
    expect(page.get_by_label("Your prompt")).to_have_value("second question")
    page.get_by_label("Your prompt").fill("second question, sharper")
    page.get_by_label("Your prompt").press("Enter")
    last = page.locator(".message.assistant .bubble").last
    expect(last).to_contain_text("second question, sharper", timeout=20_000)
    expect(page.locator(".message")).to_have_count(4)
    conversation = Conversation.objects.get(owner__username="dora")
    assert list(conversation.messages.values_list("content", flat=True)) == [
        "first question",
        "second question, sharper",
    ]
    page.reload()
    expect(page.locator(".message")).to_have_count(4)
    page.close()


def test_rename_and_delete_a_conversation(browser, barista):
    _, url = barista
    make_user("erin")
    page = open_chat(browser, url, "erin")
    ask(page, "a conversation to rename")
    page.get_by_text("More", exact=True).click()
    page.get_by_role("button", name="Rename").click()
    dialog = page.get_by_role("dialog", name="Rename conversation")
    dialog.get_by_label("Title").fill("Renamed by Erin")
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name="Renamed by Erin")).to_be_visible()
    expect(page.locator(".conversations a[aria-current=page]")).to_have_text("Renamed by Erin")

    page.get_by_text("More", exact=True).click()
    page.get_by_role("button", name="Delete").click()
    dialog = page.get_by_role("dialog", name="Delete this conversation?")
    expect(dialog).to_contain_text("Renamed by Erin")
    dialog.get_by_role("button", name="Cancel").click()
    assert Conversation.objects.filter(owner__username="erin").count() == 1
    page.get_by_text("More", exact=True).click()
    page.get_by_role("button", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.get_by_text("Conversation deleted.")).to_be_visible()
    expect(page.locator(".conversations")).not_to_contain_text("Renamed by Erin")
    assert not Conversation.objects.filter(owner__username="erin").exists()
    page.close()


def test_a_cached_answer_is_marked_only_where_answers_are_shared(browser, barista):
    sim, url = barista
    make_user("finn")
    page = open_chat(browser, url, "finn")
    # Private (the default): her repeat is answered from her own cache, unmarked.
    expect(page.locator("#model-shared")).to_be_hidden()
    ask(page, "what is an americano?")
    page.get_by_role("link", name="+ New chat").click()
    ask(page, "what is an americano?")
    assert sim.stats()["requests_total"] == 1
    expect(page.locator(".message.assistant .badge")).to_have_count(0)
    # Staff share the model's answers: the page says so, and a cached answer is marked.
    Backend.objects.update(share_answers=True)

    def says_shared() -> bool:
        page.reload()
        return page.locator("#model-shared").is_visible()

    wait_for(says_shared, timeout=10)  # each process sees the change within a second
    page.get_by_role("link", name="+ New chat").click()
    ask(page, "what is a flat white?")
    expect(page.locator(".message.assistant .badge")).to_have_count(0)
    page.get_by_role("link", name="+ New chat").click()
    ask(page, "what is a flat white?")
    expect(page.locator(".message.assistant .badge").last).to_have_text("Cached answer")
    assert sim.stats()["requests_total"] == 2
    page.reload()  # still marked when drawn from the database
    expect(page.locator(".message.assistant .badge")).to_have_text("Cached answer")
    page.close()


def test_a_dropped_connection_catches_up_without_duplicated_text(
    browser, start_simulator, start_worker, start_web
):
    sim = start_simulator("--ttft", "0.2", "--tps", "12", "--tokens", "60")
    sim.register(alias="sim-chat")
    start_worker()
    url = start_web()
    make_user("gus")
    page = open_chat(browser, url, "gus")
    page.get_by_label("Your prompt").fill("a long answer, please")
    page.get_by_label("Your prompt").press("Enter")
    answer = page.locator(".message.assistant .bubble").last
    expect(answer).to_contain_text("You said", timeout=10_000)
    page.evaluate("window.barista.dropConnection()")
    expect(page.locator("#connection")).to_have_text("Connection lost — reconnecting…")
    expect(page.locator("#connection")).to_be_hidden(timeout=10_000)
    expect(answer).to_have_class(NOT_TYPING, timeout=20_000)
    row = PromptRequest.objects.get(owner__username="gus")
    assert row.status == "done"
    assert answer.inner_text().strip() == row.answer.strip()
    assert answer.inner_text().count("You said") == 1
    page.close()


def test_html_and_script_in_a_prompt_are_shown_as_text(browser, barista):
    _, url = barista
    make_user("hana")
    page = open_chat(browser, url, "hana")
    hostile = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"><b>bold?</b>'
    answer = ask(page, hostile)
    expect(page.locator(".message.user .bubble")).to_have_text(hostile)
    expect(answer).to_contain_text("<script>window.pwned = 1</script>")
    for _ in range(2):  # live, then drawn by the server after a reload
        assert page.evaluate("window.pwned") is None
        assert page.locator(".messages script, .messages img, .messages b").count() == 0
        page.reload()
        expect(page.locator(".message.user .bubble")).to_have_text(hostile)
    page.close()


def test_a_model_whose_backends_are_all_down_is_greyed_with_the_reason(
    browser, start_simulator, start_worker, start_web
):
    from apps.backends.models import Backend

    sim = start_simulator()
    sim.register(alias="sim-chat")
    Backend.objects.create(
        name="gone",
        alias="sim-dead",
        model_name="m",
        base_url="http://127.0.0.1:9/v1",
        simulated=True,
    )
    start_worker(BARISTA_HEALTH_INTERVAL="0.5")
    url = start_web()
    make_user("ivan")
    page = open_chat(browser, url, "ivan")
    expect(page.locator("#model-health")).to_have_attribute("data-up", "1")

    def dead_is_marked() -> bool:
        page.reload()
        return "down" in page.locator("#model option[value=sim-dead]").inner_text()

    wait_for(dead_is_marked, timeout=15)
    option = page.locator("#model option[value=sim-dead]")
    expect(option).to_have_text("sim-dead (simulated) — down")
    expect(option).to_be_disabled()
    assert "127.0.0.1:9" not in page.content()  # the reason never names the address
    # The live one is still there and selected.
    expect(page.locator("#model")).to_have_value("sim-chat")
    page.close()


def test_the_settings_panel_sets_the_conversations_parameters(browser, barista):
    _, url = barista
    make_user("jo")
    page = open_chat(browser, url, "jo")
    page.locator("#params summary").click()
    page.get_by_label("Max tokens").fill("12")
    page.get_by_label("Temperature").fill("0.3")
    ask(page, "keep it short")
    row = PromptRequest.objects.get(owner__username="jo")
    assert row.params == {"temperature": 0.3, "max_tokens": 12}
    assert row.completion_tokens == 12
    page.reload()  # the panel shows the conversation's own settings
    expect(page.get_by_label("Max tokens")).to_have_value("12")
    page.close()


@pytest.mark.timeout(300)
def test_a_web_process_killed_under_up_restarts_and_the_page_catches_up(browser, tmp_path):
    """`manage.py up` itself: daphne is SIGKILLed while an answer streams. The worker goes
    on answering; up restarts daphne; the page reconnects and shows the whole answer, once."""
    sims = consecutive_free_ports(5)
    web = sims + 3
    process = start_up(up_env(tmp_path, sims), workers=1)
    output = Output(process)
    try:
        wait_for(lambda: ready(web), timeout=90, interval=0.5, describe=lambda: output.text)
        pids = wait_for(
            lambda: output.search(r"web \(daphne\) (\d+)"), describe=lambda: output.text
        )
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(f"http://127.0.0.1:{web}/accounts/login/")
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill("up-test-password")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_label("Model").select_option("sim-deep")  # ~9 s per answer
        page.get_by_label("Your prompt").fill("a long answer, please")
        page.get_by_label("Your prompt").press("Enter")
        answer = page.locator(".message.assistant .bubble").last
        expect(answer).to_contain_text("You said", timeout=20_000)
        os.kill(int(pids.group(1)), signal.SIGKILL)
        expect(page.locator("#connection")).to_have_text("Connection lost — reconnecting…")
        restarted = wait_for(
            lambda: output.search(r"web \(daphne\) restarted \(pid (\d+)\)"),
            describe=lambda: output.text,
        )
        expect(page.locator("#connection")).to_be_hidden(timeout=30_000)
        expect(answer).to_have_class(NOT_TYPING, timeout=30_000)
        with sqlite3.connect(tmp_path / "db.sqlite3") as db:
            rows = db.execute("SELECT status, answer FROM gateway_promptrequest").fetchall()
        assert [status for status, _ in rows] == ["done"]
        assert answer.inner_text().strip() == rows[0][1].strip()
        assert answer.inner_text().count("You said") == 1
        os.kill(int(restarted.group(1)), 0)  # the new daphne runs
        assert process.poll() is None  # and the rest never stopped
        page.close()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    assert process.returncode == 0, output.text
