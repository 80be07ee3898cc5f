"""Hostile input against a real daphne: random JSON (hypothesis), invalid UTF-8, huge and
deeply nested bodies, 10,000 messages, control characters, HTML and script — on the chat
socket and the API. No 5xx, no crash, bounded memory; HTML comes out escaped."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from django.conf import settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from apps.api.services import api_key_create
from tests.chaos.conftest import record
from tests.conftest import session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("lifted_limits")]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
FRAMES = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["prompt", "follow", "cancel"])},
        optional={
            "model": JSON | st.just("sim-chat"),
            "content": JSON | st.text(max_size=200),
            "conversation": JSON,
            "request": JSON | st.uuids().map(str),
            "fresh": JSON,
            "params": JSON,
            "replace_last": JSON,
            "ref": JSON,
        },
    ),
)
ALLOWED_CODES = {
    "invalid_json", "message_too_large", "unknown_type", "empty_prompt", "prompt_too_long",
    "unknown_model", "invalid_conversation", "invalid_fresh", "invalid_replace",
    "invalid_params", "not_found", "busy", "rate_limited", "queue_full", "too_many_pending",
    "invalid_text", "invalid_system", "invalid_images", "conversation_busy",
}  # fmt: skip


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture
def web(start_simulator, start_worker, start_web, processes):
    start_simulator("--ttft", "0").register(alias="sim-chat")
    start_worker()
    url = start_web()
    return url, processes.started[-1].pid


def test_hostile_input_on_the_socket_and_the_api(web, alice):
    url, pid = web
    cookie = f"{settings.SESSION_COOKIE_NAME}={session_cookie(alice)}"
    _, key = api_key_create(owner=alice, name="hostile")
    api = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"})
    rss_before = rss_mb(pid)
    counts = {"socket frames": 0, "api requests": 0, "5xx": 0}

    async def socket_barrage(
        frames: list[str] | list[bytes] | list[str | bytes],
    ) -> list[dict[str, Any]]:
        replies = []
        async with websockets.connect(
            url.replace("http", "ws") + "/ws/chat/",
            additional_headers={"Cookie": cookie, "Origin": url},
            max_size=None,
        ) as socket:
            for frame in frames:
                await socket.send(frame)
                counts["socket frames"] += 1
                reply = json.loads(await asyncio.wait_for(socket.recv(), 10))
                while reply["type"] in {"queue", "status", "tokens", "done", "failed", "cancelled"}:
                    reply = json.loads(await asyncio.wait_for(socket.recv(), 10))
                replies.append(reply)
            # Still serving after all of it.
            await socket.send(json.dumps({"type": "dance"}))
            assert json.loads(await socket.recv())["code"] == "unknown_type"
        return replies

    @hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(FRAMES, min_size=1, max_size=5))
    def random_frames(frames):
        for reply in asyncio.run(socket_barrage([json.dumps(f) for f in frames])):
            assert reply["type"] in {"error", "accepted"}, reply
            if reply["type"] == "error":
                assert reply["code"] in ALLOWED_CODES, reply

    random_frames()

    nasty: list[str | bytes] = [
        b"\xff\xfe not utf-8",
        "[" * 100_000 + "]" * 100_000,
        # Past the socket's bound (1 MB) and within daphne's own (1 MiB): ours refuses it.
        json.dumps({"type": "prompt", "model": "sim-chat", "content": "x" * 1_020_000}),
        # A NUL is refused (PostgreSQL stores none); other control characters are text.
        json.dumps({"type": "prompt", "model": "sim-chat", "content": "\x00\x01\x1b[31m\u202e"}),
        json.dumps({"type": "prompt", "model": "sim-chat", "content": "\x01\x1b[31m\u202e"}),
        json.dumps({"type": "prompt", "model": "sim-chat", "content": "<script>alert(1)</script>"}),
    ]
    replies = asyncio.run(socket_barrage(nasty))
    assert [r.get("code", r["type"]) for r in replies] == [
        "invalid_json",
        "invalid_json",
        "message_too_large",
        "invalid_text",
        "accepted",
        "accepted",
    ]

    def chat(content: object, count: int = 1, **extra: object) -> bytes:
        messages = [{"role": "user", "content": content}] * count
        return json.dumps({"model": "sim-chat", "messages": messages, **extra}).encode()

    bodies: list[bytes] = [
        b"\xff\xfe\x00",
        b"[" * 100_000 + b"]" * 100_000,
        chat("x", count=10_000),
        chat({"a": [[[[]]]]}),
        chat("\x00\u202e<b>", max_tokens=1),
        json.dumps({"model": "<script>", "messages": [{"role": "user", "content": "x"}]}).encode(),
        b'{"model": "sim-chat", "messages": [' + b'{"role": "user", "content": "x"},' * 5000,
        b"x" * 3_000_000,
    ]
    for body in bodies:
        response = api.post(
            "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
        )
        counts["api requests"] += 1
        counts["5xx"] += response.status_code >= 500
        assert response.status_code < 500, (body[:60], response.status_code, response.text[:200])
        assert "error" in response.json() or response.status_code == 200
        assert "<script>" not in response.text or response.headers["content-type"].startswith(
            "application/json"
        )

    rss_after = rss_mb(pid)
    assert rss_after - rss_before < 150, (rss_before, rss_after)
    record(
        "hostile input",
        socket_frames=counts["socket frames"],
        api_requests=counts["api requests"],
        server_errors=counts["5xx"],
        daphne_rss_mb={"before": round(rss_before), "after": round(rss_after)},
    )
