"""``/ws/metrics/``: staff only; the last 15 minutes on connect, then one snapshot a second."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from apps.console import live_metrics
from apps.core.dispatch import DirectDispatch

logger = logging.getLogger(__name__)
CLOSE_FORBIDDEN = 4403


class MetricsConsumer(DirectDispatch, AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_staff:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.accept()
        self.pusher: asyncio.Task[None] = asyncio.create_task(self._push())

    async def disconnect(self, code: int) -> None:
        pusher = getattr(self, "pusher", None)
        if pusher is not None:
            pusher.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        pass  # nothing to say to us

    async def _send(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(frame))

    async def _push(self) -> None:
        await self._send(
            {
                "type": "history",
                "points": await live_metrics.history(),
                "gauges": await live_metrics.gauges(),
            }
        )
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.send(text_data=await live_metrics.snapshot_frame())
            except Exception:  # Redis away: say so, keep trying
                logger.warning("metrics snapshot failed", exc_info=True)
                await self._send({"type": "unavailable"})
