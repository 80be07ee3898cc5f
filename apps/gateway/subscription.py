"""One door's subscription to the requests it waits on: the delivery protocol, once.

Both doors — the chat socket (many requests per socket) and the API (one per HTTP
request) — receive a request's progress the same way:

1. **join** the request's channel group *before* the request is submitted, so no early
   frame is missed (the group is named by the request's unguessable id);
2. **check the owner** of every event the channel layer brings: it must be this
   subscriber's person (DESIGN.md, decision 3) — anything else is refused, counted and
   logged, never sent — and one of the requests it still listens to;
3. **replay** an answer from the cache as the same events a live answer sends;
4. **watch for stalls**: the channel layer is at-most-once, so a request that has sent
   nothing for ``BARISTA_DELIVERY_STALL`` seconds is looked up in the ledger and, if it
   has ended, its final event is sent from there (decision 2);
5. send **one** final event per request (a late duplicate — the live one arriving after a
   catch-up — is dropped) and **leave** the group, quietly if Redis is away (groups
   expire by themselves).

The door gives a ``send`` callback that turns events into its own wire format (frames,
SSE, JSON); events reach it one at a time, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer
from django.conf import settings
from redis.exceptions import RedisError

from apps.gateway import delivery
from apps.gateway.metrics import recorder
from apps.gateway.models import PromptRequest

logger = logging.getLogger(__name__)

Event = dict[str, Any]
FINAL_EVENTS = frozenset({"done", "failed", "cancelled"})


class Subscription:
    def __init__(
        self,
        *,
        layer: BaseChannelLayer,
        channel_name: str,
        owner_id: int,
        send: Callable[[Event], Awaitable[None]],
    ) -> None:
        self.layer = layer
        self.channel_name = channel_name
        self.owner_id = owner_id
        self._send = send
        self._joined: set[str] = set()
        self._ended: set[str] = set()
        # Requests whose frames are on their way -> when their last frame arrived.
        self._expecting: dict[str, float] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # --- Joining and leaving -----------------------------------------------------------

    async def join(self, request_id: uuid.UUID | str) -> None:
        """Listen to a request (before it is submitted, or to follow it again)."""
        key = str(uuid.UUID(str(request_id)))
        await self.layer.group_add(delivery.group_name(key), self.channel_name)
        self._joined.add(key)
        self._ended.discard(key)

    async def leave(self, request_id: uuid.UUID | str) -> None:
        key = str(uuid.UUID(str(request_id)))
        self._expecting.pop(key, None)
        if key not in self._joined:
            return
        self._joined.discard(key)
        try:
            await self.layer.group_discard(delivery.group_name(key), self.channel_name)
        except RedisError:
            pass  # the group expires by itself

    async def close(self) -> None:
        """The door is going away: stop watching and leave every group."""
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        for key in list(self._joined):
            await self.leave(key)

    # --- Events ------------------------------------------------------------------------

    async def receive(self, event: Event) -> None:
        """An event from the channel layer: sent on only if it is this owner's, for a
        request joined here. Another owner's event is refused and counted (it must never
        happen); one for a request already left — a frame still in the channel after the
        request ended here — is dropped quietly."""
        if event.get("owner") != self.owner_id:
            recorder.refused_frame()
            logger.error("refused an event for request %s: owner mismatch", event.get("request"))
            return
        if str(event.get("request")) not in self._joined:
            return
        await self.deliver(event)

    async def deliver(self, event: Event) -> None:
        """Send an event the server made itself (a replay, a catch-up, a cancellation)
        or one that passed the owner check. Ignores anything after a request's end."""
        key = str(event["request"])
        async with self._lock:
            if key in self._ended:
                return  # a late duplicate (the live final after a catch-up): once is enough
            final = event["event"] in FINAL_EVENTS
            if final:
                self._ended.add(key)
                self._expecting.pop(key, None)
            elif key in self._expecting:
                self._expecting[key] = time.monotonic()
            await self._send(event)
        if final:
            await self.leave(key)

    async def replay(self, request: PromptRequest) -> None:
        """An answer from the cache, as the events of a live one."""
        if request.backend_id is None or PromptRequest.backend.is_cached(request):
            events = delivery.replay_events(request)  # nothing left to read from the database
        else:
            events = await database_sync_to_async(delivery.replay_events)(request)
        for event in events:
            await self.deliver(event)

    # --- Stalls and catching up ----------------------------------------------------------

    def expect(self, request_id: uuid.UUID | str) -> None:
        """Frames are on their way for this request: watch that they keep coming."""
        self._expecting[str(uuid.UUID(str(request_id)))] = time.monotonic()
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch())

    @property
    def expecting(self) -> bool:
        return bool(self._expecting)

    async def catch_up(self, request_id: uuid.UUID | str) -> PromptRequest | None:
        """Send a request's final event from the ledger if it has ended. Returns the row
        as it is now (None if it does not exist)."""
        row = await database_sync_to_async(_row)(str(request_id))
        if row is not None and row.is_final:
            await self.deliver({**delivery.final_event(row), "request": str(row.id)})
        return row

    async def _watch(self) -> None:
        stall = settings.BARISTA_DELIVERY_STALL
        while self._expecting:
            await asyncio.sleep(min(1.0, stall))
            now = time.monotonic()
            for key, last in list(self._expecting.items()):
                if now - last < stall:
                    continue
                self._expecting[key] = now
                try:
                    row = await self.catch_up(key)
                except Exception:  # the database away too: try again next round
                    logger.warning("could not check request %s", key, exc_info=True)
                    continue
                if row is not None and row.is_final:
                    recorder.caught_up()


def _row(request_id: str) -> PromptRequest | None:
    return PromptRequest.objects.select_related("backend").filter(id=request_id).first()
