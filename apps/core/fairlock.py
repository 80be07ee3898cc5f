"""A lock that waiting parties take in turns.

``asyncio.Lock`` is first come, first served: behind one person's 150 waiting prompts,
another person's single prompt is 151st. ``FairLock`` serves its waiters round robin by
*party* (a person), first come, first served within a party: the single prompt is next
but one. It is deficit round robin with one turn of the lock as the quantum.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class FairLock:
    def __init__(self) -> None:
        self._held = False
        self._waiting: dict[Hashable, deque[asyncio.Future[None]]] = {}
        self._turns: deque[Hashable] = deque()  # parties with waiters, next first

    def locked(self) -> bool:
        """Held, or waited for: a newcomer would not get it at once."""
        return self._held or bool(self._turns)

    @property
    def waiting(self) -> int:
        return sum(len(waiters) for waiters in self._waiting.values())

    @asynccontextmanager
    async def hold(self, party: Hashable) -> AsyncIterator[None]:
        await self.acquire(party)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, party: Hashable) -> None:
        if not self.locked():
            self._held = True
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiting.get(party)
        if waiters is None:
            waiters = self._waiting[party] = deque()
            self._turns.append(party)
        waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed the lock as it was cancelled: pass it on
            else:
                self._forget(party, turn)
            raise

    def release(self) -> None:
        """Hand the lock to the next party's longest waiter, or free it."""
        while self._turns:
            party = self._turns.popleft()
            waiters = self._waiting[party]
            turn = waiters.popleft()
            if waiters:
                self._turns.append(party)  # its next waiter, after everyone else's
            else:
                del self._waiting[party]
            if not turn.done():
                turn.set_result(None)  # still held: it is theirs now
                return
        self._held = False

    def _forget(self, party: Hashable, turn: asyncio.Future[None]) -> None:
        waiters = self._waiting.get(party)
        if waiters is None or turn not in waiters:
            return
        waiters.remove(turn)
        if not waiters:
            del self._waiting[party]
            self._turns.remove(party)
