"""Channels consumers that hand each message straight to its handler.

``channels.consumer.AsyncConsumer.dispatch`` runs ``close_old_connections`` in a thread
before every message a consumer handles — a thread hop per websocket frame and per token
batch from the channel layer, measured as a large share of the web process's time
(docs/perf/). Barista's consumers reach the database only through
``database_sync_to_async``, which closes stale connections itself around each call, so
that hop buys nothing here.
"""

from __future__ import annotations

from typing import Any

from channels.consumer import get_handler_name


class DirectDispatch:
    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)
