"""Reading a backend's stream: the connection goes back to the pool when the answer ends
(every prompt opened a new one before: for a remote backend a TCP and TLS handshake each),
and a backend that keeps its stream open past ``[DONE]`` is not waited for."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from apps.backends.models import Backend
from apps.backends.providers.openai_compat import DRAIN_SECONDS, Delta, Usage, stream_chat
from apps.core.clients import backend_http_client

pytestmark = pytest.mark.django_db(transaction=True)

ASK = [{"role": "user", "content": "Is the milk steamed?"}]


async def answer(backend: Backend) -> tuple[str, Usage]:
    async with backend_http_client() as client:
        return await read(client, backend)


async def read(client, backend: Backend) -> tuple[str, Usage]:
    text, usage = "", None
    async for event in stream_chat(client, backend, messages=ASK, params={}):
        if isinstance(event, Delta):
            text += event.text
        else:
            usage = event
    assert isinstance(usage, Usage)
    return text, usage


def test_prompts_to_one_backend_share_one_connection(start_simulator):
    simulator = start_simulator("--ttft", "0", "--tps", "0", "--tokens", "12")
    backend = simulator.register()

    async def five() -> list[str]:
        async with backend_http_client() as client:
            return [(await read(client, backend))[0] for _ in range(5)]

    answers = asyncio.run(five())
    assert all("Is the milk steamed?" in text for text in answers)
    stats = simulator.stats()
    assert stats["completed_total"] == 5
    assert stats["connections_total"] == 1


class OpenAfterDone:
    """An HTTP server whose chunked SSE body never ends: a chunk, ``[DONE]``, then it
    keeps the connection open without the last chunk."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> OpenAfterDone:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        chunk = {"choices": [{"index": 0, "delta": {"content": "cortado"}}]}
        for data in (json.dumps(chunk), "[DONE]"):
            event = f"data: {data}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        await asyncio.sleep(3600)  # the body's end never comes


def test_a_backend_that_keeps_its_stream_open_after_done_is_not_waited_for():
    async def run() -> tuple[str, Usage, float]:
        async with OpenAfterDone() as server:
            backend = Backend(
                name="open",
                alias="open",
                model_name="m",
                base_url=f"http://127.0.0.1:{server.port}/v1",
                timeout=30,
            )
            started = time.monotonic()
            text, usage = await asyncio.wait_for(answer(backend), 10)
            return text, usage, time.monotonic() - started

    text, usage, took = asyncio.run(run())
    assert text == "cortado" and usage.completion_tokens is None
    assert took < DRAIN_SECONDS + 2  # not the backend's 30 s read timeout
