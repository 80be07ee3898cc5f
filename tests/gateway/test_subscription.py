"""The delivery subscription both doors use: owner checks, replay, stalls caught up from
the ledger, one final event, leaving the group. On the real channel layer (Redis)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from apps.core import clients
from apps.gateway import delivery, subscription
from apps.gateway.metrics import recorder, totals
from apps.gateway.models import PromptRequest
from apps.gateway.subscription import Subscription

pytestmark = pytest.mark.django_db(transaction=True)


class Door:
    """A door's side of a subscription: what it was sent, in order."""

    def __init__(self, owner_id: int) -> None:
        self.sent: list[dict[str, Any]] = []
        self.layer = get_channel_layer()
        self.owner_id = owner_id

    async def open(self) -> Subscription:
        self.channel = await self.layer.new_channel()
        return Subscription(
            layer=self.layer, channel_name=self.channel, owner_id=self.owner_id, send=self.send
        )

    async def send(self, event: dict[str, Any]) -> None:
        self.sent.append(event)

    def kinds(self) -> list[str]:
        return [event["event"] for event in self.sent]

    async def next_from_layer(self, timeout: float = 5) -> dict[str, Any]:
        return await asyncio.wait_for(self.layer.receive(self.channel), timeout)


async def wait_until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def row(owner, status="running", answer="", **fields) -> PromptRequest:
    now = timezone.now()
    return PromptRequest.objects.create(
        owner=owner,
        model="sim-chat",
        messages=[{"role": "user", "content": "hi"}],
        status=status,
        answer=answer,
        finished_at=now if status in PromptRequest.FINAL_STATUSES else None,
        **fields,
    )


def refused_so_far() -> float:
    recorder.flush()
    return totals(clients.sync_redis()).get("refused", 0)


async def test_events_through_the_channel_layer_reach_the_owner_then_the_group_is_left(alice):
    door = Door(alice.pk)
    sub = await door.open()
    request_id = uuid.uuid4()
    await sub.join(request_id)
    for event in (
        {"event": "tokens", "text": "hello ", "offset": 0},
        {"event": "done", "content": "hello world"},
    ):
        await delivery.push(request_id=request_id, owner_id=alice.pk, event=event)
        await sub.receive(await door.next_from_layer())
    assert door.kinds() == ["tokens", "done"]
    # Left at the end: a later push to the group does not reach the channel — the marker
    # sent after it is the next thing there.
    await delivery.push(request_id=request_id, owner_id=alice.pk, event={"event": "tokens"})
    await door.layer.send(door.channel, {"type": "marker"})
    assert (await door.next_from_layer())["type"] == "marker"


async def test_an_event_recorded_for_another_owner_is_refused_and_counted(alice, bob):
    # The last guard before a frame leaves the server: even if a door were wrongly in a
    # group, an event recorded for another owner is dropped and counted.
    door = Door(alice.pk)
    sub = await door.open()
    request_id = str(uuid.uuid4())
    await sub.join(request_id)
    before = await database_sync_to_async(refused_so_far)()
    event = {"type": delivery.EVENT_TYPE, "event": "tokens", "request": request_id, "text": "x"}
    await sub.receive({**event, "owner": bob.pk})
    assert door.sent == []
    assert await database_sync_to_async(refused_so_far)() == before + 1
    await sub.receive({**event, "owner": alice.pk})
    assert door.kinds() == ["tokens"]


async def test_an_event_for_a_request_not_joined_here_is_dropped_but_not_counted(alice):
    door = Door(alice.pk)
    sub = await door.open()
    await sub.join(uuid.uuid4())
    before = await database_sync_to_async(refused_so_far)()
    elsewhere = {"event": "done", "owner": alice.pk, "request": str(uuid.uuid4())}
    await sub.receive(elsewhere)
    assert door.sent == []
    # A late frame of the owner's own request is no breach: the guard's count stays.
    assert await database_sync_to_async(refused_so_far)() == before


async def test_a_cache_hit_replays_as_the_events_of_a_live_answer(alice, settings):
    settings.BARISTA_FLUSH_TOKENS = 2
    answer = "Crema is the foam of fine oil and gas on top of an espresso."
    hit = await database_sync_to_async(row)(alice, status="done", answer=answer)
    door = Door(alice.pk)
    sub = await door.open()
    await sub.join(hit.id)
    await sub.replay(hit)
    kinds = door.kinds()
    assert kinds[0] == "status" and kinds[-1] == "done" and set(kinds[1:-1]) == {"tokens"}
    assert len(kinds) > 3  # the answer came in several batches, as a live one does
    assert "".join(e["text"] for e in door.sent if e["event"] == "tokens") == answer
    assert door.sent[-1]["content"] == answer
    assert {e["owner"] for e in door.sent} == {alice.pk}


async def test_a_stalled_request_that_ended_is_answered_from_the_ledger(alice, settings):
    settings.BARISTA_DELIVERY_STALL = 0.1
    request = await database_sync_to_async(row)(alice)
    door = Door(alice.pk)
    sub = await door.open()
    await sub.join(request.id)
    sub.expect(request.id)
    # The worker finishes it, but its final event is lost on the way.
    await database_sync_to_async(PromptRequest.objects.filter(id=request.id).update)(
        status="done", answer="from the ledger", finished_at=timezone.now()
    )
    await wait_until(lambda: door.kinds() == ["done"])
    assert door.sent[0]["content"] == "from the ledger"
    assert not sub.expecting
    await sub.close()


async def test_a_request_still_running_is_left_alone_by_the_stall_watch(
    alice, settings, monkeypatch
):
    settings.BARISTA_DELIVERY_STALL = 0.05
    request = await database_sync_to_async(row)(alice)
    looked_up: list[str] = []
    real_row = subscription._row

    def counting_row(request_id: str):
        looked_up.append(request_id)
        return real_row(request_id)

    monkeypatch.setattr(subscription, "_row", counting_row)
    door = Door(alice.pk)
    sub = await door.open()
    await sub.join(request.id)
    sub.expect(request.id)
    await wait_until(lambda: len(looked_up) >= 2)  # it looked, twice, and found it running
    assert door.sent == []
    assert sub.expecting
    await sub.close()


async def test_a_late_duplicate_final_event_is_dropped(alice):
    answered = await database_sync_to_async(row)(alice, status="done", answer="once")
    door = Door(alice.pk)
    sub = await door.open()
    await sub.join(answered.id)
    await sub.catch_up(answered.id)  # the ledger said it ended...
    live_final = {
        "event": "done",
        "content": "once",
        "owner": alice.pk,
        "request": str(answered.id),
    }
    await sub.receive(live_final)  # ...then the live final arrived after all
    await sub.receive({**live_final, "event": "tokens", "text": "late"})
    assert door.kinds() == ["done"]


async def test_leaving_while_redis_is_away_is_quiet(alice):
    door = Door(alice.pk)
    sub = await door.open()
    request_id = uuid.uuid4()
    await sub.join(request_id)

    async def redis_away(group: str, channel: str) -> None:
        from redis.exceptions import ConnectionError

        raise ConnectionError("Redis went away")

    door.layer.group_discard = redis_away
    try:
        await sub.close()  # no exception: the group expires by itself
    finally:
        del door.layer.group_discard
    assert not sub.expecting


async def test_a_local_channel_hears_its_groups_and_holds_no_subscription_of_its_own(alice):
    """An API request's channel (apps.core.channel_layer.new_local_channel): its group's
    events reach it; Redis subscribes to the group alone, and what is sent to the channel's
    own name goes nowhere."""
    layer = get_channel_layer()
    door = Door(alice.pk)
    door.channel = await layer.new_local_channel()
    sub = Subscription(layer=layer, channel_name=door.channel, owner_id=alice.pk, send=door.send)
    request_id = uuid.uuid4()
    await sub.join(request_id)
    redis = clients.redis()
    subscribed = {n.decode() if isinstance(n, bytes) else n for n in await redis.pubsub_channels()}
    assert door.channel not in subscribed
    assert any(delivery.group_name(request_id) in name for name in subscribed)

    await layer.send(door.channel, {"type": "request.event", "event": "tokens"})  # nowhere
    await delivery.push(request_id=request_id, owner_id=alice.pk, event={"event": "done"})
    await sub.receive(await door.next_from_layer())
    assert door.kinds() == ["done"]  # the group's event, and nothing sent to the name

    assert layer._get_layer().channels[door.channel].empty()
    await layer.delete_channel(door.channel)
    assert door.channel not in layer._get_layer().channels
