"""One of a thing per event loop.

asyncio objects — clients with connection pools, locks, futures — belong to the loop they
were made on. A process serves from one loop (daphne, a worker), but tests and RQ's stock
workers start fresh loops, and an object from an old loop fails on the new one. ``PerLoop``
makes the thing on first use on the running loop and again when the loop changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class PerLoop[T]:
    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._value: T | None = None

    def __call__(self) -> T:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._value is None:
            # The old loop's object is dropped, not closed: its loop is gone or elsewhere.
            self._value, self._loop = self._factory(), loop
        return self._value

    def current(self) -> T | None:
        """The running loop's object if one was made (to close it), else None."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return self._value if self._loop is loop else None
