"""The gateway worker.

Walking skeleton: RQ's SimpleWorker (one prompt at a time per process, no fork), one
process per core. The concurrent asyncio worker of DESIGN.md decision 1 replaces it.

Jobs run their coroutines on one event loop that lives as long as the process, with one
shared HTTP client: a fresh loop and client per job cost ~50 ms (loading TLS certificates,
new Redis connections for the channel layer) — more than everything else on the path.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
from django.conf import settings
from rq import SimpleWorker

T = TypeVar("T")


class AsyncRuntime:
    """An event loop on a daemon thread, and the HTTP client that lives on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, daemon=True, name="gateway-loop"
        )
        self._thread.start()
        self.client: httpx.AsyncClient = self.run(self._make_client())

    @staticmethod
    async def _make_client() -> httpx.AsyncClient:
        # Redirects are never followed: a backend must not point a worker elsewhere.
        return httpx.AsyncClient(
            timeout=httpx.Timeout(
                settings.BARISTA_BACKEND_READ_TIMEOUT,
                connect=settings.BARISTA_BACKEND_CONNECT_TIMEOUT,
            ),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it. If the wait is interrupted (RQ's job
        timeout raises in this thread), the coroutine is cancelled, not left running."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise


_runtime: AsyncRuntime | None = None
_runtime_lock = threading.Lock()


def runtime() -> AsyncRuntime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = AsyncRuntime()
        return _runtime


class GatewayWorker(SimpleWorker):
    pass
