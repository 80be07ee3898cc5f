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
    settings.RQ_QUEUES = {name: {"URL": "redis://127.0.0.1:1/0"} for name in settings.RQ_QUEUES}
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "redis" in response.json()["missing"]
