"""The chat websocket, through the real ASGI stack (origin check, session auth) and the
real channel layer on Redis."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from apps.chat.models import Conversation
from apps.gateway import delivery
from apps.gateway.models import PromptRequest
from project.asgi import application
from tests.conftest import queued_jobs, ws_headers

pytestmark = pytest.mark.django_db(transaction=True)


async def connect(user, origin="http://127.0.0.1", host="127.0.0.1"):
    headers = await database_sync_to_async(ws_headers)(user, origin, host)
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def test_anonymous_socket_is_refused():
    communicator, connected, code = await connect(None)
    assert not connected
    assert code == 4401


async def test_socket_from_a_foreign_origin_is_refused(alice):
    communicator, connected, _ = await connect(alice, origin="http://evil.example")
    assert not connected


@pytest.mark.parametrize(
    ("origin", "host", "accepted"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("http://127.0.0.1:3000", "127.0.0.1:8000", False),  # another program on this host
        ("https://127.0.0.1:8000", "127.0.0.1:8000", False),  # another scheme
        ("http://evil.example:8000", "evil.example:8000", False),  # not an allowed host
    ],
)
async def test_a_socket_is_accepted_only_from_this_very_origin(alice, origin, host, accepted):
    communicator, connected, _ = await connect(alice, origin=origin, host=host)
    assert connected is accepted
    if connected:
        await communicator.disconnect()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        (json.dumps({"type": "dance"}), "unknown_type"),
        (
            json.dumps({"type": "prompt", "model": "no-such-model", "content": "hi"}),
            "unknown_model",
        ),
        (json.dumps({"type": "prompt", "model": "sim-chat", "content": "   "}), "empty_prompt"),
        (json.dumps({"type": "prompt", "model": "sim-chat"}), "empty_prompt"),
        (
            json.dumps({"type": "prompt", "model": "sim-chat", "content": "x" * 101}),
            "prompt_too_long",
        ),
        (
            json.dumps(
                {"type": "prompt", "model": "sim-chat", "content": "hi", "conversation": "1; drop"}
            ),
            "invalid_conversation",
        ),
    ],
)
async def test_bad_input_gets_a_clear_error_and_changes_nothing(
    alice, chat_backend, settings, frame, code
):
    settings.BARISTA_MAX_PROMPT_CHARS = 100
    communicator, connected, _ = await connect(alice)
    assert connected
    await communicator.send_to(text_data=frame)
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["type"] == "error"
    assert reply["code"] == code
    assert reply["error"]
    assert await database_sync_to_async(PromptRequest.objects.count)() == 0
    assert await database_sync_to_async(Conversation.objects.count)() == 0
    assert queued_jobs() == 0
    await communicator.disconnect()


async def test_oversized_frame_is_refused(alice, chat_backend, settings):
    settings.BARISTA_MAX_SOCKET_MESSAGE_BYTES = 1000
    communicator, _, _ = await connect(alice)
    await communicator.send_to(
        text_data=json.dumps({"type": "prompt", "model": "sim-chat", "content": "y" * 2000})
    )
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["code"] == "message_too_large"
    assert await database_sync_to_async(PromptRequest.objects.count)() == 0
    await communicator.disconnect()


def _sign_out(user) -> None:
    from django.contrib.sessions.models import Session

    Session.objects.all().delete()


def _deactivate(user) -> None:
    type(user).objects.filter(pk=user.pk).update(is_active=False)


def _change_password(user) -> None:
    user.set_password("a-new-password-entirely")
    user.save()


def _expire(user) -> None:
    import datetime

    from django.contrib.sessions.models import Session
    from django.utils import timezone

    Session.objects.update(expire_date=timezone.now() - datetime.timedelta(seconds=1))


@pytest.mark.parametrize("end_it", [_sign_out, _expire, _deactivate, _change_password])
async def test_a_socket_whose_person_signed_out_sends_no_more_prompts(alice, chat_backend, end_it):
    """Signing out, being deactivated or a password change (elsewhere) ends what an open
    socket may do: its next prompt is refused and the socket closed."""
    communicator, connected, _ = await connect(alice)
    assert connected
    await database_sync_to_async(end_it)(alice)
    await communicator.send_to(
        text_data=json.dumps({"type": "prompt", "model": "sim-chat", "content": "still me?"})
    )
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["type"] == "error" and reply["code"] == "signed_out"
    closed = await communicator.receive_output(timeout=5)
    assert closed["type"] == "websocket.close" and closed["code"] == 4401
    assert not await database_sync_to_async(PromptRequest.objects.exists)()


async def test_a_prompt_is_recorded_and_queued_for_a_worker(alice, chat_backend):
    communicator, _, _ = await connect(alice)
    await communicator.send_to(
        text_data=json.dumps(
            {"type": "prompt", "model": "sim-chat", "content": "hello there", "ref": 7}
        )
    )
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["type"] == "accepted"
    assert reply["ref"] == 7
    request = await database_sync_to_async(
        PromptRequest.objects.select_related("chat_message__conversation").get
    )(id=reply["request"])
    assert request.owner_id == alice.pk
    assert request.status == "queued"
    assert request.messages == [{"role": "user", "content": "hello there"}]
    assert request.chat_message.conversation.title == "hello there"
    assert queued_jobs() == 1
    await communicator.disconnect()


async def test_bob_cannot_post_into_alices_conversation(alice, bob, chat_backend):
    conversation = await database_sync_to_async(Conversation.objects.create)(
        owner=alice, title="private"
    )
    communicator, _, _ = await connect(bob)
    await communicator.send_to(
        text_data=json.dumps(
            {
                "type": "prompt",
                "model": "sim-chat",
                "content": "let me in",
                "conversation": conversation.pk,
            }
        )
    )
    reply = await communicator.receive_json_from(timeout=5)
    assert reply == {
        "type": "error",
        "error": "Conversation not found.",
        "code": "not_found",
        "ref": None,
    }
    assert await database_sync_to_async(PromptRequest.objects.count)() == 0
    assert queued_jobs() == 0
    await communicator.disconnect()


async def test_bob_cannot_follow_alices_request(alice, bob):
    request = await database_sync_to_async(PromptRequest.objects.create)(
        owner=alice, model="sim-chat", messages=[{"role": "user", "content": "secret"}]
    )
    communicator, _, _ = await connect(bob)
    await communicator.send_to(text_data=json.dumps({"type": "follow", "request": str(request.id)}))
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["code"] == "not_found"
    # Bob's socket did not join the group: an event for it never reaches him.
    await delivery.push(
        request_id=request.id,
        owner_id=alice.pk,
        event={"event": "tokens", "text": "secret answer", "offset": 0},
    )
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


async def test_alice_can_follow_her_finished_request_and_gets_the_answer(alice):
    request = await database_sync_to_async(PromptRequest.objects.create)(
        owner=alice, model="sim-chat", messages=[], status="done", answer="forty-two"
    )
    communicator, _, _ = await connect(alice)
    await communicator.send_to(text_data=json.dumps({"type": "follow", "request": str(request.id)}))
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["type"] == "done"
    assert reply["content"] == "forty-two"
    await communicator.disconnect()


async def test_an_idle_socket_stays_open_past_the_channel_layers_wait(alice, chat_backend):
    """redis-py 8 reads with a 5 s timeout and channels-redis blocks 5 s waiting for a
    message: without a longer socket timeout every idle consumer crashed after ~5 s."""
    communicator, connected, _ = await connect(alice)
    assert connected
    await asyncio.sleep(7)
    await communicator.send_to(text_data=json.dumps({"type": "nonsense"}))
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["code"] == "unknown_type"  # still there, still answering
    await communicator.disconnect()


async def test_an_answer_whose_final_frame_was_lost_is_sent_from_the_ledger(
    alice, chat_backend, settings
):
    # The worker recorded the answer, but its frames never reached the socket (a channel
    # layer that fell behind, a Redis hiccup): the socket's watchdog reads the ledger.
    settings.BARISTA_DELIVERY_STALL = 0.5
    communicator, connected, _ = await connect(alice)
    assert connected
    frame = {"type": "prompt", "model": "sim-chat", "content": "hello?"}
    await communicator.send_to(text_data=json.dumps(frame))
    accepted = await communicator.receive_json_from(timeout=5)
    assert accepted["type"] == "accepted"
    await database_sync_to_async(PromptRequest.objects.filter(id=accepted["request"]).update)(
        status="done", answer="recorded, never pushed"
    )
    while True:
        reply = await communicator.receive_json_from(timeout=5)
        if reply["type"] != "queue":
            break
    assert reply["type"] == "done" and reply["content"] == "recorded, never pushed"
    assert "<p>recorded, never pushed</p>" in reply["html"]
    # The watchdog stops watching it: nothing more arrives for this answer.
    assert await communicator.receive_nothing(timeout=1.5)
    await communicator.disconnect()
