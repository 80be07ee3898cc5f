"""A backend that stops and comes back: prompts sent meanwhile wait for it instead of
failing, and it is used again within one health interval of its return, however long a
cool-down its circuit had built up."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from apps.api.services import api_key_create
from apps.backends import live
from apps.core import clients
from apps.gateway.models import PromptRequest
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

HEALTH_INTERVAL = 1.0
WAITING = 10


def test_a_backend_that_comes_back_is_used_at_once_and_the_prompts_that_waited_are_answered(
    alice, start_simulator, start_worker, start_web
):
    sim = start_simulator("--ttft", "0.05", "--tokens", "5")
    backend = sim.register(alias="sim-chat")
    _, key = api_key_create(owner=alice, name="patient")
    env = {
        "BARISTA_HEALTH_INTERVAL": str(HEALTH_INTERVAL),
        # A circuit that opens stays open a minute: the old way, the backend was left out
        # that long after its return (what made the 77 s: cool-downs double per opening).
        "BARISTA_CIRCUIT_COOLDOWN": "60",
        "BARISTA_CIRCUIT_FAILURES": "2",
    }
    start_worker(**env)
    url = start_web(**env)

    def ask(content: str) -> httpx.Response:
        return httpx.post(
            f"{url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "sim-chat", "messages": [{"role": "user", "content": content}]},
            timeout=90,
        )

    def circuit() -> str:
        return live.snapshot_sync(clients.live_sync_redis(), [backend.pk])[backend.pk].circuit

    assert ask("before").status_code == 200
    sim.process.kill()
    sim.process.wait()
    wait_for(lambda: circuit() == "open", timeout=10)

    with ThreadPoolExecutor(WAITING) as pool:
        waiting = [pool.submit(ask, f"meanwhile {i}") for i in range(WAITING)]
        # They wait for the backend (started, holding no slot) rather than fail.
        wait_for(
            lambda: PromptRequest.objects.filter(status="running").count() == WAITING,
            timeout=15,
            describe=lambda: list(PromptRequest.objects.values_list("status", "error")),
        )
        assert not PromptRequest.objects.filter(status="failed").exists()
        start_simulator("--ttft", "0.05", "--tokens", "5", port=sim.port)
        back_at = time.time()
        results = [future.result(timeout=60) for future in waiting]

    assert [r.status_code for r in results] == [200] * WAITING, results[0].text
    for index, response in enumerate(results):
        assert f'"meanwhile {index}"' in response.json()["choices"][0]["message"]["content"]
    rows = PromptRequest.objects.filter(id__in=[r.headers["x-barista-request-id"] for r in results])
    first_answer = rows.order_by("first_token_at").values_list("first_token_at", flat=True)[0]
    # Used again within one health interval (+ 1 s) of its return.
    assert first_answer is not None
    assert first_answer.timestamp() - back_at <= HEALTH_INTERVAL + 1
    assert circuit() == "closed"
    assert ask("after").status_code == 200
