"""Fixtures: the cast (alice, bob, a staff member), a clean Redis per test, and real
processes — simulators, gateway workers, daphne — that talk to the test database."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from apps.backends.models import Backend
from apps.core import clients
from apps.gateway import cache, fairness
from apps.gateway import queues as rq_queues
from apps.gateway.localrun import (
    free_port,
    simulator_argv,
    stop_processes,
    wait_http,
    web_argv,
    worker_argv,
)

BASE_DIR = Path(settings.BASE_DIR)
OUTPUT_DIR = BASE_DIR / "test-output"


@pytest.fixture(autouse=True)
def _fast_and_clean(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.counts.flush()  # an earlier test's counts land before the wipe, not after it
    for url in {settings.REDIS_URL, settings.QUEUE_REDIS_URL, settings.LIVE_REDIS_URL}:
        redis.Redis.from_url(url).flushdb()


@pytest.fixture
def redis_conn() -> redis.Redis:
    """Live state's Redis (REDIS_URL): the cache, merging, backends, counters, metrics."""
    return redis.Redis.from_url(settings.REDIS_URL)


@pytest.fixture
def live_conn() -> redis.Redis:
    """Backends' live state's Redis (BARISTA_LIVE_REDIS_URL): leases, stats, circuits."""
    return redis.Redis.from_url(settings.LIVE_REDIS_URL)


@pytest.fixture
def queue_conn() -> redis.Redis:
    """The queues' Redis (BARISTA_QUEUE_REDIS_URL): RQ, the fair lane, pauses, workers.
    Under `make test` another database of the same server than ``redis_conn``'s."""
    return redis.Redis.from_url(settings.QUEUE_REDIS_URL)


def make_user(username: str, *, staff: bool = False) -> User:
    return User.objects.create_user(
        username=username, password=f"{username}-pw", is_staff=staff, is_superuser=staff
    )


@pytest.fixture
def alice(db: None) -> User:
    return make_user("alice")


@pytest.fixture
def bob(db: None) -> User:
    return make_user("bob")


@pytest.fixture
def carol(db: None) -> User:
    return make_user("carol")


@pytest.fixture
def staff(db: None) -> User:
    return make_user("sam", staff=True)


@pytest.fixture
def chat_backend(db: None) -> Backend:
    """An enabled backend for the alias sim-chat, for tests that never reach it (nothing
    listens on port 9)."""
    return Backend.objects.create(
        name="sim-a",
        alias="sim-chat",
        model_name="sim-model",
        base_url="http://127.0.0.1:9/v1",
        simulated=True,
    )


def queued_jobs() -> int:
    """Jobs waiting in every queue, both lanes (apps.gateway.fairness)."""
    return sum(fairness.depths(rq_queues.connection(), rq_queues.queues()))


@pytest.fixture
def lifted_limits(settings: Any) -> None:
    """For tests that send hundreds of prompts as one person, whatever limits on a person
    the environment sets (off by default; tested in tests/gateway/test_admission.py)."""
    settings.BARISTA_USER_MAX_PENDING = 10_000
    settings.BARISTA_USER_RATE_PER_MINUTE = 10_000


def session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def ws_headers(
    user: User | None, origin: str = "http://127.0.0.1", host: str = "127.0.0.1"
) -> list[tuple[bytes, bytes]]:
    """A browser's websocket headers: its page's Origin, the Host it asked, the cookie."""
    headers = [(b"origin", origin.encode()), (b"host", host.encode())]
    if user is not None:
        headers.append(
            (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_cookie(user)}".encode())
        )
    return headers


# --- Real processes -------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """Environment for worker/web processes: the test database and the test Redis."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        url = f"sqlite:///{db['NAME']}"
    else:
        auth = db["USER"] or ""
        if db["PASSWORD"]:
            auth += f":{db['PASSWORD']}"
        url = f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": settings.REDIS_URL,
        "PYTHONUNBUFFERED": "1",
        "DEBUG": "1",
        "LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


@dataclass
class Simulator:
    port: int
    model: str
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, int]:
        return httpx.get(f"http://127.0.0.1:{self.port}/stats").json()

    def last_request(self) -> dict[str, Any]:
        """The body of the last /v1/ POST the simulator received."""
        return httpx.get(f"http://127.0.0.1:{self.port}/last-request").json()

    def control(self, **changes: Any) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/control", json=changes).raise_for_status()

    def register(
        self, *, alias: str = "sim-chat", name: str | None = None, **fields: Any
    ) -> Backend:
        """A Backend row for this simulator; uncapped unless the test sets a cap."""
        fields.setdefault("max_concurrency", 100_000)
        return Backend.objects.create(
            name=name or f"sim-{self.port}",
            alias=alias,
            model_name=self.model,
            base_url=self.base_url,
            simulated=True,
            **fields,
        )


@dataclass
class Processes:
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, cwd=BASE_DIR, env=env or child_env())
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        stop_processes(self.started)


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    yield procs
    procs.stop_all()


@pytest.fixture
def start_simulator(processes: Processes) -> Callable[..., Simulator]:
    def start(*args: str, model: str = "sim-model", port: int | None = None) -> Simulator:
        port = port or free_port()
        process = processes.spawn(
            simulator_argv(port, model, *args),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_http(f"http://127.0.0.1:{port}/stats", process=process)
        return Simulator(port=port, model=model, process=process)

    return start


@pytest.fixture
def start_worker(processes: Processes) -> Callable[..., subprocess.Popen[bytes]]:
    def start(**env: str) -> subprocess.Popen[bytes]:
        return processes.spawn(worker_argv(), env=child_env(**env))

    return start


@pytest.fixture
def start_web(processes: Processes) -> Callable[..., str]:
    def start(**env: str) -> str:
        port = free_port()
        process = processes.spawn(web_argv(port), env=child_env(**env))
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", process=process)
        return url

    return start


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.05,
    describe: Callable[[], object] | None = None,
) -> Any:
    """Poll ``predicate`` until it is true; on timeout, fail with ``describe()`` (the state
    that explains why) in the message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    state = f": {describe()}" if describe else ""
    raise AssertionError(f"condition not met within {timeout} s{state}")


def fill_rate_windows(key_for: Callable[[int], str], count: int) -> None:
    """Set a per-minute counter (``key_for(window)``) to ``count`` for this minute and the
    next, so a limit's refusal does not depend on the minute not ending mid-test."""
    window = int(time.time() // 60)
    for each in (window, window + 1):
        clients.sync_redis().set(key_for(each), count, ex=120)
