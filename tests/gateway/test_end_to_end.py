"""The whole path with real parts: chat socket → ledger → RQ on a real Redis → a worker
process → HTTP to a simulator process → channel layer → the owner's socket."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from apps.chat.models import Message
from apps.gateway.models import PromptRequest
from project.asgi import application
from tests.conftest import ws_headers

pytestmark = pytest.mark.django_db(transaction=True)


async def open_socket(user):
    headers = await database_sync_to_async(ws_headers)(user)
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def send_prompt(communicator, content, **fields):
    """Send a prompt for the alias sim-chat on the chat socket."""
    await communicator.send_to(
        text_data=json.dumps({"type": "prompt", "model": "sim-chat", "content": content, **fields})
    )


async def collect(communicator, timeout=30.0):
    """Every frame until the request ends, as a list."""
    frames = []
    while True:
        frame = await communicator.receive_json_from(timeout=timeout)
        frames.append(frame)
        if frame["type"] in {"done", "failed", "error"}:
            return frames


def streamed_text(frames):
    return "".join(f["text"] for f in frames if f["type"] == "tokens")


async def test_two_people_at_once_each_get_only_their_own_answer(
    alice, bob, start_simulator, start_worker
):
    sim = start_simulator("--ttft", "0.2", "--tps", "200", "--tokens", "80")
    await database_sync_to_async(sim.register)(alias="sim-chat")
    start_worker()
    start_worker()
    alice_socket, bob_socket = await open_socket(alice), await open_socket(bob)
    await send_prompt(alice_socket, "alice canary APRICOT-1")
    await send_prompt(bob_socket, "bob canary BLUEBERRY-2")
    alice_frames, bob_frames = await asyncio.gather(collect(alice_socket), collect(bob_socket))

    for frames, mine, theirs in [
        (alice_frames, "APRICOT-1", "BLUEBERRY-2"),
        (bob_frames, "BLUEBERRY-2", "APRICOT-1"),
    ]:
        kinds = [f["type"] for f in frames if f["type"] != "queue"]  # place in line, if any
        assert kinds[:2] == ["accepted", "status"]
        done = frames[-1]
        assert done["type"] == "done"
        assert f'"{"alice" if mine.startswith("A") else "bob"} canary {mine}"' in done["content"]
        # Tokens streamed before the end; the final frame completes them (it carries the
        # whole answer, so the last batch is not sent twice). Nothing of the other person's.
        assert len(streamed_text(frames)) > 0
        assert done["content"].startswith(streamed_text(frames))
        assert theirs not in json.dumps(frames)
        assert done["simulated"] is True

    requests = await database_sync_to_async(list)(PromptRequest.objects.order_by("queued_at"))
    assert {r.status for r in requests} == {"done"}
    for request in requests:
        assert request.first_token_at is not None and request.finished_at is not None
        assert request.completion_tokens == 80
        owner_word = "APRICOT-1" if request.owner_id == alice.pk else "BLUEBERRY-2"
        assert owner_word in request.answer
    answered = Message.objects.filter(request__status="done", request__answer__gt="")
    assert await database_sync_to_async(answered.count)() == 2
    assert sim.stats()["requests_total"] == 2
    await alice_socket.disconnect()
    await bob_socket.disconnect()


async def test_a_prompt_sent_while_no_worker_runs_waits_and_is_answered_later(
    alice, start_simulator, start_worker
):
    sim = start_simulator("--ttft", "0", "--tps", "0")
    await database_sync_to_async(sim.register)(alias="sim-chat")
    socket = await open_socket(alice)
    await send_prompt(socket, "patience CHERRY-3")
    accepted = await socket.receive_json_from(timeout=5)
    assert accepted["type"] == "accepted"
    waiting = await socket.receive_json_from(timeout=5)
    assert waiting["type"] == "queue"
    assert waiting["position"] == 1
    assert await socket.receive_nothing(timeout=1.0)  # nothing else while it waits
    request = await database_sync_to_async(PromptRequest.objects.get)(id=accepted["request"])
    assert request.status == "queued"

    start_worker()
    frames = await collect(socket)
    assert frames[-1]["type"] == "done"
    assert "CHERRY-3" in frames[-1]["content"]
    await socket.disconnect()


async def test_a_failing_backend_gives_a_clear_error_and_a_failed_row(
    alice, start_simulator, start_worker
):
    sim = start_simulator("--error-rate", "1")
    await database_sync_to_async(sim.register)(alias="sim-chat", name="flaky")
    start_worker()
    socket = await open_socket(alice)
    await send_prompt(socket, "doomed")
    frames = await collect(socket)
    assert frames[-1]["type"] == "failed"
    assert "HTTP 500" in frames[-1]["error"]
    assert "127.0.0.1" not in frames[-1]["error"]  # no backend address leaks to people
    request = await database_sync_to_async(PromptRequest.objects.get)(id=frames[0]["request"])
    assert request.status == "failed"
    await socket.disconnect()


async def test_a_second_prompt_carries_the_conversation_history(
    alice, start_simulator, start_worker
):
    sim = start_simulator("--ttft", "0", "--tps", "0", "--tokens", "12")
    await database_sync_to_async(sim.register)(alias="sim-chat")
    start_worker()
    socket = await open_socket(alice)
    await send_prompt(socket, "first")
    first = await collect(socket)
    await send_prompt(socket, "second", conversation=first[0]["conversation"])
    second = await collect(socket)
    assert second[0]["conversation"] == first[0]["conversation"]
    request = await database_sync_to_async(PromptRequest.objects.get)(id=second[0]["request"])
    assert [m["role"] for m in request.messages] == ["user", "assistant", "user"]
    assert request.messages[1]["content"] == first[-1]["content"]
    await socket.disconnect()
