"""/ws/metrics/: staff only; history first, then a snapshot every second."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from apps.gateway.metrics import recorder
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
    assert (
        snapshot["type"] == "snapshot" and snapshot["point"]["t"] > history["points"][-1]["t"] - 1
    )
    await communicator.disconnect()
