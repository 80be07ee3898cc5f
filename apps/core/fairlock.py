"""A lock that waiting parties take in turns.

``asyncio.Lock`` is first come, first served: behind one person's 150 waiting prompts,
another person's single prompt is 151st. ``FairLock`` serves its waiters round robin by
*party* (a person), and within a party round robin by *source* (their API keys, the chat
page), first come, first served within a source: the single prompt is next but one. It
is deficit round robin with one turn of the lock as the quantum.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class FairLock:
    def __init__(self) -> None:
        self._held = False
        # party -> source -> its waiters, first come first; parties and, within each,
        # sources with waiters in the order of their next turn.
        self._waiting: dict[Hashable, dict[Hashable, deque[asyncio.Future[None]]]] = {}
        self._turns: deque[Hashable] = deque()
        self._source_turns: dict[Hashable, deque[Hashable]] = {}

    def locked(self) -> bool:
        """Held, or waited for: a newcomer would not get it at once."""
        return self._held or bool(self._turns)

    @property
    def waiting(self) -> int:
        return sum(len(w) for sources in self._waiting.values() for w in sources.values())

    @asynccontextmanager
    async def hold(self, party: Hashable, source: Hashable = None) -> AsyncIterator[None]:
        await self.acquire(party, source)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, party: Hashable, source: Hashable = None) -> None:
        if not self.locked():
            self._held = True
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sources = self._waiting.get(party)
        if sources is None:
            sources = self._waiting[party] = {}
            self._source_turns[party] = deque()
            self._turns.append(party)
        waiters = sources.get(source)
        if waiters is None:
            waiters = sources[source] = deque()
            self._source_turns[party].append(source)
        waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed the lock as it was cancelled: pass it on
            else:
                self._forget(party, source, turn)
            raise

    def release(self) -> None:
        """Hand the lock to the next party's next source's longest waiter, or free it."""
        while self._turns:
            party = self._turns.popleft()
            sources, source_turns = self._waiting[party], self._source_turns[party]
            source = source_turns.popleft()
            waiters = sources[source]
            turn = waiters.popleft()
            if waiters:
                source_turns.append(source)  # its next waiter, after the party's others
            else:
                del sources[source]
            if sources:
                self._turns.append(party)  # its next turn, after everyone else's
            else:
                del self._waiting[party], self._source_turns[party]
            if not turn.done():
                turn.set_result(None)  # still held: it is theirs now
                return
        self._held = False

    def _forget(self, party: Hashable, source: Hashable, turn: asyncio.Future[None]) -> None:
        sources = self._waiting.get(party)
        waiters = sources.get(source) if sources is not None else None
        if sources is None or waiters is None or turn not in waiters:
            return
        waiters.remove(turn)
        if not waiters:
            del sources[source]
            self._source_turns[party].remove(source)
        if not sources:
            del self._waiting[party], self._source_turns[party]
            self._turns.remove(party)
