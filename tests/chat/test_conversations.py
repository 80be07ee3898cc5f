"""Conversations over HTTP and the socket: rename, delete, search, regenerate/edit,
parameters, Markdown rendering, settings and sign-up — and Bob never reaches Alice's."""

from __future__ import annotations

import json
import re

import pytest
from channels.db import database_sync_to_async
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from apps.chat import markdown
from apps.chat.models import Conversation, Message
from apps.chat.selectors import conversation_history
from apps.chat.services import chat_prompt_submit
from apps.gateway.models import PromptRequest
from tests.chat.test_consumer import connect

pytestmark = pytest.mark.django_db(transaction=True)


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def answered(user, content: str, answer: str, conversation_id: int | None = None):
    """A prompt and its answer, recorded as a worker would."""
    request = chat_prompt_submit(
        user=user, model="sim-chat", content=content, conversation_id=conversation_id
    )
    PromptRequest.objects.filter(id=request.id).update(status="done", answer=answer)
    return request.conversation


# --- Markdown ---------------------------------------------------------------------------


def test_markdown_renders_headings_lists_tables_and_code():
    html = markdown.render(
        "## Title\n\n- one\n- **two**\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
        "```python\nprint('<b>')\n```"
    )
    assert "<h2>Title</h2>" in html
    assert "<li><strong>two</strong></li>" in html
    assert "<table>" in html and "<td>1</td>" in html
    assert "<pre><code class=\"language-python\">print('&lt;b&gt;')" in html


def test_a_tool_call_the_model_made_is_shown_readably(alice):
    """A model answered with a tool call (the API's path): the page shows its name and
    its arguments as indented JSON, sanitized like any answer."""
    conversation = answered(alice, "weather?", "")
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "<b>Lisbon</b>", "days": 3}'},
    }
    PromptRequest.objects.update(extra={"tool_calls": [call], "finish_reason": "tool_calls"})
    page = signed_in(alice).get(f"/c/{conversation.pk}/").content.decode()
    assert "<strong>Tool call:</strong> <code>get_weather</code>" in page
    assert '"city": "&lt;b&gt;Lisbon&lt;/b&gt;",\n  "days": 3' in page


@pytest.mark.parametrize(
    "hostile",
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "[click](javascript:alert(1))",
        "[click](data:text/html;base64,PHNjcmlwdD4=)",
        '<a href="https://example.com" onclick="steal()">x</a>',
        "```\n</code></pre><script>alert(1)</script>\n```",
        "<iframe src=https://example.com></iframe>",
        "![pixel](https://tracker.example/p.gif)",
        '<svg onload="alert(1)">',
    ],
)
def test_html_and_script_in_markdown_come_out_as_text(hostile):
    html = markdown.render(hostile)
    assert not re.search(r"<(script|img|iframe|svg)\b", html)
    assert not re.search(r"<[^>]*\son\w*\s*=", html)  # no handler inside a real tag
    assert not re.search(r'href="(javascript|data):', html)


@hypothesis_settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from(list("<>\"'=/ab:sciptjvonerrf()[]!`#*-|\n ")), max_size=80))
def test_no_text_renders_to_a_live_tag_or_handler(text):
    html = markdown.render(text)
    tags = re.findall(r"<\s*([a-zA-Z0-9]+)", html)
    assert set(tags) <= markdown.TAGS
    assert not re.search(r"<[^>]*\son\w*\s*=", html)


# --- Rename, delete, search ---------------------------------------------------------


def test_rename_delete_and_search_conversations(alice):
    coffee = answered(alice, "How do I pull an espresso shot?", "Grind fine.")
    answered(alice, "Best tea for mornings?", "Assam, with milk.")
    client = signed_in(alice)
    page = client.get("/").content.decode()
    assert page.index("Best tea") < page.index("How do I pull")  # newest first

    assert (
        client.post(f"/c/{coffee.pk}/rename/", {"title": "  Espresso   notes "}).status_code == 302
    )
    coffee.refresh_from_db()
    assert coffee.title == "Espresso notes"
    client.post(f"/c/{coffee.pk}/rename/", {"title": "   "})  # refused: stays as it was
    coffee.refresh_from_db()
    assert coffee.title == "Espresso notes"

    # Search finds titles and message text ("Assam" is only in an answer).
    found = client.get("/?q=assam").content.decode()
    assert "Best tea" in found and "Espresso notes" not in found
    assert "Espresso notes" in client.get("/?q=ESPRESSO").content.decode()
    assert "Nothing matches" in client.get("/?q=zebra").content.decode()

    assert client.post(f"/c/{coffee.pk}/delete/").status_code == 302
    assert not Conversation.objects.filter(pk=coffee.pk).exists()
    assert not Message.objects.filter(conversation_id=coffee.pk).exists()
    assert PromptRequest.objects.count() == 2  # the ledger keeps its rows
    assert client.get(f"/c/{coffee.pk}/").status_code == 404


def test_deleting_a_conversation_cancels_its_prompt_in_flight(alice):
    request = chat_prompt_submit(user=alice, model="sim-chat", content="still waiting")
    signed_in(alice).post(f"/c/{request.conversation_id}/delete/")
    assert PromptRequest.objects.get(id=request.id).status == "cancelled"


def test_bob_can_never_open_rename_delete_or_search_alices_conversation(alice, bob):
    conversation = answered(alice, "alice's secret plan", "kept secret")
    client = signed_in(bob)
    assert client.get(f"/c/{conversation.pk}/").status_code == 404
    assert client.post(f"/c/{conversation.pk}/rename/", {"title": "mine"}).status_code == 404
    assert client.post(f"/c/{conversation.pk}/delete/").status_code == 404
    assert "secret plan" not in client.get("/?q=secret").content.decode()
    assert "secret plan" not in client.get("/").content.decode()
    conversation.refresh_from_db()
    assert conversation.title == "alice's secret plan"
    assert len(conversation_history(conversation=conversation)) == 2  # question and answer
    # Signed out: the sign-in page, for every door.
    for url in (f"/c/{conversation.pk}/", "/settings/", "/models.json"):
        assert Client().get(url).status_code == 302


async def test_bob_cannot_send_into_follow_or_cancel_alices_conversation(alice, bob, chat_backend):
    conversation = await database_sync_to_async(answered)(alice, "alice asks", "alice's answer")
    waiting = await database_sync_to_async(chat_prompt_submit)(
        user=alice, model="sim-chat", content="alice waits", conversation_id=conversation.pk
    )
    communicator, connected, _ = await connect(bob)
    assert connected
    frames = [
        {"type": "prompt", "model": "sim-chat", "content": "hi", "conversation": conversation.pk},
        {
            "type": "prompt",
            "model": "sim-chat",
            "content": "overwrite",
            "conversation": conversation.pk,
            "replace_last": True,
        },
        {"type": "follow", "request": str(waiting.id)},
        {"type": "cancel", "request": str(waiting.id)},
    ]
    for frame in frames:
        await communicator.send_to(text_data=json.dumps(frame))
        reply = await communicator.receive_json_from(timeout=5)
        assert reply["type"] == "error" and reply["code"] == "not_found", reply
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()
    row = await database_sync_to_async(PromptRequest.objects.get)(id=waiting.id)
    assert row.status == "queued"
    lines = await database_sync_to_async(conversation_history)(conversation=conversation)
    assert [line["content"] for line in lines] == ["alice asks", "alice's answer", "alice waits"]
    # nothing added, nothing replaced


# --- Regenerate, edit, parameters ---------------------------------------------------


def test_replacing_the_last_prompt_drops_it_and_its_answer(alice):
    conversation = answered(alice, "first question", "first answer")
    answered(alice, "second question", "second answer", conversation.pk)
    request = chat_prompt_submit(
        user=alice,
        model="sim-chat",
        content="second question, edited",
        conversation_id=conversation.pk,
        replace_last=True,
    )
    texts = [m["content"] for m in conversation_history(conversation=conversation)]
    assert texts == ["first question", "first answer", "second question, edited"]
    assert [m["content"] for m in request.request.messages] == texts


async def test_params_are_checked_and_kept_with_the_conversation(alice, chat_backend):
    communicator, _, _ = await connect(alice)
    bad = [
        {"temperature": 3},
        {"temperature": "hot"},
        {"max_tokens": 0},
        {"max_tokens": 1.5},
        {"top_k": 5},
        "warm",
    ]
    for params in bad:
        frame = {"type": "prompt", "model": "sim-chat", "content": "hi", "params": params}
        await communicator.send_to(text_data=json.dumps(frame))
        reply = await communicator.receive_json_from(timeout=5)
        assert reply["code"] == "invalid_params", params
    assert not await database_sync_to_async(PromptRequest.objects.exists)()
    frame = {
        "type": "prompt",
        "model": "sim-chat",
        "content": "hi",
        "params": {"temperature": 0.2, "max_tokens": 50},
    }
    await communicator.send_to(text_data=json.dumps(frame))
    accepted = await communicator.receive_json_from(timeout=5)
    assert accepted["type"] == "accepted"
    await communicator.disconnect()
    row = await database_sync_to_async(PromptRequest.objects.get)(id=accepted["request"])
    assert row.params == {"temperature": 0.2, "max_tokens": 50}
    conversation = await database_sync_to_async(Conversation.objects.get)(
        pk=accepted["conversation"]
    )
    assert conversation.params == {"temperature": 0.2, "max_tokens": 50}


async def test_replacing_while_an_answer_is_on_its_way_is_refused(alice, chat_backend):
    first = await database_sync_to_async(chat_prompt_submit)(
        user=alice, model="sim-chat", content="slow one"
    )
    communicator, _, _ = await connect(alice)
    frame = {
        "type": "prompt",
        "model": "sim-chat",
        "content": "again",
        "conversation": first.conversation_id,
        "replace_last": True,
    }
    await communicator.send_to(text_data=json.dumps(frame))
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["code"] == "conversation_busy"
    await communicator.disconnect()
    assert await database_sync_to_async(PromptRequest.objects.count)() == 1


# --- Settings, sign-up, model health -------------------------------------------------


def test_settings_show_the_persons_usage_and_keys(alice, bob):
    from apps.api.services import api_key_create

    answered(alice, "one", "answer one")
    PromptRequest.objects.update(prompt_tokens=12, completion_tokens=30)
    chat_prompt_submit(user=alice, model="sim-chat", content="two")  # still waiting
    api_key_create(owner=alice, name="my script")
    answered(bob, "bob's", "not counted for alice")
    page = signed_in(alice).get("/settings/").content.decode()
    assert re.search(r'data-usage="prompts">2<', page)
    assert re.search(r'data-usage="tokens">12 / 30<', page)
    assert "my script" in page


def test_sign_up_is_off_by_default_and_works_when_on(settings):
    assert Client().get("/accounts/signup/").status_code == 404
    assert "Create an account" not in Client().get("/accounts/login/").content.decode()
    settings.BARISTA_SIGNUP = True
    client = Client()
    assert "Create an account" in client.get("/accounts/login/").content.decode()
    response = client.post(
        "/accounts/signup/",
        {"username": "newbie", "password1": "a-long-pass-phrase-9", "password2": "nope"},
    )
    assert response.status_code == 200 and "didn’t match" in response.content.decode()
    response = client.post(
        "/accounts/signup/",
        {
            "username": "newbie",
            "password1": "a-long-pass-phrase-9",
            "password2": "a-long-pass-phrase-9",
        },
    )
    assert response.status_code == 302
    assert client.get("/").status_code == 200  # signed in


def test_model_health_says_when_every_backend_of_a_model_is_down(alice, chat_backend):
    client = signed_in(alice)
    assert client.get("/models.json").json()["models"] == [
        {"alias": "sim-chat", "simulated": True, "up": True, "images": False, "reason": ""}
    ]
    from asgiref.sync import async_to_sync

    from apps.backends import live

    async_to_sync(live.record_health)(
        chat_backend.pk, up=False, ms=3.0, error=f"could not reach {chat_backend.base_url}", keep=60
    )
    model = client.get("/models.json").json()["models"][0]
    assert model["up"] is False
    assert model["reason"] == "Every backend is down: not answering health checks"
    assert chat_backend.base_url not in json.dumps(model)
    page = client.get("/").content.decode()
    assert "sim-chat (simulated) — down" in page


def test_a_long_conversation_sends_and_stores_only_its_newest_turns(alice, settings):
    """Each prompt carries the conversation so far; past the bounds, only the newest
    whole exchanges go (and are stored on the ledger row), so the cost of a prompt stops
    growing with the conversation."""
    settings.BARISTA_CHAT_HISTORY_MESSAGES = 6
    settings.BARISTA_CHAT_HISTORY_CHARS = 10_000
    conversation = None
    for turn in range(12):
        conversation = answered(
            alice,
            f"q{turn} " + "x" * 1000,
            f"a{turn} " + "y" * 1000,
            conversation and conversation.pk,
        )
    assert conversation is not None
    sent = PromptRequest.objects.latest("queued_at").messages
    # The last prompt: 6 messages of history (3 exchanges, oldest first) and itself.
    assert [m["content"][:3] for m in sent] == ["q8 ", "a8 ", "q9 ", "a9 ", "q10", "a10", "q11"]

    # The character bound: history within 2,500 characters keeps one exchange only —
    # never an answer without its question.
    settings.BARISTA_CHAT_HISTORY_CHARS = 2_500
    prompt = chat_prompt_submit(
        user=alice, model="sim-chat", content="q12", conversation_id=conversation.pk
    )
    row = PromptRequest.objects.get(id=prompt.id)
    assert [m["content"][:3] for m in row.messages] == ["q11", "a11", "q12"]
    PromptRequest.objects.filter(id=prompt.id).update(status="done", answer="a12")
    # Room for the last answer but not its question: neither goes.
    settings.BARISTA_CHAT_HISTORY_CHARS = 1_500
    answered(alice, "q13", "a13", conversation.pk)
    settings.BARISTA_CHAT_HISTORY_CHARS = 5
    prompt = chat_prompt_submit(
        user=alice, model="sim-chat", content="q14", conversation_id=conversation.pk
    )
    row = PromptRequest.objects.get(id=prompt.id)
    assert [m["content"] for m in row.messages] == ["q14"]
    # The conversation itself keeps everything.
    assert len(conversation_history(conversation=conversation)) == 29


def test_a_system_prompt_is_bounded_kept_first_and_only_its_owners(alice, bob, settings):
    settings.BARISTA_CHAT_HISTORY_CHARS = 10  # history trimmed: the system prompt stays
    conversation = answered(alice, "q1", "a" * 50)
    client = signed_in(alice)
    page = f"/c/{conversation.pk}/system/"
    client.post(page, {"system_prompt": "  Be brief.  "})
    conversation.refresh_from_db()
    assert conversation.system_prompt == "Be brief."
    prompt = chat_prompt_submit(
        user=alice, model="sim-chat", content="q2", conversation_id=conversation.pk
    )
    sent = PromptRequest.objects.get(id=prompt.id).messages
    assert sent == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q2"}]
    # Too long: refused, nothing changed. Blank: cleared.
    response = client.post(page, {"system_prompt": "x" * 8001}, follow=True)
    assert "at most 8,000 characters" in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.system_prompt == "Be brief."
    # Bob can neither set nor export Alice's.
    bobs = signed_in(bob)
    assert bobs.post(page, {"system_prompt": "mine now"}).status_code == 404
    for fmt in ("md", "json"):
        assert bobs.get(f"/c/{conversation.pk}/export.{fmt}").status_code == 404
    assert client.get(f"/c/{conversation.pk}/export.txt").status_code == 404
    client.post(page, {"system_prompt": ""})
    conversation.refresh_from_db()
    assert conversation.system_prompt == ""


def test_an_export_holds_the_conversation_as_the_page_shows_it(alice):
    conversation = answered(alice, "What is *crema*?", "The foam on an espresso.")
    client = signed_in(alice)
    markdown_file = client.get(f"/c/{conversation.pk}/export.md")
    assert markdown_file["Content-Type"].startswith("text/markdown")
    assert 'filename="what-is-crema.md"' in markdown_file["Content-Disposition"]
    text = markdown_file.content.decode()
    assert "## You\n\nWhat is *crema*?" in text and "## sim-chat\n\nThe foam" in text
    document = json.loads(client.get(f"/c/{conversation.pk}/export.json").content)
    assert document["messages"] == [
        {"role": "user", "content": "What is *crema*?"},
        {"role": "assistant", "content": "The foam on an espresso.", "model": "sim-chat"},
    ]


async def test_the_socket_takes_a_system_prompt_only_with_a_new_conversation(alice, chat_backend):
    socket, connected, _ = await connect(alice)
    assert connected
    await socket.send_json_to(
        {"type": "prompt", "model": "sim-chat", "content": "hi", "system": "Be kind."}
    )
    accepted = await socket.receive_json_from(timeout=5)
    while accepted["type"] != "accepted":
        accepted = await socket.receive_json_from(timeout=5)
    conversation = await database_sync_to_async(Conversation.objects.get)(
        pk=accepted["conversation"]
    )
    assert conversation.system_prompt == "Be kind."
    await socket.send_json_to(
        {
            "type": "prompt",
            "model": "sim-chat",
            "content": "again",
            "system": "Be rude.",
            "conversation": conversation.pk,
        }
    )
    refused = await socket.receive_json_from(timeout=5)
    while refused["type"] != "error":
        refused = await socket.receive_json_from(timeout=5)
    assert refused["code"] == "invalid_system"
    await socket.disconnect()
