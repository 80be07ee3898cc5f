"""An OpenAI-compatible simulated LLM server.

A plain ASGI app (served by uvicorn in its own process) so it costs little next to the
thing under test. Its answer is deterministic for a given request and quotes the last
user message verbatim inside a longer reply, so whoever receives an answer can tell whose
prompt it was. Latency, speed, length, failures and a concurrency cap are settings, and
can be changed on a running server with ``POST /control`` (tests and benchmarks use that
to make a healthy backend go bad halfway through).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from apps.simulator.answers import (
    EMBEDDING_DIMENSIONS,
    Choice,
    count_prompt_tokens,
    embedding,
    embedding_inputs,
    encode_vector,
    plan_chat,
    plan_text_completion,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY = 8 * 1024 * 1024


@dataclasses.dataclass
class SimulatorConfig:
    models: list[str] = dataclasses.field(default_factory=lambda: ["sim-model"])
    ttft: float = 0.2  # seconds before the first token
    tps: float = 50.0  # tokens per second after the first; 0 means all at once
    tokens: int = 60  # answer length in tokens, before max_tokens caps it
    error_rate: float = 0.0  # share of requests answered with a 500
    hang_rate: float = 0.0  # share of requests that never answer
    reset_rate: float = 0.0  # share whose connection drops after a few bytes of answer
    garbage_rate: float = 0.0  # share answered 200 with malformed JSON / SSE
    max_concurrency: int = 0  # 0 = unlimited; beyond it: 429 with Retry-After
    # Like vLLM's batch: at most this many answered at once, the rest wait in the server's
    # own queue (published as vllm:num_requests_waiting); 0 = no batch limit.
    max_running: int = 0
    cut_after: int = 0  # drop the connection after this many streamed tokens (0 = never)
    fail_first: int = 0  # answer the first N completion requests with a 500
    seed: int = 0
    api_key: str = ""  # when set, /v1/ routes want "Authorization: Bearer <key>" (else 401)

    def update(self, changes: dict[str, Any]) -> None:
        for field in dataclasses.fields(self):
            if field.name in changes and field.name != "models":
                setattr(self, field.name, type(getattr(self, field.name))(changes[field.name]))


@dataclasses.dataclass
class SimulatorStats:
    requests_total: int = 0
    in_flight: int = 0
    completed_total: int = 0
    errors_total: int = 0
    hangs_total: int = 0
    rejected_total: int = 0
    disconnects_total: int = 0
    max_in_flight: int = 0
    running: int = 0
    waiting: int = 0
    model_lists_total: int = 0  # GET /v1/models: health checks
    embedding_inputs_total: int = 0  # texts embedded, over all /v1/embeddings requests
    # Connections (client address and port) first seen on a /v1/ POST route since the
    # start: a client that keeps its connections alive opens few.
    connections_total: int = 0


class Simulator:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = SimulatorStats()
        self._rng = random.Random(config.seed)
        self._batch = asyncio.Condition()
        self.last_request: dict[str, Any] = {}  # the last body a /v1/ POST sent (tests)
        self._connections: set[tuple[Any, ...]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"].rstrip("/")
        if self.config.api_key and (path.startswith("/v1/") or path == "/last-request"):
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization", b"").decode() != f"Bearer {self.config.api_key}":
                await _json(send, 401, _error("Invalid API key.", "invalid_api_key"))
                return
        if method == "POST" and path in ROUTES:
            peer = tuple(scope.get("client") or ())
            if peer not in self._connections:
                self._connections.add(peer)
                self.stats.connections_total += 1
            await self._completions(receive, send, ROUTES[path])
        elif method == "GET" and path == "/last-request":
            await _json(send, 200, self.last_request)
        elif method == "GET" and path == "/v1/models":
            self.stats.model_lists_total += 1
            data = [
                {"id": m, "object": "model", "owned_by": "barista-simulator"}
                for m in self.config.models
            ]
            await _json(send, 200, {"object": "list", "data": data})
        elif method == "GET" and path == "/stats":
            await _json(send, 200, dataclasses.asdict(self.stats))
        elif method == "GET" and path == "/metrics":
            batch = self.config.max_running
            usage = min(1.0, self.stats.running / batch) if batch else 0.0
            text = (
                f"vllm:num_requests_running {self.stats.running}\n"
                f"vllm:num_requests_waiting {self.stats.waiting}\n"
                f"vllm:gpu_cache_usage_perc {usage}\n"
            )
            await _send(send, 200, text.encode(), b"text/plain; version=0.0.4")
        elif method == "POST" and path == "/control":
            body = await _read_body(receive)
            try:
                changes = json.loads(body or b"{}")
                if changes.pop("reset_stats", False):
                    old = self.stats
                    self.stats = SimulatorStats(
                        in_flight=old.in_flight, running=old.running, waiting=old.waiting
                    )
                self.config.update(changes)
                async with self._batch:
                    self._batch.notify_all()  # a bigger batch lets waiting requests in
            except (ValueError, TypeError, AttributeError) as exc:
                await _json(send, 400, {"error": {"message": str(exc), "type": "invalid"}})
                return
            await _json(send, 200, dataclasses.asdict(self.config))
        else:
            await _json(send, 404, _error("Not found.", "not_found"))

    async def _completions(self, receive: Receive, send: Send, kind: str) -> None:
        stats, config = self.stats, self.config
        stats.requests_total += 1
        body = await _read_body(receive)
        try:
            request = json.loads(body)
            if not isinstance(request, dict):
                raise ValueError("the body must be an object")
            if kind == "chat" and not isinstance(request.get("messages"), list):
                raise ValueError("messages must be a list")
            if kind == "text" and not isinstance(request.get("prompt"), (str, list)):
                raise ValueError("prompt must be a string or a list")
            if kind == "embeddings" and embedding_inputs(request.get("input")) is None:
                raise ValueError("input must be a string or a list of strings")
        except ValueError as exc:
            await _json(send, 400, _error(f"Invalid request: {exc}", "invalid_request_error"))
            return
        request["_kind"] = kind
        self.last_request = {k: v for k, v in request.items() if k != "_kind"}
        if config.max_concurrency and stats.in_flight >= config.max_concurrency:
            stats.rejected_total += 1
            await _json(
                send,
                429,
                _error("Simulator at capacity.", "rate_limit_exceeded"),
                [(b"retry-after", b"1")],
            )
            return
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        # Like a real server, stop working on a request whose client hung up: the slot
        # is freed at once (callers that cancel or time out rely on this).
        work = asyncio.create_task(self._respond(request, send))
        hangup = asyncio.create_task(_wait_for_disconnect(receive))
        try:
            done, _ = await asyncio.wait({work, hangup}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:  # the client left before the answer was complete
                work.cancel()
                stats.disconnects_total += 1
            else:
                hangup.cancel()
                await work
        finally:
            stats.in_flight -= 1

    async def _respond(self, request: dict[str, Any], send: Send) -> None:
        stats = self.stats
        async with self._batch:
            stats.waiting += 1
            try:
                await self._batch.wait_for(
                    lambda: not self.config.max_running or stats.running < self.config.max_running
                )
            finally:
                stats.waiting -= 1
            stats.running += 1
        try:
            await self._respond_now(request, send)
        finally:
            async with self._batch:
                stats.running -= 1
                self._batch.notify()

    async def _respond_now(self, request: dict[str, Any], send: Send) -> None:
        stats, config = self.stats, self.config
        roll = self._rng.random()
        if roll < config.error_rate or stats.requests_total <= config.fail_first:
            stats.errors_total += 1
            await _json(send, 500, _error("Simulated failure.", "server_error"))
            return
        if roll < config.error_rate + config.hang_rate:
            stats.hangs_total += 1
            await asyncio.sleep(3600)
            return
        roll -= config.error_rate + config.hang_rate
        if roll < config.reset_rate:
            stats.errors_total += 1
            await _reset(send)
        if roll < config.reset_rate + config.garbage_rate:
            stats.errors_total += 1
            await _garbage(send, bool(request.get("stream")))
            return
        kind = request.pop("_kind")
        if kind == "embeddings":
            await self._embed(request, send)
        elif kind == "text":
            await self._complete_text(request, send)
        else:
            await self._answer(request, send)
        stats.completed_total += 1

    async def _answer(self, request: dict[str, Any], send: Send) -> None:
        config = self.config
        choices = plan_chat(request, config.tokens)
        usage = _usage(
            count_prompt_tokens(request["messages"]), sum(c.completion_tokens for c in choices)
        )
        model = str(request.get("model") or config.models[0])
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        steps = max(len(c.deltas) for c in choices)
        if config.ttft > 0:
            await asyncio.sleep(config.ttft)
        if not request.get("stream"):
            if config.tps > 0 and steps > 1:
                await asyncio.sleep((steps - 1) / config.tps)
            await _json(
                send,
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": c.index,
                            "finish_reason": c.finish_reason,
                            "message": c.message(),
                            "logprobs": c.all_logprobs(),
                        }
                        for c in choices
                    ],
                    "usage": usage,
                },
            )
            return

        def chunk(choice: dict[str, Any] | None, with_usage: bool = False) -> bytes:
            payload: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [choice] if choice else [],
            }
            if with_usage:
                payload["usage"] = usage
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        def piece(c: Choice, step: int) -> bytes:
            logprobs = {"content": c.logprobs[step], "refusal": None} if c.logprobs else None
            return chunk(
                {
                    "index": c.index,
                    "delta": c.deltas[step],
                    "logprobs": logprobs,
                    "finish_reason": None,
                }
            )

        await _start_events(send)
        parts = [
            chunk(
                {
                    "index": c.index,
                    "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None,
                }
            )
            for c in choices
            if "role" not in c.deltas[0]
        ]
        for step in range(steps):
            if config.cut_after and step == config.cut_after:
                await send(
                    {"type": "http.response.body", "body": b"".join(parts), "more_body": True}
                )
                raise ConnectionAbortedError("simulated connection cut mid-stream")
            parts += [piece(c, step) for c in choices if step < len(c.deltas)]
            if config.tps > 0 and step < steps - 1:
                await send(
                    {"type": "http.response.body", "body": b"".join(parts), "more_body": True}
                )
                parts = []
                await asyncio.sleep(1 / config.tps)
        parts += [
            chunk({"index": c.index, "delta": {}, "finish_reason": c.finish_reason})
            for c in choices
        ]
        if (request.get("stream_options") or {}).get("include_usage"):
            parts.append(chunk(None, with_usage=True))
        parts.append(b"data: [DONE]\n\n")
        await send({"type": "http.response.body", "body": b"".join(parts)})

    async def _complete_text(self, request: dict[str, Any], send: Send) -> None:
        """The legacy ``/v1/completions``: text that continues a prompt."""
        config = self.config
        tokens, finish = plan_text_completion(request, config.tokens)
        prompt = request.get("prompt")
        usage = _usage(len(str(prompt).split()), len(tokens))
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        model = str(request.get("model") or config.models[0])
        if config.ttft > 0:
            await asyncio.sleep(config.ttft)

        def document(text: str, finish_reason: str | None, with_usage: bool) -> dict[str, Any]:
            body: dict[str, Any] = {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
                ],
            }
            if with_usage:
                body["usage"] = usage
            return body

        if not request.get("stream"):
            await _json(send, 200, document("".join(tokens), finish, True))
            return
        await _start_events(send)
        for index, token in enumerate(tokens):
            body = b"data: " + json.dumps(document(token, None, False)).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": True})
            if config.tps > 0 and index < len(tokens) - 1:
                await asyncio.sleep(1 / config.tps)
        tail = document(
            "", finish, bool((request.get("stream_options") or {}).get("include_usage"))
        )
        await send(
            {
                "type": "http.response.body",
                "body": b"data: " + json.dumps(tail).encode() + b"\n\ndata: [DONE]\n\n",
            }
        )

    async def _embed(self, request: dict[str, Any], send: Send) -> None:
        """Vectors for each input, in order: equal texts, equal vectors."""
        texts = embedding_inputs(request.get("input")) or []
        self.stats.embedding_inputs_total += len(texts)
        dimensions = request.get("dimensions")
        if not isinstance(dimensions, int) or not 1 <= dimensions <= 4096:
            dimensions = EMBEDDING_DIMENSIONS
        encoding = request.get("encoding_format")
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_vector(embedding(text, dimensions), encoding),
            }
            for index, text in enumerate(texts)
        ]
        tokens = sum(len(text.split()) for text in texts)
        await _json(
            send,
            200,
            {
                "object": "list",
                "data": data,
                "model": str(request.get("model") or self.config.models[0]),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text",
    "/v1/embeddings": "embeddings",
}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _start_events(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )


async def _reset(send: Send) -> None:
    """Promise an answer, send a few bytes of it, then drop the connection."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"id": "chatcmpl-', "more_body": True})
    raise ConnectionResetError("simulated connection reset")


async def _garbage(send: Send, stream: bool) -> None:
    """A 200 whose body is not what the protocol promises: broken JSON, or SSE lines that
    are not JSON, not SSE, and never end with [DONE]."""
    if not stream:
        body = b'{"id": "chatcmpl-x", "choices": [{"message": {"content": "unterminated'
        content_type = b"application/json"
    else:
        body = (
            b"data: {not json at all\n\n"
            b"event: ???\n\x00\xff\xfe garbage bytes\n\n"
            b'data: {"choices": "should be a list"}\n\n'
        )
        content_type = b"text/event-stream"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]}
    )
    await send({"type": "http.response.body", "body": body})


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        body = message.get("body", b"")
        size += len(body)
        if size > MAX_BODY:
            break
        chunks.append(body)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _send(send, status, json.dumps(payload).encode(), b"application/json", headers)
