"""Admission limits, people taking turns in the queue, and the live place in line."""

from __future__ import annotations

import contextlib
import threading
import uuid

import pytest
from channels.db import database_sync_to_async
from django.db import connection

from apps.chat.services import chat_prompt_submit
from apps.gateway.admission import Rejection
from apps.gateway.models import PromptRequest
from apps.gateway.operations import request_cancel
from apps.gateway.queues import connection as queue_connection
from apps.gateway.selectors import queue_position
from apps.gateway.services import request_submit
from tests.conftest import queued_jobs
from tests.gateway.test_end_to_end import collect, open_socket, send_prompt

pytestmark = pytest.mark.django_db(transaction=True)


def submit(user, content=None):
    """A prompt of its own (identical prompts would be merged, and not queued again)."""
    content = content or f"hello {uuid.uuid4().hex}"
    return chat_prompt_submit(user=user, model="sim-chat", content=content)


async def prompt_reply(socket, content):
    """Send a prompt and return the reply to it (skipping place-in-line updates)."""
    await send_prompt(socket, content, ref=content)
    while True:
        frame = await socket.receive_json_from(timeout=5)
        if frame["type"] in {"accepted", "error"} and frame.get("ref") == content:
            return frame


async def test_past_the_global_queue_bound_the_page_is_told_busy_and_nothing_is_queued(
    alice, bob, chat_backend, settings
):
    settings.BARISTA_MAX_QUEUED = 3
    for _ in range(3):
        await database_sync_to_async(submit)(alice)
    alices = await open_socket(alice)
    reply = await prompt_reply(alices, "one more")
    assert reply["type"] == "error"
    assert reply["code"] == "busy"
    assert reply["retry_after"] >= 1
    assert f"Try again in {reply['retry_after']} s" in reply["error"]
    assert reply["ref"] == "one more"
    assert await database_sync_to_async(PromptRequest.objects.count)() == 3
    assert queued_jobs() == 3
    # Alice's backlog filling the bound does not lock Bob out: with nothing waiting he
    # gets his turn — one, not a second.
    bobs = await open_socket(bob)
    assert (await prompt_reply(bobs, "mine"))["type"] == "accepted"
    assert (await prompt_reply(bobs, "and mine"))["code"] == "busy"
    assert queued_jobs() == 4
    await alices.disconnect()
    await bobs.disconnect()


async def test_a_person_over_their_rate_is_refused_and_others_are_not(
    alice, bob, chat_backend, settings
):
    settings.BARISTA_USER_RATE_PER_MINUTE = 2
    socket = await open_socket(alice)
    assert (await prompt_reply(socket, "a"))["type"] == "accepted"
    assert (await prompt_reply(socket, "b"))["type"] == "accepted"
    refused = await prompt_reply(socket, "c")
    assert refused["code"] == "rate_limited"
    assert 1 <= refused["retry_after"] <= 60
    bobs = await open_socket(bob)
    assert (await prompt_reply(bobs, "d"))["type"] == "accepted"
    assert await database_sync_to_async(PromptRequest.objects.filter(owner=alice).count)() == 2
    await socket.disconnect()
    await bobs.disconnect()


def test_one_persons_thousand_prompts_are_all_queued_and_anothers_one_goes_next(
    alice, bob, carol, chat_backend
):
    # With the defaults nobody is refused for sending many: the queue takes turns.
    flood = [submit(alice, f"flood {index}") for index in range(1000)]
    bobs = submit(bob, "just one")
    # Bob waits behind one of Alice's prompts (the one at the head), not 1,000.
    assert queue_position(request_id=str(bobs.id)) == 2
    carols = submit(carol, "me too")
    assert queue_position(request_id=str(carols.id)) == 3
    # Alice's own order is kept, each of hers one turn after the last.
    assert [queue_position(request_id=str(r.id)) for r in flood[:3]] == [1, 4, 5]
    assert queue_position(request_id=str(flood[-1].id)) == 1002
    assert queued_jobs() == 1002


def test_a_prompt_is_queued_when_redis_has_forgotten_the_scripts(alice, bob, chat_backend):
    """Enqueueing runs the fair lane's script by its SHA in the job's own transaction; a
    Redis restarted or flushed since knows no scripts, and the prompt is queued all the
    same, in its turn."""
    first = submit(alice, "before")
    queue_connection().script_flush()
    second, bobs = submit(alice, "after"), submit(bob, "bob's")
    assert [queue_position(request_id=str(r.id)) for r in (first, bobs, second)] == [1, 2, 3]
    assert queued_jobs() == 3


def test_prompts_a_person_cancelled_do_not_push_their_next_one_back(alice, bob, chat_backend):
    for request in [submit(alice, f"never mind {i}") for i in range(5)]:
        request_cancel(owner_id=alice.pk, request_id=request.id)
    for index in range(3):
        submit(bob, f"bob {index}")
    mine = submit(alice, "this one after all")
    # Nothing of Alice's waits: she starts at the current turn, right after Bob's first.
    assert queue_position(request_id=str(mine.id)) == 2
    assert queued_jobs() == 4


def test_a_cap_staff_set_on_each_person_still_refuses(alice, bob, chat_backend, settings):
    settings.BARISTA_USER_MAX_PENDING = 5
    accepted, refused = 0, 0
    for index in range(8):
        try:
            submit(alice, f"flood {index}")
            accepted += 1
        except Rejection as exc:
            assert exc.code == "too_many_pending"
            assert "5 prompts waiting or being answered" in exc.message
            refused += 1
    assert (accepted, refused) == (5, 3)
    # The same request as one in flight shares its slot: it is merged, not queued.
    submit(alice, "flood 0")
    submit(bob, "someone else")
    assert PromptRequest.objects.count() == 7
    assert queued_jobs() == 6


async def test_the_owner_sees_their_place_in_line_move_and_no_one_else_does(
    alice, bob, settings, start_simulator, start_worker
):
    settings.BARISTA_QUEUE_POSITION_INTERVAL = 0.2
    sim = start_simulator("--ttft", "0.6", "--tps", "0", "--tokens", "10")
    await database_sync_to_async(sim.register)(alias="sim-chat")
    for index in range(3):
        await database_sync_to_async(submit)(bob, f"ahead {index}")
    alice_socket, bob_socket = await open_socket(alice), await open_socket(bob)
    accepted = await prompt_reply(alice_socket, "where am I")
    first = await alice_socket.receive_json_from(timeout=5)
    assert first == {
        "type": "queue",
        "request": accepted["request"],
        "position": 2,  # Bob's three take turns with Alice's one
        "eta": first["eta"],
    }
    assert first["eta"] >= 1

    start_worker(BARISTA_WORKER_CONCURRENCY="1")
    frames = await collect(alice_socket, timeout=20)
    positions = [first["position"]] + [f["position"] for f in frames if f["type"] == "queue"]
    assert positions == sorted(positions, reverse=True)
    assert positions[-1] == 1
    assert frames[-1]["type"] == "done"
    assert "where am I" in frames[-1]["content"]
    # Bob's socket never hears about Alice's place in line.
    assert await bob_socket.receive_nothing(timeout=0.5)
    await alice_socket.disconnect()
    await bob_socket.disconnect()


def test_a_cap_on_requests_at_once_holds_under_concurrent_submissions(
    alice, chat_backend, monkeypatch
):
    """Counting the slots and recording the prompt are one step. Two prompts of a key
    with room for one, submitted at once from two threads (as from two web processes):
    each waits for the other just before its row is written, so if both could count
    the free slot before either recorded, both would be accepted."""
    from apps.api.services import api_key_create

    key, _ = api_key_create(owner=alice, name="capped", max_concurrent=1)
    meet = threading.Barrier(2, timeout=1.0)
    create = PromptRequest.objects.create

    def create_when_both_are_here(**fields):
        with contextlib.suppress(threading.BrokenBarrierError):
            meet.wait()  # with the lock, the other is not here: a second's wait, then on
        return create(**fields)

    monkeypatch.setattr(PromptRequest.objects, "create", create_when_both_are_here)
    outcomes: list[str] = []

    def one(index: int) -> None:
        try:
            request_submit(
                principal=key.principal(),
                model="sim-chat",
                messages=[{"role": "user", "content": f"at once {index}"}],
                source=PromptRequest.Source.API,
            )
            outcomes.append("accepted")
        except Rejection as exc:
            assert "limit is 1 requests at once" in exc.message
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["accepted", "refused"]
    assert PromptRequest.objects.filter(api_key_id=key.pk).count() == 1
