# mypy: disable-error-code="arg-type,union-attr"
# (the SDK is strictly typed; these tests pass it plain dicts and read optional fields)
"""A stream that has to wait: its headers as soon as it is accepted, then SSE comments —
its place in line, keep-alives — until the answer comes; read raw, and by the openai SDK.
A failure after acceptance is an error event in the stream."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import pytest

from apps.gateway.models import PromptRequest
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# Generous: the test starts a worker process while the streams wait.
READ = httpx.Timeout(30)


def ask(content: str) -> dict[str, Any]:
    return {"model": "sim-chat", "stream": True, "messages": [{"role": "user", "content": content}]}


def open_stream(stack: ExitStack, api, body: dict[str, Any]) -> httpx.Response:
    return stack.enter_context(
        httpx.stream(
            "POST", f"{api.url}/chat/completions", json=body, headers=api.headers(), timeout=READ
        )
    )


def read_until(lines: Iterator[str], last: str) -> list[str]:
    """Lines up to and including the first that starts with ``last`` (blank lines left out)."""
    read = []
    for line in lines:
        if line:
            read.append(line)
        if line.startswith(last):
            return read
    raise AssertionError(f"the stream ended before {last!r}; it sent {read}")


def text_of(lines: list[str]) -> str:
    text = ""
    for line in lines:
        if line.startswith("data: {"):
            for choice in json.loads(line.removeprefix("data: "))["choices"]:
                text += choice["delta"].get("content") or ""
    return text


def test_a_queued_stream_gets_its_headers_at_once_then_its_place_in_line_then_its_answer(
    api_without_worker, start_worker
):
    api = api_without_worker
    with ExitStack() as stack:
        # No worker yet: each request is accepted, and waits.
        first = open_stream(stack, api, ask("first in line"))
        second = open_stream(stack, api, ask("second in line"))
        merged = open_stream(stack, api, ask("first in line"))  # follows the first
        for response, cache in ((first, "miss"), (second, "miss"), (merged, "coalesced")):
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            assert response.headers["x-accel-buffering"] == "no"
            assert response.headers["x-barista-cache"] == cache
            assert response.headers["x-barista-request-id"]
        lines = {name: r.iter_lines() for name, r in (("1", first), ("2", second))}
        for position, stream in lines.items():
            seen = read_until(stream, ": queued")
            assert re.fullmatch(rf": queued position={position} eta=\d+s", seen[-1]), seen
            assert len(seen) == 1  # nothing before it: no token can have come yet

        start_worker()
        rest = {name: read_until(stream, "data: [DONE]") for name, stream in lines.items()}
        rest["merged"] = read_until(merged.iter_lines(), "data: [DONE]")
    answers = {str(row.id): row.answer for row in PromptRequest.objects.all()}
    for name, response in (("1", first), ("2", second), ("merged", merged)):
        request_id = response.headers["x-barista-request-id"]
        assert text_of(rest[name]) == answers[request_id] != ""
    assert '"first in line"' in text_of(rest["merged"])
    assert api.simulator.stats()["requests_total"] == 2  # the merged one asked nothing


class ReadAhead(httpx.HTTPTransport):
    """Hands the SDK each stream only once its first place in line has arrived (so the
    test knows it is there), and keeps every byte the SDK was given."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[list[bytes]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        chunks = iter(response.stream)
        kept: list[bytes] = []
        while b": queued position=" not in b"".join(kept):
            chunk = next(chunks, None)
            if chunk is None:
                raise AssertionError(f"the stream ended without a place in line: {kept}")
            kept.append(chunk)
        self.streams.append(kept)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=Replayed(kept, chunks, response.stream),
            extensions=response.extensions,
        )


class Replayed(httpx.SyncByteStream):
    def __init__(self, kept: list[bytes], rest: Iterator[bytes], original: Any) -> None:
        self.kept, self.rest, self.original = kept, rest, original

    def __iter__(self) -> Iterator[bytes]:
        yield from list(self.kept)
        for chunk in self.rest:
            self.kept.append(chunk)
            yield chunk

    def close(self) -> None:
        self.original.close()


def test_the_openai_sdk_reads_streams_that_waited_in_line_on_every_completion_route(
    api_without_worker, start_worker
):
    api = api_without_worker
    transport = ReadAhead()
    sdk = openai.OpenAI(
        base_url=api.url,
        api_key=api.key,
        max_retries=0,
        timeout=30,
        http_client=httpx.Client(transport=transport),
    )
    question = [{"role": "user", "content": "waited for chat"}]
    chat = sdk.chat.completions.create(model="sim-chat", messages=question, stream=True)
    text = sdk.completions.create(model="sim-chat", prompt="waited for text", stream=True)
    response = sdk.responses.create(model="sim-chat", input="waited for responses", stream=True)
    # All three accepted, each told its place in line, and none answered yet.
    for position, raw in enumerate(transport.streams, start=1):
        assert b"data:" not in b"".join(raw)
        assert f": queued position={position} ".encode() in b"".join(raw)

    start_worker()
    answers = {
        "chat": "".join(c.choices[0].delta.content or "" for c in chat if c.choices),
        "text": "".join(c.choices[0].text for c in text if c.choices),
        "responses": "".join(e.delta for e in response if e.type == "response.output_text.delta"),
    }
    ledger = {row.messages[-1]["content"]: row.answer for row in PromptRequest.objects.all()}
    assert answers == {
        "chat": ledger["waited for chat"],
        "text": ledger["waited for text"],
        "responses": ledger["waited for responses"],
    }
    assert all(answers.values())


@pytest.mark.web_env(BARISTA_API_KEEPALIVE_SECONDS="0.2")
def test_keep_alive_comments_fill_a_long_silence_before_the_first_token(api):
    api.simulator.control(ttft=3)  # fifteen keep-alive intervals without a token
    with ExitStack() as stack:
        stream = open_stream(stack, api, ask("take your time"))
        lines = stream.iter_lines()
        before = read_until(lines, "data:")
        rest = read_until(lines, "data: [DONE]")
    assert before.count(": keep-alive") >= 2, before
    assert all(line.startswith(":") for line in before[:-1])  # only comments while silent
    assert '"take your time"' in text_of([before[-1], *rest])


def test_a_stream_that_fails_after_it_was_accepted_ends_with_an_error_event(api):
    """Its headers went out when it was accepted: the failure is told as OpenAI tells a
    failure mid-stream — and the SDK raises it. (Not streamed, it is a 502: test_errors.)"""
    api.simulator.control(error_rate=1)
    with ExitStack() as stack:
        stream = open_stream(stack, api, ask("fail me"))
        assert stream.status_code == 200
        lines = read_until(stream.iter_lines(), "data: [DONE]")
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1] if line[0] != ":"]
    assert len(events) == 1 and events[0]["error"]["type"] == "api_error", lines
    assert "HTTP 500" in events[0]["error"]["message"]
    sdk = openai.OpenAI(base_url=api.url, api_key=api.key, max_retries=0)
    with pytest.raises(openai.APIError, match="HTTP 500"):
        for _ in sdk.chat.completions.create(
            model="sim-chat", messages=[{"role": "user", "content": "fail me too"}], stream=True
        ):
            pass
    wait_for(lambda: set(PromptRequest.objects.values_list("status", flat=True)) == {"failed"})
