"""Backends misbehave — 500s, hangs, connections reset mid-answer, malformed SSE — and
people get clean errors, the circuit breaker takes the backend out, nothing crashes."""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest

from apps.api.services import api_key_create
from apps.backends import live
from apps.core import clients
from apps.gateway.models import PromptRequest
from tests.chaos.conftest import record

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("lifted_limits")]

FAULTS = {
    "errors": ("--error-rate", "1"),
    "hangs": ("--hang-rate", "1"),
    "resets": ("--reset-rate", "1"),
    "garbage": ("--garbage-rate", "1"),
}
ENV = {
    "BARISTA_JOB_TIMEOUT": "10",
    "BARISTA_CIRCUIT_FAILURES": "3",
    "BARISTA_HEALTH_INTERVAL": "0",  # the breaker must act on real traffic alone
}


def test_misbehaving_backends_give_clean_errors_and_open_their_circuits(
    alice, start_simulator, start_worker, start_web
):
    backends = {}
    for fault, flags in FAULTS.items():
        sim = start_simulator(*flags, "--ttft", "0.05", "--tokens", "20")
        # A backend's own timeout (seconds to wait for it) bounds a hang.
        backends[fault] = sim.register(alias=f"sim-{fault}", name=f"bad-{fault}", timeout=2)
    _, key = api_key_create(owner=alice, name="faults")
    worker = start_worker(**ENV)
    url = start_web(**ENV)
    client = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"})
    statuses: dict[str, Counter[int]] = {fault: Counter() for fault in FAULTS}
    worst: dict[str, float] = {}
    for fault in FAULTS:
        for index in range(6):
            for stream in (False, True):
                body = {
                    "model": f"sim-{fault}",
                    "stream": stream,
                    "messages": [{"role": "user", "content": f"{fault} {index} {stream}"}],
                }
                started = time.monotonic()
                response = client.post("/v1/chat/completions", json=body)
                worst[fault] = max(worst.get(fault, 0.0), time.monotonic() - started)
                statuses[fault][response.status_code] += 1
                if response.status_code == 200:
                    # A stream whose headers went out before the fault ends with an error
                    # event in the stream, never with a silent cut.
                    assert stream and '"error"' in response.text, response.text[:300]
                    continue
                error = response.json()["error"]  # JSON in OpenAI's shape
                assert response.status_code in (502, 503, 504), (fault, response.status_code)
                assert error["message"] and error["type"]
                assert "127.0.0.1" not in response.text  # no backend address
        assert worst[fault] < 12
    circuits = live.snapshot_sync(clients.live_sync_redis(), [b.pk for b in backends.values()])
    for fault, backend in backends.items():
        assert circuits[backend.pk].circuit in ("open", "half_open"), fault
        assert statuses[fault][503] >= 1, (fault, statuses[fault])  # refused fast once open
    assert worker.poll() is None
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert not PromptRequest.objects.filter(status__in=["queued", "running"]).exists()
    record(
        "backend faults",
        requests=sum(sum(c.values()) for c in statuses.values()),
        statuses={fault: dict(counts) for fault, counts in statuses.items()},
        slowest_answer_s={fault: round(s, 2) for fault, s in worst.items()},
        circuits_opened=len(backends),
        crashes=0,
    )
