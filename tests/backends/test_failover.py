"""Failures, against real simulators: retry before the first token, never after; the
circuit breaker opens on a failing backend and closes when it recovers."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from apps.backends import live
from apps.chat.services import chat_prompt_submit
from apps.gateway.models import PromptRequest
from tests.conftest import wait_for
from tests.gateway.test_end_to_end import collect, open_socket, send_prompt

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("lifted_limits")]

QUICK_CIRCUIT = {"BARISTA_CIRCUIT_FAILURES": "2", "BARISTA_CIRCUIT_COOLDOWN": "3"}


def circuit(backend) -> str:
    return asyncio.run(live.snapshot([backend.pk]))[backend.pk].circuit


def test_a_failure_before_the_first_token_is_retried_on_another_backend(
    alice, start_simulator, start_worker
):
    broken = start_simulator("--error-rate", "1")
    healthy = start_simulator("--ttft", "0", "--tps", "0")
    # The broken one looks best (weight 100), so it is tried first.
    broken_row = broken.register(name="broken", weight=100)
    healthy.register(name="healthy")
    for index in range(6):
        chat_prompt_submit(user=alice, model="sim-chat", content=f"retry me {index}")
    start_worker(**QUICK_CIRCUIT)
    wait_for(lambda: PromptRequest.objects.filter(status="done").count() == 6, timeout=30)
    assert set(PromptRequest.objects.values_list("backend__name", flat=True)) == {"healthy"}
    assert broken.stats()["requests_total"] >= 1  # it was tried, and failed over
    assert circuit(broken_row) == "open"  # two consecutive failures opened it


async def test_after_the_first_token_there_is_no_silent_retry(alice, start_simulator, start_worker):
    cutting = start_simulator("--ttft", "0", "--tps", "50", "--cut-after", "5")
    spare = start_simulator("--ttft", "0", "--tps", "0")
    await database_sync_to_async(cutting.register)(name="cutting", weight=100)
    await database_sync_to_async(spare.register)(name="spare")
    start_worker()
    socket = await open_socket(alice)
    await send_prompt(socket, "half an answer")
    frames = await collect(socket)
    assert frames[-1]["type"] == "failed"
    assert "could not reach backend cutting" in frames[-1]["error"]
    assert any(f["type"] == "tokens" for f in frames)  # the person keeps what arrived
    assert spare.stats()["requests_total"] == 0
    await socket.disconnect()


def test_the_circuit_opens_on_failures_and_closes_when_the_backend_recovers(
    alice, start_simulator, start_worker
):
    flaky = start_simulator("--error-rate", "1")
    steady = start_simulator("--ttft", "0", "--tps", "0")
    flaky_row = flaky.register(name="flaky", weight=100)
    steady.register(name="steady")
    start_worker(BARISTA_CIRCUIT_FAILURES="2", BARISTA_CIRCUIT_COOLDOWN="3")

    def submit(count, word):
        for index in range(count):
            chat_prompt_submit(user=alice, model="sim-chat", content=f"{word} {index}")

    def done(count):
        wait_for(lambda: PromptRequest.objects.filter(status="done").count() == count, 30)

    submit(3, "opening")  # the failures that open it (each prompt fails over to steady)
    done(3)
    assert circuit(flaky_row) == "open"
    calls = flaky.stats()["requests_total"]
    submit(10, "while open")
    done(13)
    assert flaky.stats()["requests_total"] == calls  # open: no prompt was sent to it

    flaky.control(error_rate=0)
    wait_for(
        lambda: asyncio.run(live.snapshot([flaky_row.pk]))[flaky_row.pk].probe_in == 0, timeout=10
    )
    submit(10, "recovered")
    done(23)
    assert circuit(flaky_row) == "closed"  # a probe succeeded
    assert flaky.stats()["completed_total"] >= 1
