"""GET /metrics: refused without the token, Prometheus' format with it, and the counts of
the whole deployment (a worker process's requests appear, read from Redis)."""

from __future__ import annotations

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from apps.chat.services import chat_prompt_submit
from apps.core import clients
from apps.gateway.admission import RATE_KEY, Rejection
from apps.gateway.metrics import TOTAL_KEY, recorder
from apps.gateway.models import PromptRequest
from tests.conftest import fill_rate_windows, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-canary-7f3a"


def scrape(client: Client, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_refused_without_the_token_or_staff(alice, staff, settings):
    settings.BARISTA_METRICS_TOKEN = TOKEN
    assert Client().get("/metrics").status_code == 401
    wrong = Client().get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and TOKEN not in wrong.content.decode()
    person = Client()
    person.force_login(alice)
    assert person.get("/metrics").status_code == 401
    boss = Client()
    boss.force_login(staff)
    assert boss.get("/metrics").status_code == 200
    settings.BARISTA_METRICS_TOKEN = ""  # no token set: only staff, never "Bearer "
    assert Client().get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


def test_counts_from_every_process_in_prometheus_format(
    alice, settings, start_simulator, start_worker, lifted_limits
):
    settings.BARISTA_METRICS_TOKEN = TOKEN
    simulator = start_simulator("--ttft", "0.1", "--tps", "0")
    simulator.register(alias="sim-chat", name="sim-one")
    start_worker()
    chat_prompt_submit(user=alice, model="sim-chat", content="count me")
    chat_prompt_submit(user=alice, model="sim-chat", content="count me")  # the same: merged
    wait_for(lambda: PromptRequest.objects.filter(status="done").count() == 2, timeout=20)
    settings.BARISTA_USER_RATE_PER_MINUTE = 1  # a limit staff set: she sent two already
    # (and still has, should this minute end just now: the next window's count too)
    fill_rate_windows(lambda window: RATE_KEY.format(user_id=alice.pk, window=window), 2)
    with pytest.raises(Rejection):
        chat_prompt_submit(user=alice, model="sim-chat", content="refused")
    recorder.flush()  # this process's counts (the refusal); the worker flushes every second
    client = Client()
    bearer = {"Authorization": f"Bearer {TOKEN}"}

    def counted(name: str, **labels: str) -> float:
        return scrape(client, **bearer).get((name, tuple(sorted(labels.items()))), 0.0)

    wait_for(
        lambda: counted("barista_requests_total", outcome="coalesced", model="sim-chat") == 1,
        timeout=10,
    )
    assert counted("barista_requests_total", outcome="miss", model="sim-chat") == 1
    assert counted("barista_requests_total", outcome="rejected", model="sim-chat") == 1
    assert (
        counted("barista_backend_requests_total", backend="sim-one", model="sim-chat", status="200")
        == 1
    )
    assert counted("barista_request_duration_seconds_count") == 1
    assert counted("barista_time_to_first_token_seconds_bucket", le="+Inf") == 1
    assert counted("barista_tokens_total", direction="out") == 120  # two answers of 60
    assert counted("barista_workers") == 1
    assert counted("barista_queue_depth", queue="interactive") == 0
    assert counted("barista_inflight", backend="sim-one") == 0


def test_a_sum_of_seconds_that_is_zero_this_time_is_still_added(caplog):
    # A cache hit adds 0.0 s to the latency sum: the integer HINCRBY Redis refuses once
    # the field holds "0.25" — and the whole flush used to be reported as dropped.
    recorder.request(outcome="done", model="m", latency=0.25)
    recorder.flush()
    recorder.request(outcome="hit", model="m", latency=0.0)
    recorder.flush()
    assert "could not write metrics" not in caplog.text
    total = clients.sync_redis().hgetall(TOTAL_KEY)
    assert float(total[b"lat_sum"]) == pytest.approx(0.25)
    assert int(total[b"req|hit|m"]) == 1
