"""Where the gateway worker takes its jobs: its queues, highest priority first — in each,
the front lane, then people's turns in the fair lane (``apps.gateway.fairness``) — less
the queues staff paused in the console (``apps.gateway.queues``), whose jobs wait where
they are until resumed."""

from __future__ import annotations

import asyncio
from typing import Any

from redis import Redis
from rq import Queue

from apps.gateway import fairness
from apps.gateway.queues import paused_queues

Popped = tuple[str, str]  # (queue key, job id)


async def woken(event: asyncio.Event, within: float) -> None:
    """Until ``event`` is set, or ``within`` seconds at most."""
    try:
        await asyncio.wait_for(event.wait(), timeout=within)
    except TimeoutError:
        pass


class Intake:
    def __init__(self, queues: list[Queue], connection: Redis) -> None:
        self.queues = queues
        self.connection = connection
        self._paused: set[str] = set()
        # The blocking pop runs in a thread and needs a connection of its own.
        pool = connection.connection_pool
        self._blocking = connection.__class__(
            connection_pool=pool.__class__(**pool.connection_kwargs)
        )

    def refresh_paused(self) -> None:
        self._paused = paused_queues(self.connection)

    def _open(self) -> list[Queue]:
        return [queue for queue in self.queues if queue.name not in self._paused]

    def take(self, count: int, first: Popped | None = None) -> list[tuple[Queue, list[str]]]:
        """Take up to ``count`` job ids, queues in priority order, with the queue each came
        from. ``first`` is one a wait already took (it counts)."""
        popped: list[tuple[Queue, list[str]]] = []
        if first is not None:
            popped.append((next(q for q in self.queues if q.key == first[0]), [first[1]]))
            count -= 1
        for queue in self._open():
            if count <= 0:
                break
            ids = fairness.take(self.connection, queue, count)
            if ids:
                popped.append((queue, ids))
                count -= len(ids)
        return popped

    async def wait(self, wake: asyncio.Event) -> Popped | None:
        """Block (in a thread) until a job is in the fair lane of one of the open queues,
        up to 1 s, and take it (the queues in priority order); ``wake`` cuts the wait
        short, but a taken id is never left behind. (Front-lane jobs — re-runs and
        give-backs — are found by ``take``, at the latest when this wait ends.)"""
        open_queues = self._open()
        if not open_queues:  # every queue paused: wait as if none had a job
            await woken(wake, 1.0)
            return None
        waiter = asyncio.get_running_loop().run_in_executor(None, self._blocking_pop, open_queues)
        woke: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
        pending: set[asyncio.Future[Any]] = {waiter, woke}
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        woke.cancel()
        return await waiter  # at most 1 s more

    def _blocking_pop(self, queues: list[Queue]) -> Popped | None:
        popped = fairness.wait_pop(self._blocking, queues, timeout=1)
        return (popped[0].key, popped[1]) if popped else None

    def put_back(self, popped: Popped) -> None:
        """A taken id this worker will not start after all (it is stopping)."""
        queue = next(q for q in self.queues if q.key == popped[0])
        fairness.put_back(self.connection, queue, popped[1])
