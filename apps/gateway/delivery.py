"""Pushing a request's progress to the one person who asked.

Each request streams to a channel group named by its unguessable id; only the owner's
consumer joins it (checked in the consumer), and every event carries the owner's id so the
receiving consumer re-checks it before a frame leaves the server (DESIGN.md, decision 3).
Tokens travel in small batches: one frame per token would cost ~0.4 ms of CPU each.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

EVENT_TYPE = "request.event"


def group_name(request_id: uuid.UUID | str) -> str:
    return f"req.{uuid.UUID(str(request_id)).hex}"


async def push(*, request_id: uuid.UUID | str, owner_id: int, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    assert layer is not None, "CHANNEL_LAYERS must be configured"
    await layer.group_send(
        group_name(request_id),
        {**event, "type": EVENT_TYPE, "owner": owner_id, "request": str(request_id)},
    )


def done_event(
    *,
    answer: str,
    usage: Any,
    backend: Any,
    cache_outcome: str = "miss",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The final frame of an answer, whether live, coalesced or replayed from the cache.
    ``extra``: what it holds beyond its text (``apps.gateway.extras``)."""
    extra = extra or {}
    return {
        "event": "done",
        "content": answer,
        "extra": extra,
        "usage": {
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
        },
        "backend": backend.name if backend else None,
        "simulated": bool(backend.simulated) if backend else False,
        "cache": cache_outcome,
        "finish_reason": getattr(usage, "finish_reason", None)
        or extra.get("finish_reason")
        or "stop",
    }


def final_event(request: Any) -> dict[str, Any]:
    """The event that ended a final ledger row, built from the row alone: what a socket or
    an API request is sent when the live event never reached it."""
    if request.status == "done":
        return done_event(
            answer=request.answer,
            usage=request,
            backend=request.backend,
            cache_outcome=request.cache_outcome,
            extra=request.extra,
        )
    if request.status == "cancelled":
        return {"event": "cancelled"}
    return {"event": "failed", "error": request.error or "The request failed."}


def replay_events(request: Any) -> list[dict[str, Any]]:
    """A cached answer as the events of a live one: running, token batches, done."""
    owner, request_id = request.owner_id, str(request.id)
    # The first event says how it was answered, so a stream's headers can tell it (a
    # door that does not share the model's answers drops it).
    events: list[dict[str, Any]] = [
        {"event": "status", "status": "running", "restart": False, "cache": request.cache_outcome}
    ]
    pieces = _TOKEN_RE.findall(request.answer)
    step, offset = settings.BARISTA_FLUSH_TOKENS, 0
    for start in range(0, len(pieces), step):
        text = "".join(pieces[start : start + step])
        events.append({"event": "tokens", "text": text, "offset": offset})
        offset += len(text)
    events.append(
        done_event(
            answer=request.answer,
            usage=request,
            backend=request.backend,
            cache_outcome=request.cache_outcome,
            extra=request.extra,
        )
    )
    return [{**event, "owner": owner, "request": request_id} for event in events]


_TOKEN_RE = re.compile(r"\S+\s*|\s+")


class TokenBatcher:
    """Collects streamed text; sends it when ``max_tokens`` are waiting or ``interval``
    seconds after the first waiting token, whichever comes first.

    The interval is a timer, not a check made when the next token arrives: under load the
    loop is slow, every token looks "late", and a check-on-arrival rule degrades into one
    push per token — which makes the loop slower still. Pushes are serialised so frames
    leave in order; each carries its offset so a client never shows text twice.
    """

    def __init__(
        self,
        *,
        request_id: uuid.UUID | str,
        owner_id: int,
        after_flush: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.request_id = request_id
        self.owner_id = owner_id
        self.after_flush = after_flush  # e.g. the same text to coalesced followers
        self.interval = settings.BARISTA_FLUSH_INTERVAL
        self.max_tokens = settings.BARISTA_FLUSH_TOKENS
        self._pending: list[str] = []
        # Once a piece came (apps.gateway.extras), every batch carries its pieces in order
        # — choice 0's text among them — and the count sent before it ("seq").
        self._pieces: list[dict[str, Any]] | None = None
        self.sent_pieces = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timed_flush: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.sent_chars = 0

    async def add(self, text: str, piece: dict[str, Any] | None = None) -> None:
        if piece is not None and self._pieces is None:
            self._pieces = [{"index": 0, "delta": {"content": t}} for t in self._pending]
        if self._pieces is not None:
            self._pieces.append(piece or {"index": 0, "delta": {"content": text}})
        if text:
            self._pending.append(text)
        waiting = len(self._pieces) if self._pieces is not None else len(self._pending)
        if waiting >= self.max_tokens:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timed_flush = asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending and not self._pieces:
            return
        text = "".join(self._pending)
        self._pending.clear()
        offset, self.sent_chars = self.sent_chars, self.sent_chars + len(text)
        event: dict[str, Any] = {"event": "tokens", "text": text, "offset": offset}
        if self._pieces:
            event["pieces"], event["seq"] = list(self._pieces), self.sent_pieces
            self.sent_pieces += len(self._pieces)
            self._pieces.clear()
        async with self._lock:
            await push(request_id=self.request_id, owner_id=self.owner_id, event=event)
            if self.after_flush is not None:
                await self.after_flush()

    def discard(self) -> None:
        """The request was stopped: send nothing more."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
        if self._pieces:
            self._pieces.clear()

    async def close(self) -> None:
        """Stop the timer and wait for a push under way, so that the next frame the
        caller sends (the final answer, which carries the whole text) comes after it.
        Pieces still waiting are sent first: the final answer carries them gathered, not
        as the backend sent them."""
        if self._pieces:
            await self.flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._timed_flush is not None:
            await self._timed_flush
        async with self._lock:
            pass
