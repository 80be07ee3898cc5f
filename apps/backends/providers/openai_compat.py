"""Client for OpenAI-compatible chat completion servers (OpenAI, vLLM, Ollama, llama.cpp,
TGI, and Barista's simulator)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from apps.backends.models import Backend
from apps.core.egress import AddressRefused


class BackendError(Exception):
    """A backend failed to answer. ``message`` is safe to show a person: it never carries
    the backend's URL or credentials, only what went wrong."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = True,
        retry_after: float = 0.0,
        unreachable: bool = False,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        # No answer at all (refused, reset, timed out before a response): the backend is
        # down or away, not failing this request.
        self.unreachable = unreachable


@dataclass(slots=True)
class Delta:
    """Text of choice 0; ``piece`` is the chunk's choice as the backend sent it, when it
    holds more than that (tool calls, logprobs, another choice: ``apps.gateway.extras``)."""

    text: str
    piece: dict[str, Any] | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None


StreamEvent = Delta | Usage

# How long the rest of a stream after ``[DONE]`` (normally just the end of its chunked
# body) is read for, so that its connection goes back to the pool.
DRAIN_SECONDS = 0.5


async def stream_chat(
    client: httpx.AsyncClient,
    backend: Backend,
    *,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    text_completion: bool = False,
) -> AsyncIterator[StreamEvent]:
    """Stream a chat completion: yields ``Delta`` per content chunk, then one ``Usage``.
    ``text_completion``: a legacy text completion (``/completions``) of the one message's content,
    its chunks read as chat deltas."""
    body = {
        **backend.without_dropped(params),
        "model": backend.model_name,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if text_completion:
        url = backend.base_url.rstrip("/") + "/completions"
        body["prompt"] = messages[0]["content"]
    else:
        url = backend.base_url.rstrip("/") + "/chat/completions"
        body["messages"] = messages
    headers, timeout = _headers(backend), _timeout(backend)
    finish_reason: str | None = None
    usage: dict[str, Any] = {}
    answered = False  # a response (status and headers) arrived
    try:
        async with client.stream(
            "POST", url, json=body, headers=headers, timeout=timeout
        ) as response:
            answered = True
            if response.status_code != 200:
                await response.aread()
                raise _http_error(backend, response)
            finished = False
            lines = response.aiter_lines()
            async for line in lines:
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    finished = True
                    break
                # A backend that breaks the protocol fails like one that errs: another
                # backend may do better, and the breaker counts it.
                try:
                    chunk = json.loads(data)
                    choices = chunk.get("choices") or []
                    if not isinstance(choices, list):
                        raise ValueError("choices is not a list")
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                    for choice in choices:
                        if text_completion:
                            choice = _as_chat(choice)
                        delta = choice.get("delta") or {}
                        text = delta.get("content")
                        if text is not None and not isinstance(text, str):
                            raise ValueError("content is not text")
                        index = choice.get("index") or 0
                        if _is_rich(index, delta, choice.get("logprobs")):
                            _check_piece(index, delta, choice.get("logprobs"))
                            yield Delta("" if index else text or "", choice)
                        elif text:
                            yield Delta(text)
                        if choice.get("finish_reason") and not index:
                            finish_reason = str(choice["finish_reason"])
                except (ValueError, AttributeError, TypeError):
                    raise BackendError(f"backend {backend.name} sent a malformed stream") from None
            if not finished and finish_reason is None:
                raise BackendError(f"backend {backend.name} ended its answer early")
            if finished:
                await _drain(lines)
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        raise _transport_error(backend, exc, answered=answered) from None
    yield Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"), finish_reason)


async def _drain(lines: AsyncIterator[str]) -> None:
    """Read the stream to its end after ``[DONE]``. A response left unread is closed with
    its connection: every prompt then opened a new one to its backend (for a remote
    backend, a TCP and TLS handshake each). A backend that keeps the body open past
    ``[DONE]`` is not waited for beyond ``DRAIN_SECONDS``; its connection is closed."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in lines:
                pass


async def embed(
    client: httpx.AsyncClient,
    backend: Backend,
    *,
    inputs: list[Any],
    params: dict[str, Any],
) -> tuple[list[list[float]], int | None]:
    """Embed ``inputs`` (texts or token arrays): a vector for each, in order, and the
    prompt tokens the backend counted."""
    url = backend.base_url.rstrip("/") + "/embeddings"
    body = {
        **backend.without_dropped(params),
        "model": backend.model_name,
        "input": inputs,
        "encoding_format": "float",
    }
    answered = False
    try:
        response = await client.post(
            url, json=body, headers=_headers(backend), timeout=_timeout(backend)
        )
        answered = True
        if response.status_code != 200:
            raise _http_error(backend, response)
        try:
            document = response.json()
            rows = sorted(document["data"], key=lambda row: row["index"])
            vectors = [[float(v) for v in row["embedding"]] for row in rows]
            if len(vectors) != len(inputs):
                raise ValueError("one vector per input")
            tokens = (document.get("usage") or {}).get("prompt_tokens")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BackendError(f"backend {backend.name} sent malformed embeddings") from None
        return vectors, tokens if isinstance(tokens, int) else None
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        raise _transport_error(backend, exc, answered=answered) from None


def _transport_error(backend: Backend, exc: Exception, *, answered: bool) -> BackendError:
    """What an HTTP transport failure says about the backend: unreachable when it never
    answered (it is down or away, not failing this request), else timed out or cut."""
    if isinstance(exc, AddressRefused):
        # Never connected, and no use waiting for it to come back: a setting or its DNS
        # must change. Another backend may be tried. No host or address: people read this.
        return BackendError(f"refused to call backend {backend.name}: it resolves to {exc.reason}")
    if isinstance(exc, httpx.ConnectTimeout):
        return BackendError(f"could not reach backend {backend.name}", unreachable=True)
    if isinstance(exc, httpx.TimeoutException):
        return BackendError(f"backend {backend.name} timed out")
    return BackendError(f"could not reach backend {backend.name}", unreachable=not answered)


def _headers(backend: Backend) -> dict[str, str]:
    if not backend.has_api_key:
        return {}
    # Read at call time, never logged; a missing key is a clear error, not a 401.
    key = backend.api_key()
    if not key:
        where = f"set {backend.api_key_env}" if backend.api_key_env else "enter it again"
        raise BackendError(f"backend {backend.name} has no API key ({where})", retryable=False)
    return {"Authorization": f"Bearer {key}"}


def _timeout(backend: Backend) -> httpx.Timeout:
    return httpx.Timeout(backend.timeout, connect=min(backend.timeout, 10.0))


def _http_error(backend: Backend, response: httpx.Response) -> BackendError:
    status = response.status_code
    return BackendError(
        f"backend {backend.name} answered HTTP {status}",
        status=status,
        # Another backend may do better on overload or a server error; a request the
        # backend found invalid would fail everywhere.
        retryable=status >= 500 or status in (408, 429),
        retry_after=_retry_after(response.headers.get("retry-after")),
    )


def _as_chat(choice: dict[str, Any]) -> dict[str, Any]:
    """A text completion's chunk choice, read as a chat one (its text as the content)."""
    found = {k: v for k, v in choice.items() if k != "text"}
    found["delta"] = {"content": choice.get("text") or ""}
    return found


def _check_piece(index: Any, delta: Any, logprobs: Any) -> None:
    """A piece is passed on as sent, so its shape is checked here: anything else is a
    malformed stream (a backend error), never a crash further on."""
    if not isinstance(index, int) or isinstance(index, bool) or not isinstance(delta, dict):
        raise ValueError("a choice needs an integer index and an object delta")
    if logprobs is not None and not isinstance(logprobs, dict):
        raise ValueError("logprobs is not an object")
    calls = delta.get("tool_calls")
    if calls is None:
        return
    if not isinstance(calls, list):
        raise ValueError("tool_calls is not a list")
    for call in calls:
        if not isinstance(call, dict):
            raise ValueError("a tool call is not an object")
        position = call.get("index")
        if position is not None and (not isinstance(position, int) or isinstance(position, bool)):
            raise ValueError("a tool call's index is not an integer")
        function = call.get("function")
        if function is None:
            continue
        if not isinstance(function, dict) or not all(
            function.get(k) is None or isinstance(function.get(k), str)
            for k in ("name", "arguments")
        ):
            raise ValueError("a tool call's function has no text name and arguments")


def _is_rich(index: int, delta: dict[str, Any], logprobs: Any) -> bool:
    """Whether a chunk's choice holds more than choice 0's text."""
    return bool(
        index
        or logprobs
        or any(value for key, value in delta.items() if key not in ("role", "content"))
    )


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (delta-seconds form), capped at ten minutes."""
    try:
        return min(max(float(value or 0), 0.0), 600.0)
    except ValueError:
        return 0.0
