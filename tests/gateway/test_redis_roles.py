"""The queues on a Redis server of their own (issue 20, "Redis by role"): with
BARISTA_QUEUE_REDIS_URL set, RQ's jobs and workers and the fair lane live there and
nowhere else, the cache and live state stay on REDIS_URL, prompts are answered — from a
backend and then from the cache — and /readyz names the queues' Redis when it goes.

(The whole suite also runs with the two roles on different databases of one server:
tests/redis_plugin.py.)"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

import httpx
import pytest
import redis

from apps.api.services import api_key_create
from apps.gateway.localrun import EmbeddedRedis, free_port
from apps.gateway.models import PromptRequest
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE_PREFIXES = ("rq:", "barista:fair:", "barista:completed:", "barista:turn:")
MAIN_PREFIXES = ("barista:cache:", "barista:metrics:", "barista:backend", ":1:answer")


@pytest.fixture
def queue_server():
    server = EmbeddedRedis(
        port=free_port(),
        data_dir=Path(tempfile.mkdtemp(prefix="barista-queues-")),
        persist=False,
        password=secrets.token_urlsafe(16),
    )
    server.start()
    yield server
    server.stop()


def keys(client: redis.Redis) -> list[str]:
    return [key.decode() for key in client.scan_iter(count=1000)]


def test_queues_on_a_redis_of_their_own(
    alice, queue_server, start_simulator, start_worker, start_web, settings
):
    sim = start_simulator("--ttft", "0.05", "--tps", "200", "--tokens", "12")
    sim.register(alias="sim-chat")
    env = {"BARISTA_QUEUE_REDIS_URL": queue_server.url}
    start_worker(**env)
    url = start_web(**env)
    queues = redis.Redis.from_url(queue_server.url)
    main = redis.Redis.from_url(settings.REDIS_URL)
    wait_for(lambda: queues.scard("rq:workers") == 1, timeout=30)
    _, key = api_key_create(owner=alice, name="roles")
    body = {
        "model": "sim-chat",
        "temperature": 0,  # deterministic: the second is answered from the cache
        "messages": [{"role": "user", "content": "which Redis?"}],
    }
    answers = []
    for _ in range(2):
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=20,
        )
        assert response.status_code == 200, response.text
        answers.append(response.json()["choices"][0]["message"]["content"])
    assert answers[0] == answers[1] and "which Redis?" in answers[0]
    outcomes = sorted(PromptRequest.objects.values_list("cache_outcome", flat=True))
    assert outcomes == ["hit", "miss"], outcomes

    on_queues, on_main = keys(queues), keys(main)
    assert any(k.startswith("rq:job:") for k in on_queues), on_queues
    assert "rq:workers" in on_queues
    # Each role's keys on its own server only.
    assert not [k for k in on_main if k.startswith(QUEUE_PREFIXES)], on_main
    assert not [k for k in on_queues if any(p in k for p in MAIN_PREFIXES)], on_queues
    # The web process adds its counts to REDIS_URL's hash within a quarter of a second.
    wait_for(lambda: main.hmget("barista:cache:counters", "miss", "hit") == [b"1", b"1"], timeout=5)
    assert not [k for k in keys(queues) if "cache:counters" in k]

    ready = httpx.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["redis"] == "ok"
    assert ready.json()["checks"]["redis_queues"] == "ok"
    queue_server.stop()
    ready = httpx.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] == "ok"
    assert "redis_queues" in ready.json()["missing"]
