"""Active health checks against real simulator processes: they take a dead backend out
before a prompt finds it dead, bring it back when it answers again, read vLLM-style queue
metrics into the score, and only one worker of the fleet checks per interval."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from apps.backends import health, live
from apps.backends.balancer import rank, score
from apps.backends.models import Backend
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def check_all(*backends: Backend) -> list[health.CheckResult]:
    async def run() -> list[health.CheckResult]:
        async with httpx.AsyncClient() as client:
            return await health.check_all(client, list(backends))

    return asyncio.run(run())


def state(backend: Backend) -> live.BackendLive:
    return asyncio.run(live.snapshot([backend.pk]))[backend.pk]


def test_a_dead_backend_is_taken_out_by_the_checks_and_brought_back(start_simulator, settings):
    settings.BARISTA_CIRCUIT_FAILURES = 2
    settings.BARISTA_CIRCUIT_COOLDOWN = 60
    simulator = start_simulator()
    backend = simulator.register()

    [result] = check_all(backend)
    assert result.up and result.models == ["sim-model"]
    assert state(backend).up is True and state(backend).check_ms is not None

    simulator.process.kill()
    simulator.process.wait()
    check_all(backend)
    check_all(backend)
    dead = state(backend)
    assert dead.up is False
    assert dead.check_error == f"could not reach {backend.name}"
    assert dead.circuit == "open"  # two failed checks, no prompt needed to find out

    start_simulator(port=simulator.port)
    assert state(backend).probe_in > 50  # a minute of cool-down left...
    [result] = check_all(backend)  # ... but a good check is the probe: back at once
    assert result.up
    back = state(backend)
    assert back.up is True and back.circuit == "closed"


def test_a_check_says_what_is_wrong(start_simulator):
    locked = start_simulator("--api-key", "right-key")
    backend = locked.register(name="locked")
    [result] = check_all(backend)
    assert not result.up
    assert result.message == "locked refused the API key (HTTP 401)"
    backend.set_api_key("right-key")
    backend.save()
    [result] = check_all(backend)
    assert result.up and result.message == "locked is up and serves sim-model"


def test_the_backends_own_queue_counts_in_the_score(start_simulator):
    busy = start_simulator("--max-running", "1", "--ttft", "3", "--tps", "0")
    idle = start_simulator("--ttft", "0", "--tps", "0")
    busy_row, idle_row = busy.register(name="busy"), idle.register(name="idle")

    def ask() -> None:
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}
        httpx.post(f"{busy.base_url}/chat/completions", json=body, timeout=10)

    callers = [threading.Thread(target=ask, daemon=True) for _ in range(3)]
    for caller in callers:
        caller.start()
    wait_for(lambda: busy.stats()["waiting"] == 2, timeout=5)

    results = check_all(busy_row, idle_row)
    assert results[0].has_metrics and results[0].waiting == 2 and results[0].kv_cache == 1.0
    assert results[1].has_metrics and results[1].waiting == 0
    states = asyncio.run(live.snapshot([busy_row.pk, idle_row.pk]))
    assert states[busy_row.pk].waiting == 2
    # Nothing in flight from Barista on either, same TTFT: the backend's own queue decides.
    assert score(busy_row, states[busy_row.pk], 0.1) > score(idle_row, states[idle_row.pk], 0.1)
    assert rank([busy_row, idle_row], states, "peak_ewma")[0] == idle_row


def test_one_worker_of_the_fleet_checks_per_interval(start_simulator, start_worker):
    simulator = start_simulator()
    backend = simulator.register()
    start_worker(BARISTA_HEALTH_INTERVAL="0.5")
    start_worker(BARISTA_HEALTH_INTERVAL="0.5")
    wait_for(lambda: state(backend).up is True, timeout=20)
    before = simulator.stats()["model_lists_total"]
    time.sleep(3.0)
    checks = simulator.stats()["model_lists_total"] - before
    # Six intervals: one check each, whichever worker took the turn (two workers
    # checking independently would make about twelve).
    assert 4 <= checks <= 8
