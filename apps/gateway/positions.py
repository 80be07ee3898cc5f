"""Where a door's waiting requests stand in line, told to the door when it changes.

Every ``BARISTA_QUEUE_POSITION_INTERVAL`` seconds each watched request's place in line
(``selectors.queue_position``: exactly what will be taken before it) and the wait that
place means (``admission.estimate_wait``) are looked up; the door's ``tell`` is called
when either changed. A request no longer in line (started, merged with another, ended)
is forgotten. Both doors use it: the chat socket sends a ``queue`` frame, the API's
event stream a comment line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from asgiref.sync import sync_to_async
from django.conf import settings
from redis.exceptions import RedisError

from apps.gateway.admission import estimate_wait
from apps.gateway.selectors import queue_position

logger = logging.getLogger(__name__)

Standing = tuple[int, int]  # (1-based place in line, estimated seconds to wait)
Tell = Callable[[str, int, int], Awaitable[None]]


class PlaceInLine:
    def __init__(self, tell: Tell) -> None:
        self._tell = tell
        self._waiting: dict[str, Standing | None] = {}  # request id -> last told
        self._task: asyncio.Task[None] | None = None

    def watch(self, request_id: str) -> None:
        """Tell where this request stands (now, and whenever that changes)."""
        self._waiting.setdefault(request_id, None)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def close(self) -> None:
        self._waiting.clear()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    async def _run(self) -> None:
        while self._waiting:
            for request_id in list(self._waiting):
                try:
                    standing = await _standing(request_id)
                except RedisError:  # Redis away: ask again next round
                    logger.info("could not look up the place of request %s", request_id)
                    continue
                if request_id not in self._waiting:
                    continue  # it started, ended or was cancelled while we looked
                if standing is None:
                    self._waiting.pop(request_id)
                elif self._waiting[request_id] != standing:
                    self._waiting[request_id] = standing
                    await self._tell(request_id, *standing)
            await asyncio.sleep(settings.BARISTA_QUEUE_POSITION_INTERVAL)


# Redis only: off the database's thread, so that many waiting requests do not queue
# behind each other and the database work there.
@sync_to_async(thread_sensitive=False)
def _standing(request_id: str) -> Standing | None:
    position = queue_position(request_id=request_id)
    if position is None:
        return None
    return position, estimate_wait(position)
