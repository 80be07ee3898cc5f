from __future__ import annotations

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_healthz_answers_200(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_says_what_is_missing_then_turns_ready_when_a_worker_runs(client, start_worker):
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["missing"] == ["workers"]
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["database"] == "ok"

    start_worker()
    wait_for(lambda: client.get("/readyz").status_code == 200)


def test_readyz_is_503_when_redis_is_unreachable(client, settings):
    away = "redis://127.0.0.1:1/0"
    settings.REDIS_URL = settings.QUEUE_REDIS_URL = away
    settings.RQ_QUEUES = {name: {"URL": away} for name in settings.RQ_QUEUES}
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["missing"] == ["redis", "workers"]
    assert response.json()["checks"]["redis"].startswith("unreachable")


def test_readyz_names_the_queues_redis_when_only_it_is_away(client, settings):
    # Redis by role: the queues on a server of their own, which is away.
    settings.QUEUE_REDIS_URL = away = "redis://127.0.0.1:1/0"
    settings.RQ_QUEUES = {name: {"URL": away} for name in settings.RQ_QUEUES}
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["missing"] == ["redis_queues", "workers"]
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["redis_queues"].startswith("unreachable")


def test_with_the_queues_redis_away_the_rest_is_still_reported(staff, settings):
    # Redis by role: the queues' server away leaves out only what lives there — the
    # console's overview and /metrics still give what REDIS_URL holds.
    from django.test import Client

    settings.QUEUE_REDIS_URL = away = "redis://127.0.0.1:1/0"
    settings.RQ_QUEUES = {name: {"URL": away} for name in settings.RQ_QUEUES}
    boss = Client()
    boss.force_login(staff)
    page = boss.get("/console/").content.decode()
    assert "Redis (queues)" in page and "unreachable" in page
    assert 'data-check="backends"' in page  # live state, from the Redis that is there
    assert 'data-stat="cache-ratio"' in page  # the cache's counters too
    metrics = boss.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.content.decode()
    assert "barista_requests_total" in text or "# TYPE barista_requests" in text
    assert "barista_queue_depth" not in text and "barista_workers " not in text
