"""A cancelled prompt is not a failed one: the console counts it apart — a client that hung
up, an owner who stopped a waiting prompt — lists it apart, and offers no retry. Against a
real Redis, worker, daphne and simulator."""

from __future__ import annotations

import json
import re
import socket
import time
from urllib.parse import urlsplit

import pytest
from django.test import Client

from apps.api.services import api_key_create
from apps.chat.services import chat_prompt_submit
from apps.console.models import AuditEntry
from apps.gateway import operations, queues
from apps.gateway.models import PromptRequest
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("lifted_limits")]


def status(request_id) -> str:
    return PromptRequest.objects.get(id=request_id).status


def job_status(queue_conn, request_id) -> str:
    return (queue_conn.hget(f"rq:job:{request_id}", "status") or b"").decode()


def queue_row(page: str, name: str) -> list[str]:
    """The cells of a queue's row: waiting, oldest, running, failed, cancelled…"""
    row = re.search(rf'<tr data-queue="{name}">(.*?)</tr>', page, re.S)
    assert row, page
    return [
        re.sub(r"<[^>]+>", "", cell).strip()
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", row[1], re.S)
    ]


def hang_up_mid_answer(url: str, key: str, ready, model: str = "sim-chat") -> None:
    """A program asks for a streamed answer and hangs up once ``ready()`` says it is being
    made."""
    parts = urlsplit(url)
    body = json.dumps(
        {"model": model, "stream": True, "messages": [{"role": "user", "content": "bye"}]}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as client:
        client.sendall(head + body)
        wait_for(ready, timeout=15)


def test_cancelled_prompts_are_counted_and_listed_apart_from_failed_ones(
    staff, alice, settings, start_simulator, start_worker, start_web, queue_conn
):
    sim = start_simulator("--ttft", "30")  # nothing is answered while we look
    sim.register(alias="sim-chat")
    settings.BARISTA_JOB_TIMEOUT = 2  # this prompt fails: its backend is too slow
    failing = chat_prompt_submit(user=alice, model="sim-chat", content="too slow")
    # She stops another prompt while it still waits (no worker runs yet).
    waiting = chat_prompt_submit(user=alice, model="sim-chat", content="never mind")
    operations.request_cancel(owner_id=alice.pk, request_id=waiting.id)
    start_worker()
    url = start_web()
    wait_for(lambda: status(failing.id) == "failed", timeout=15)
    _, key = api_key_create(owner=alice, name="script")
    # Hung up once its call reached the backend (the failed one was the first).
    hang_up_mid_answer(url, key, lambda: sim.stats()["requests_total"] == 2)
    hung_up = PromptRequest.objects.get(source=PromptRequest.Source.API)

    def where() -> tuple[str, ...]:
        return (
            status(failing.id),
            status(hung_up.id),
            job_status(queue_conn, hung_up.id),
            job_status(queue_conn, waiting.id),
        )

    wait_for(
        lambda: where() == ("failed", "cancelled", "stopped", "canceled"),
        timeout=20,
        describe=where,
    )

    client = Client()
    client.force_login(staff)
    for page in (
        client.get("/console/").content.decode(),
        client.get("/console/queues/").content.decode(),
    ):
        # Waiting, oldest wait, running, failed, cancelled.
        assert queue_row(page, "interactive")[4:6] == ["1", "1"]
        assert queue_row(page, "bulk")[4:6] == ["0", "1"]
        assert page.count('class="count-failed"') == 1  # in red: the one failure
        assert page.count('class="count-cancelled"') == 2

    failed = client.get("/console/jobs/?kind=failed").content.decode()
    assert f'data-job="{failing.id}"' in failed and 'value="retry"' in failed
    assert str(hung_up.id) not in failed and str(waiting.id) not in failed
    cancelled = client.get("/console/jobs/?kind=cancelled").content.decode()
    assert f'data-job="{hung_up.id}"' in cancelled and f'data-job="{waiting.id}"' in cancelled
    assert str(failing.id) not in cancelled
    assert 'value="retry"' not in cancelled and 'value="remove"' in cancelled
    assert "Cancelled while it waited in its queue." in cancelled
    assert "Stopped: the request was cancelled." in cancelled

    # Nothing to retry, even when asked; removing only takes it off the list.
    client.post(f"/console/jobs/{hung_up.id}/", {"action": "retry", "kind": "cancelled"})
    assert status(hung_up.id) == "cancelled" and job_status(queue_conn, hung_up.id) == "stopped"
    client.post(f"/console/jobs/{hung_up.id}/", {"action": "remove", "kind": "cancelled"})
    assert status(hung_up.id) == "cancelled"
    cancelled = client.get("/console/jobs/?kind=cancelled").content.decode()
    assert str(hung_up.id) not in cancelled and f'data-job="{waiting.id}"' in cancelled
    assert list(AuditEntry.objects.values_list("action", "target")) == [
        ("job.remove", str(hung_up.id))
    ]


def test_a_cancelled_job_is_kept_a_day_then_trimmed_with_its_registry_entry(
    alice, chat_backend, queue_conn
):
    # RQ keeps a cancelled job and its canceled-registry entry for ever; Barista keeps
    # them as long as a failed one (the console's day), then the fleet's chores drop them.
    waiting = chat_prompt_submit(user=alice, model="sim-chat", content="never mind")
    operations.request_cancel(owner_id=alice.pk, request_id=waiting.id)
    job_key = f"rq:job:{waiting.id}"
    assert job_status(queue_conn, waiting.id) == "canceled"
    assert 0 < queue_conn.ttl(job_key) <= queues.ENDED_JOB_TTL
    registry = "rq:canceled:interactive"
    assert queue_conn.zscore(registry, str(waiting.id)) is not None
    # One left by an older release: no expiry on its record, cancelled two days ago.
    queue_conn.hset("rq:job:old", mapping={"status": "canceled"})
    queue_conn.zadd(registry, {"old": time.time() - 2 * 24 * 3600})

    assert queues.canceled_trim(queue_conn) == 1
    assert not queue_conn.exists("rq:job:old")
    assert queue_conn.zscore(registry, "old") is None
    assert queue_conn.zscore(registry, str(waiting.id)) is not None  # still in its day

    # A day on, it goes too.
    assert queues.canceled_trim(queue_conn, now=time.time() + queues.ENDED_JOB_TTL + 1) == 1
    assert queue_conn.zcard(registry) == 0 and not queue_conn.exists(job_key)
