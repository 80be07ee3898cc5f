"""Group commit for the ledger writes of prompts in flight in one worker process.

With hundreds of prompts in flight, writing each start and each answer in its own
transaction (and its own hop to the database thread) made the database the worker's
bottleneck. Here each write is queued with a future; one flusher task writes everything
queued while the previous batch was being written, in one hop and one transaction per
kind. Nothing is delayed on purpose: an idle worker writes a lone prompt at once. The
services do the locking and status checks, so batching changes no guarantee.

When the database is away (restarting, failing over), a batch is written again and again,
with a growing pause, for up to ``BARISTA_DATABASE_OUTAGE_WAIT`` seconds: the answers in
hand are recorded when it is back, instead of their prompts being run again from the
start by the reconciler. Each write is one transaction, so a failed one left nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError

from apps.core.loop import PerLoop
from apps.gateway import services
from apps.gateway.models import PromptRequest

logger = logging.getLogger(__name__)

Started = tuple[PromptRequest, bool] | None
Written = tuple[dict[str, Started], dict[str, bool]]


class GroupCommit:
    def __init__(self) -> None:
        self._starts: list[tuple[str, asyncio.Future[Started]]] = []
        self._completes: list[tuple[services.Completion, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def start(self, request_id: str) -> Started:
        future: asyncio.Future[Started] = asyncio.get_running_loop().create_future()
        self._starts.append((services.request_key(request_id), future))
        self._kick()
        return await future

    async def complete(self, completion: services.Completion) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._completes.append((completion, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._starts or self._completes:
            starts, self._starts = self._starts, []
            completes, self._completes = self._completes, []
            try:
                started, completed = await _write_through_outages(
                    [key for key, _ in starts], [c for c, _ in completes]
                )
            except Exception as exc:  # every waiter hears about it; the loop goes on
                for _, waiting_start in starts:
                    if not waiting_start.done():
                        waiting_start.set_exception(exc)
                for _, waiting_complete in completes:
                    if not waiting_complete.done():
                        waiting_complete.set_exception(exc)
                continue
            for key, start_future in starts:
                if not start_future.done():
                    start_future.set_result(started[key])
            for completion, complete_future in completes:
                if not complete_future.done():
                    complete_future.set_result(
                        completed[services.request_key(completion.request_id)]
                    )


async def _write_through_outages(
    start_ids: list[str], completions: list[services.Completion]
) -> Written:
    deadline = time.monotonic() + settings.BARISTA_DATABASE_OUTAGE_WAIT
    pause = 0.1
    while True:
        try:
            return await database_sync_to_async(_write)(start_ids, completions)
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + pause > deadline:
                raise
            logger.warning(
                "the database is not answering (%s): %d starts and %d answers wait to be "
                "recorded; trying again in %.1f s",
                type(exc).__name__,
                len(start_ids),
                len(completions),
                pause,
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


def _write(start_ids: list[str], completions: list[services.Completion]) -> Written:
    started = services.request_start_many(request_ids=start_ids) if start_ids else {}
    completed = services.request_complete_many(completions=completions) if completions else {}
    return started, completed


# One per event loop: its futures belong to that loop.
group_commit = PerLoop(GroupCommit)
