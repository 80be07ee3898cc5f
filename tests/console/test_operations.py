"""The console's operations pages — overview, queues, jobs, workers — against a real Redis
and real worker and simulator processes: staff only, each action takes effect without a
restart and is audited."""

from __future__ import annotations

import time
import uuid

import pytest
from django.test import Client
from django.urls import URLPattern, reverse
from rq.registry import FailedJobRegistry
from rq.suspension import is_suspended, resume

from apps.backends.models import Backend
from apps.chat.services import chat_prompt_submit
from apps.console import urls as console_urls
from apps.console.models import AuditEntry
from apps.gateway import fairness, metrics
from apps.gateway.models import PromptRequest
from apps.gateway.queues import PAUSED_KEY, queue
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("lifted_limits")]


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def audited() -> list[tuple[str, str]]:
    return [(entry.action, entry.target) for entry in AuditEntry.objects.order_by("pk")]


def status(request_id) -> str:
    return PromptRequest.objects.get(id=request_id).status


def test_every_console_page_and_action_refuses_people_who_are_not_staff(
    alice, chat_backend, queue_conn
):
    """Every route the console declares — so a page added later cannot be forgotten."""
    request = chat_prompt_submit(user=alice, model="sim-chat", content="hello")
    arguments = {
        "pk": chat_backend.pk,
        "name": "interactive",
        "job_id": str(request.id),
    }
    urls = []
    for pattern in console_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        wanted = {name: arguments[name] for name in pattern.pattern.regex.groupindex}
        urls.append(reverse(f"console:{pattern.name}", kwargs=wanted))
    assert len(urls) >= 17
    anonymous, person = Client(), signed_in(alice)
    for url in urls:
        for client, expected in ((anonymous, 302), (person, 403)):
            for method in (client.get, client.post):
                response = method(url, {"action": "pause", "state": "disabled"})
                assert response.status_code == expected, (url, method)
                if expected == 302:
                    assert response["Location"].startswith("/accounts/login/")
    assert not AuditEntry.objects.exists()
    assert not queue_conn.exists(PAUSED_KEY)
    assert not is_suspended(queue_conn)
    assert status(request.id) == "queued"
    chat_backend.refresh_from_db()
    assert chat_backend.state == Backend.State.ENABLED


def test_overview_shows_the_health_of_each_part(staff, start_simulator, start_worker):
    client = signed_in(staff)
    page = client.get("/console/").content.decode()
    assert "none running" in page  # no worker yet
    assert "none enabled" in page  # no backend yet
    sim = start_simulator()
    sim.register(alias="sim-chat")
    start_worker()
    wait_for(lambda: "1 alive" in client.get("/console/").content.decode())
    page = client.get("/console/").content.decode()
    assert "Everything Barista needs is answering" in page
    assert "1 of 1 usable" in page
    assert "answering in" in page  # Redis and the database, timed


def test_a_paused_queue_keeps_its_prompts_until_resumed(
    staff, alice, start_simulator, start_worker, queue_conn
):
    sim = start_simulator()
    sim.register(alias="sim-chat")
    client = signed_in(staff)
    response = client.post("/console/queues/interactive/pause/", {"action": "pause"})
    assert response.status_code == 302
    start_worker()
    wait_for(lambda: queue_conn.scard("rq:workers") == 1)
    waiting = chat_prompt_submit(user=alice, model="sim-chat", content="wait for me")
    page = client.get("/console/queues/").content.decode()
    assert "paused" in page and "Resume" in page
    # The worker is running but leaves the paused queue alone.
    wait_for(lambda: queue_conn.hget(f"rq:job:{waiting.id}", "status") == b"queued")
    time.sleep(2.5)
    assert status(waiting.id) == "queued"
    assert sim.stats()["requests_total"] == 0
    # Its waiting prompt shows on the jobs page.
    assert str(waiting.id)[:10] in client.get("/console/jobs/?kind=waiting").content.decode()

    client.post("/console/queues/interactive/pause/", {"action": "resume"})
    wait_for(lambda: status(waiting.id) == "done", timeout=15)
    assert audited() == [("queue.pause", "interactive"), ("queue.resume", "interactive")]
    assert client.post("/console/queues/nope/pause/", {"action": "pause"}).status_code == 302
    assert queue_conn.smembers(PAUSED_KEY) == set()
    assert len(audited()) == 2  # the unknown queue changed nothing


def test_failed_jobs_can_be_retried_or_dropped(
    staff, alice, start_simulator, start_worker, settings, queue_conn
):
    # A backend slower than the job timeout: both prompts fail with "took too long".
    settings.BARISTA_JOB_TIMEOUT = 1
    sim = start_simulator("--ttft", "3")
    sim.register(alias="sim-chat")
    first = chat_prompt_submit(user=alice, model="sim-chat", content="first")
    second = chat_prompt_submit(user=alice, model="sim-chat", content="second")
    start_worker()
    failed = FailedJobRegistry("interactive", connection=queue_conn)
    wait_for(lambda: failed.count == 2, timeout=15)
    assert status(first.id) == status(second.id) == "failed"

    client = signed_in(staff)
    page = client.get("/console/jobs/?kind=failed").content.decode()
    assert "alice" in page and "timeout" in page
    # The backend recovers; the retry is a fresh job, with the timeout set now.
    sim.control(ttft=0.05)
    settings.BARISTA_JOB_TIMEOUT = 30
    response = client.post(f"/console/jobs/{first.id}/", {"action": "retry", "kind": "failed"})
    assert response.status_code == 302
    wait_for(lambda: status(first.id) == "done", timeout=15)
    row = PromptRequest.objects.get(id=first.id)
    assert row.error == "" and "first" in row.answer

    client.post(f"/console/jobs/{second.id}/", {"action": "cancel", "kind": "failed"})
    assert second.id.hex not in {uuid.UUID(i).hex for i in failed.get_job_ids()}
    assert status(second.id) == "failed"  # dropped, not rewritten
    # Retrying an answered prompt does nothing.
    client.post(f"/console/jobs/{first.id}/", {"action": "retry", "kind": "failed"})
    assert status(first.id) == "done"
    assert client.post("/console/jobs/not-a-uuid/", {"action": "retry"}).status_code == 302
    assert audited() == [("job.retry", str(first.id)), ("job.cancel", str(second.id))]


def test_a_waiting_prompt_can_be_cancelled_from_the_jobs_page(staff, alice, queue_conn):
    waiting = chat_prompt_submit(user=alice, model="sim-chat", content="never mind")
    client = signed_in(staff)
    client.post(f"/console/jobs/{waiting.id}/", {"action": "cancel", "kind": "waiting"})
    assert status(waiting.id) == "cancelled"
    assert fairness.depths(queue_conn, [queue("interactive")]) == [0]
    assert audited() == [("job.cancel", str(waiting.id))]


def test_workers_page_shows_each_worker_and_controls_them(
    staff, alice, start_simulator, start_worker, queue_conn
):
    sim = start_simulator("--ttft", "30")
    sim.register(alias="sim-chat")
    process = start_worker(BARISTA_WORKER_HEARTBEAT="0.3")
    for i in range(3):
        chat_prompt_submit(user=alice, model="sim-chat", content=f"slow {i}")
    client = signed_in(staff)
    wait_for(lambda: sim.stats()["in_flight"] == 3)

    def row() -> str:
        page = client.get("/console/workers/").content.decode()
        start = page.find('<tr data-worker="')
        return page[start : page.find("</tr>", start)]

    wait_for(lambda: "<td data-live>3</td>" in row())
    assert str(process.pid) in row()

    try:
        client.post("/console/workers/action/", {"action": "suspend"})
        assert is_suspended(queue_conn)
        assert "Workers are suspended" in client.get("/console/workers/").content.decode()
        client.post("/console/workers/action/", {"action": "resume"})
        assert not is_suspended(queue_conn)
    finally:
        resume(queue_conn)
    name = queue_conn.smembers("rq:workers").pop().decode().removeprefix("rq:worker:")
    client.post("/console/workers/action/", {"action": "shutdown", "name": "nobody"})
    client.post("/console/workers/action/", {"action": "shutdown", "name": name})
    # It stops taking prompts, waits for its grace period, then exits.
    process.wait(timeout=40)
    assert audited() == [
        ("workers.suspend", "all workers"),
        ("workers.resume", "all workers"),
        ("workers.shutdown", name),
    ]


def test_a_worker_writes_queue_depth_in_flight_and_workers_each_second(
    alice, start_simulator, start_worker, redis_conn
):
    sim = start_simulator("--ttft", "30")
    backend = sim.register(alias="sim-chat")
    start_worker()
    for i in range(2):
        chat_prompt_submit(user=alice, model="sim-chat", content=f"slow {i}")
    wait_for(lambda: sim.stats()["in_flight"] == 2)

    def stored() -> dict[str, str]:
        key = metrics.SECOND_KEY.format(second=int(time.time()) - 1)
        return {k.decode(): v.decode() for k, v in redis_conn.hgetall(key).items()}

    wait_for(lambda: stored().get(f"inflight|{backend.name}") == "2", timeout=5)
    point = stored()
    assert point["workers"] == "1"
    assert point["depth|interactive"] == "0" and point["depth|bulk"] == "0"
    key = metrics.SECOND_KEY.format(second=int(time.time()) - 1)
    assert 24 * 3600 - 10 < redis_conn.ttl(key) <= 24 * 3600  # kept a day


def test_html_a_person_typed_is_shown_as_text_in_the_console_and_the_sidebar(staff, alice):
    from apps.api.services import api_key_create

    api_key_create(owner=alice, name="<script>alert('key')</script>")
    chat_prompt_submit(user=alice, model="sim-chat", content="<img src=x onerror=alert(1)> hi")
    console = signed_in(staff).get("/console/keys/").content.decode()
    assert "<script>alert(" not in console
    assert "&lt;script&gt;alert(" in console
    sidebar = signed_in(alice).get("/").content.decode()
    assert "<img src=x" not in sidebar
    assert "&lt;img src=x onerror=alert(1)&gt; hi" in sidebar
