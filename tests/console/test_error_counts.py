"""Refusals (by reason) and the client's errors (by door and status) are counted — in
``/metrics`` and on the live metrics page — apart from each other: a request the API
refused with a 429 is a refusal, not also a client error. Against a real daphne, worker
and simulator, as a person's program would meet them."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
from collections import Counter
from typing import Any

import httpx
import pytest
import websockets
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from apps.api.services import api_key_create
from apps.gateway import admission, metrics
from project.asgi import application
from tests.conftest import session_cookie, wait_for, ws_headers

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-canary-19"


def ask(url: str, key: str | None, body: Any) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/json"
        response = httpx.post(f"{url}/v1/chat/completions", headers=headers, content=body)
    else:
        response = httpx.post(f"{url}/v1/chat/completions", headers=headers, json=body, timeout=20)
    return response.status_code


def prompt(model: str = "sim-chat", text: str = "hello") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def scraped(*families: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        if family.name in families
        for sample in family.samples
    }


def test_refusals_and_client_errors_are_counted_apart_in_metrics_and_on_the_page(
    alice, staff, settings, start_simulator, start_worker, start_web, lifted_limits
):
    settings.BARISTA_METRICS_TOKEN = TOKEN
    start_simulator("--ttft", "0.05", "--tps", "0").register(alias="sim-chat")
    start_worker()
    url = start_web()
    _, one_a_minute = api_key_create(owner=alice, name="one a minute", requests_per_minute=1)
    _, other_model = api_key_create(owner=alice, name="other model", allowed_models=["sim-x"])
    _, plain = api_key_create(owner=alice, name="plain")

    answered = [ask(url, one_a_minute, prompt(text=f"try {i}")) for i in range(3)]
    assert answered == [200, 429, 429]
    assert ask(url, other_model, prompt()) == 403  # a model the key may not use
    assert ask(url, plain, prompt(model="no-such-model")) == 404
    assert ask(url, plain, prompt(model="no-such-model-either")) == 404
    assert ask(url, plain, b"{not json") == 400
    assert ask(url, "sk-barista-wrong", prompt()) == 401

    # The chat socket's errors are the client's too: an empty prompt, an unknown model.
    cookie = f"{settings.SESSION_COOKIE_NAME}={session_cookie(alice)}"

    async def chat_errors() -> list[str]:
        async with websockets.connect(
            url.replace("http://", "ws://") + "/ws/chat/",
            additional_headers={"Cookie": cookie, "Origin": url},
        ) as socket:
            codes = []
            for frame in (
                {"type": "prompt", "model": "sim-chat", "content": "  "},
                {"type": "prompt", "model": "no-such-model", "content": "hi"},
            ):
                await socket.send(json.dumps(frame))
                codes.append(json.loads(await socket.recv())["code"])
            return codes

    assert asyncio.run(chat_errors()) == ["empty_prompt", "unknown_model"]

    refused = {"rate_limit_exceeded": 2, "model_not_allowed": 1}
    client_errors = {"404": 2, "400": 1, "401": 1}

    def counted() -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        samples = scraped("barista_refused_requests", "barista_client_errors")
        by_reason = {
            dict(labels)["reason"]: value
            for (name, labels), value in samples.items()
            if name == "barista_refused_requests_total"
        }
        by_status = {
            dict(labels)["status"]: value
            for (name, labels), value in samples.items()
            if name == "barista_client_errors_total" and dict(labels)["door"] == "api"
        }
        by_code = {
            dict(labels)["status"]: value
            for (name, labels), value in samples.items()
            if name == "barista_client_errors_total" and dict(labels)["door"] == "chat"
        }
        return by_reason, by_status, by_code

    # The web process adds its counts to the store within a second.
    chat = {"empty_prompt": 1, "unknown_model": 1}
    wait_for(lambda: counted() == (refused, client_errors, chat), timeout=10, describe=counted)
    outcomes = scraped("barista_requests")
    assert (
        outcomes[("barista_requests_total", (("model", "sim-chat"), ("outcome", "rejected")))] == 3
    )

    # The live metrics page draws from the same store, second by second (complete
    # seconds only: the last request's second may still be under way).
    def on_the_page() -> tuple[Counter[str], Counter[str], float]:
        points = async_to_sync(history_of)(staff)
        page_refused: Counter[str] = Counter()
        page_client: Counter[str] = Counter()
        for point in points:
            page_refused.update(point["refused"])
            page_client.update(point["client_errors"])
        return page_refused, page_client, sum(p["requests"]["rejected"] for p in points)

    expected = (
        Counter(refused),
        Counter(
            {f"api {status}": n for status, n in client_errors.items()}
            | {f"chat {code}": n for code, n in chat.items()}
        ),
        3,
    )
    wait_for(lambda: on_the_page() == expected, timeout=10, describe=on_the_page)


async def history_of(user) -> list[dict[str, Any]]:
    headers = await database_sync_to_async(ws_headers)(user)
    communicator = WebsocketCommunicator(application, "/ws/metrics/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    frame = await communicator.receive_json_from(timeout=5)
    await communicator.disconnect()
    assert frame["type"] == "history"
    return list(frame["points"])


def test_every_refusal_admission_can_make_is_known_to_the_metrics():
    """The API answers a refusal with an error; the metrics must know it for one, or it
    would be counted twice — as refused and as the client's error."""
    codes = set()
    for node in ast.walk(ast.parse(inspect.getsource(admission))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Rejection":
            code = node.args[1]
            assert isinstance(code, ast.Constant), ast.unparse(node)
            codes.add(code.value)
    assert len(codes) >= 5  # the walk found them
    assert codes <= metrics.REFUSALS
