"""Redis goes away mid-load and comes back empty, as a Redis without persistence does after
a restart: new requests fail fast with a clear 503, Barista recovers by itself within
seconds, and every prompt accepted before the outage is answered after it — those waiting
in a queue and those being answered at the moment (re-run from the ledger by the
reconciler), their clients still waiting for them."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from django.conf import settings

from apps.api.services import api_key_create
from apps.chat.services import chat_prompt_submit
from apps.gateway.models import PromptRequest
from apps.gateway.queues import queue_pause
from tests.chaos.conftest import record
from tests.chaos.proxy import TcpProxy
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("lifted_limits")]

ENV = {
    "BARISTA_WORKER_HEARTBEAT": "0.3",
    "BARISTA_WORKER_HEARTBEAT_TTL": "2",
    "BARISTA_WORKER_MAINTENANCE_INTERVAL": "1",
    "BARISTA_RECONCILE_AFTER": "2",
    "BARISTA_RECONCILE_INTERVAL": "1",
    "BARISTA_JOB_TIMEOUT": "15",
}


def test_redis_restarted_mid_load(alice, start_simulator, start_worker, start_web, redis_conn):
    target = int(settings.REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(target).start()
    try:
        sim = start_simulator("--ttft", "0.3", "--tps", "40", "--tokens", "20")
        sim.register(alias="sim-chat")
        _, key = api_key_create(owner=alice, name="load")
        env = {**ENV, **proxy.env}
        workers = [start_worker(**env) for _ in range(2)]
        url = start_web(**env)
        headers = {"Authorization": f"Bearer {key}"}
        outcomes: Counter[str] = Counter()
        slowest_refusal = 0.0
        stop = threading.Event()

        def ask(index: int) -> tuple[int, float, dict[str, Any]]:
            body = {
                "model": "sim-chat",
                "messages": [{"role": "user", "content": f"load {index} {time.time()}"}],
            }
            started = time.monotonic()
            try:
                response = httpx.post(
                    f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30
                )
            except httpx.HTTPError:
                return -1, time.monotonic() - started, {}
            try:
                payload = response.json()
            except ValueError:
                payload = {"not_json": response.text[:200]}
            return response.status_code, time.monotonic() - started, payload

        def load(offset: int) -> None:
            index = offset
            while not stop.is_set():
                status, _, payload = ask(index)
                outcomes[str(status)] += 1
                if status >= 500:
                    assert "error" in payload, payload  # every error in OpenAI's shape
                index += 10

        threads = [threading.Thread(target=load, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        # Prompts accepted but still waiting in a queue (paused, so they stay there) when
        # Redis loses everything: only the reconciler can bring them back.
        queue_pause(redis_conn, "interactive", paused=True)
        time.sleep(2.5)  # workers read the paused queues every second (a wait lasts 1 s)
        waiting = [
            chat_prompt_submit(user=alice, model="sim-chat", content=f"waiting {i}").id
            for i in range(10)
        ]
        time.sleep(3)
        before = dict(outcomes)

        # Redis "restarts": every connection drops, and it comes back with nothing in it.
        proxy.down()
        redis_conn.flushall()
        time.sleep(0.5)
        refusals = []
        for index in range(5):
            status, took, payload = ask(10_000 + index)
            refusals.append((status, took))
            assert status == 503, (status, payload)
            assert "unavailable" in payload["error"]["message"].lower()
            slowest_refusal = max(slowest_refusal, took)
        assert slowest_refusal < 2.0
        time.sleep(3)
        proxy.up()
        came_back = time.monotonic()
        wait_for(lambda: ask(20_000)[0] == 200, timeout=20, interval=0.2)
        recovered_in = time.monotonic() - came_back
        time.sleep(2)
        stop.set()
        for thread in threads:
            thread.join(timeout=40)
        assert all(worker.poll() is None for worker in workers), "a worker died"

        # Nothing is left waiting or running: answered, or failed with a clear reason.
        def settled() -> bool:
            return not PromptRequest.objects.filter(status__in=["queued", "running"]).exists()

        wait_for(settled, timeout=45, interval=0.5)
        waited = PromptRequest.objects.filter(id__in=waiting)
        assert {row.status for row in waited} == {"done"}, [(r.status, r.error) for r in waited]
        statuses = Counter(PromptRequest.objects.values_list("status", flat=True))
        failed_reasons = Counter(
            PromptRequest.objects.filter(status="failed").values_list("error", flat=True)
        )
        # Nothing accepted failed: answered, or cancelled by a client that hung up.
        assert set(statuses) <= {"done", "cancelled"}, failed_reasons
        # The clients waiting when Redis went away got their answers, not errors: the only
        # errors are the refusals of requests sent while it was away.
        assert set(outcomes) <= {"200", "503"}, outcomes
        record(
            "redis restart",
            requests_sent=sum(outcomes.values()) + len(refusals) + 1,
            answered_before_outage=before.get("200", 0),
            outcomes=dict(outcomes),
            refusal_seconds_max=round(slowest_refusal, 3),
            recovered_within_s=round(recovered_in, 2),
            ledger=dict(statuses),
            waiting_prompts_requeued_and_answered=len(waiting),
            failed_reasons={reason[:80]: n for reason, n in failed_reasons.items()},
        )
    finally:
        proxy.stop()
