"""/ws/metrics/: staff only; history first, then a snapshot every second."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from apps.gateway import metrics
from apps.gateway.metrics import Recorder, recorder
from project.asgi import application
from tests.conftest import ws_headers

pytestmark = pytest.mark.django_db(transaction=True)


async def connect(user):
    headers = await database_sync_to_async(ws_headers)(user)
    communicator = WebsocketCommunicator(application, "/ws/metrics/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def test_people_who_are_not_staff_are_refused(alice):
    for user in (None, alice):
        communicator, connected, code = await connect(user)
        assert not connected and code == 4403


async def test_staff_get_fifteen_minutes_then_a_point_each_second(staff, chat_backend):
    recorder.request(outcome="miss", model="sim-chat", latency=0.3, ttft=0.1, tokens_out=5)
    recorder.flush()
    await asyncio.sleep(1.1)  # history holds complete seconds
    communicator, connected, _ = await connect(staff)
    assert connected
    history = await communicator.receive_json_from(timeout=5)
    assert history["type"] == "history" and len(history["points"]) == 900
    recent = [p for p in history["points"][-3:] if p["requests"]["miss"]]
    assert recent and 0.25 <= recent[0]["latency"]["p50"] <= 0.5
    assert history["gauges"]["queues"] == {"interactive": 0, "bulk": 0}
    assert history["gauges"]["inflight"] == {"sim-a": 0}
    snapshot = await communicator.receive_json_from(timeout=3)
    assert snapshot["type"] == "snapshot"
    # The last seconds again, oldest first: counts may still arrive after a second ends.
    seconds = [p["t"] for p in snapshot["points"]]
    assert len(seconds) == metrics.SETTLE_SECONDS
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds)))
    assert seconds[-1] >= history["points"][-1]["t"]
    await communicator.disconnect()


async def test_a_count_flushed_after_its_second_was_sent_still_reaches_the_page(
    staff, chat_backend
):
    """A process adds its counts to the store at its next flush, up to a second after
    their second ended — often after the page was sent that second. It is sent again."""
    communicator, connected, _ = await connect(staff)
    assert connected
    assert (await communicator.receive_json_from(timeout=5))["type"] == "history"
    while True:  # counted in one known second (again, if it straddled two)
        late = Recorder(interval=3600)  # another process, whose flush comes late
        second = int(time.time())
        late.rejected(model="sim-chat", reason="too_many_pending")
        if int(time.time()) == second:
            break

    async def sent_with(newest: int) -> dict[int, dict[str, Any]]:
        while True:
            frame = await communicator.receive_json_from(timeout=5)
            if frame["type"] == "snapshot" and frame["points"][-1]["t"] >= newest:
                return {p["t"]: p for p in frame["points"]}

    # The page is sent that second before the count reaches the store: without it.
    sent = await sent_with(second)
    assert sent[second]["refused"] == {} and sent[second]["requests"]["rejected"] == 0
    late.flush()
    again = await sent_with(second + 1)
    assert again[second]["refused"] == {"too_many_pending": 1}
    assert again[second]["requests"]["rejected"] == 1
    await communicator.disconnect()
