"""A small TCP proxy for fault injection: it sits between Barista's processes and Redis,
adds a delay to every chunk in both directions (the technique that reproduced the
redis-py connection bug behind a famous cross-user leak), and can go down — dropping every
connection and refusing new ones — and come back, as a restarting Redis would."""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import Future
from urllib.parse import urlsplit

from django.conf import settings

from apps.gateway.localrun import free_port


class TcpProxy:
    def __init__(self, target_port: int, *, delay: tuple[float, float] = (0.0, 0.0)) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay = delay
        self.chunks = 0
        self._up = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def via(self, url: str) -> str:
        """The Redis URL ``url`` (a server on the target port) through the proxy: its
        password and database kept."""
        parts = urlsplit(url)
        assert parts.port == self.target_port, "not the proxied server"
        auth = f":{parts.password}@" if parts.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}{parts.path}"

    @property
    def env(self) -> dict[str, str]:
        """The settings that send a process's every Redis role (but the channel layer's
        own servers, if any) through the proxy."""
        return {
            "REDIS_URL": self.via(settings.REDIS_URL),
            "BARISTA_QUEUE_REDIS_URL": self.via(settings.QUEUE_REDIS_URL),
            "BARISTA_LIVE_REDIS_URL": self.via(settings.LIVE_REDIS_URL),
        }

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen()).result(timeout=5)
        return self

    def stop(self) -> None:
        self._call(self._close_all(stop=True)).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def down(self) -> None:
        """Drop every connection and refuse new ones until ``up``."""
        self._up = False
        self._call(self._close_all(stop=False)).result(timeout=5)

    def up(self) -> None:
        self._up = True

    def _call(self, coroutine: object) -> Future[object]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _close_all(self, *, stop: bool) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if stop and self._server is not None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for end in (writer, up_writer):
            self._writers.discard(end)
            end.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            low, high = self.delay
            if high > 0:
                await asyncio.sleep(random.uniform(low, high))  # noqa: S311 - not crypto
            self.chunks += 1
            writer.write(chunk)
            await writer.drain()
        writer.transport.abort()
