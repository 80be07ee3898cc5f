from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from apps.api.models import ApiKey
from apps.api.services import api_key_create
from tests.conftest import Simulator

BODY_LIMIT = 65_536


@dataclass
class Api:
    url: str  # http://127.0.0.1:PORT/v1
    key: str
    row: ApiKey
    simulator: Simulator

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **extra}


@pytest.fixture
def api(request, alice, start_simulator, start_worker, start_web, lifted_limits) -> Api:
    """Barista served by daphne on loopback, a real worker and a simulator process.
    ``@pytest.mark.web_env(NAME="value")`` sets environment for the web process,
    ``@pytest.mark.worker_env(...)`` for the worker."""
    return serve(request, alice, start_simulator, start_web, start_worker)


@pytest.fixture
def api_without_worker(request, alice, start_simulator, start_web, lifted_limits) -> Api:
    """As ``api``, with no worker yet: every request waits in line until the test starts
    one (``start_worker``)."""
    return serve(request, alice, start_simulator, start_web)


def serve(request, alice, start_simulator, start_web, start_worker=None) -> Api:
    marker = request.node.get_closest_marker("web_env")
    web_env = dict(marker.kwargs) if marker else {}
    marker = request.node.get_closest_marker("worker_env")
    worker_env = dict(marker.kwargs) if marker else {}
    simulator = start_simulator("--ttft", "0.05", "--tps", "200", "--tokens", "30")
    # Its answers are shared between people (staff's choice), so the tests can see how
    # each request was answered (X-Barista-Cache); the default, private, has its own tests.
    simulator.register(alias="sim-chat", share_answers=True)
    if start_worker is not None:
        start_worker(**worker_env)
    # A small body limit, so the over-the-limit tests fit in the sockets' buffers.
    url = start_web(BARISTA_API_MAX_BODY_BYTES=str(BODY_LIMIT), **web_env)
    row, key = api_key_create(owner=alice, name="tests")
    return Api(url=f"{url}/v1", key=key, row=row, simulator=simulator)


def no_backend_call(api: Api) -> bool:
    stats: dict[str, Any] = api.simulator.stats()
    return stats["requests_total"] == 0
