"""Shared plumbing: an isolated Barista (own Redis, own database) with real processes,
and the docs/benchmarks.md writer."""

from __future__ import annotations

import atexit
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis
    from django.contrib.auth.models import User

from apps.gateway.localrun import (
    simulator_argv,
    stop_processes,
    wait_http,
    web_argv,
    worker_argv,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DOC = BASE_DIR / "docs" / "benchmarks.md"


def setup_django() -> dict[str, str]:
    """Point this process at a fresh database and a fresh embedded Redis, then set Django up.

    Returns the environment that child processes (workers, daphne) must run with."""
    from apps.gateway.localrun import EmbeddedRedis, free_port

    workdir = Path(tempfile.mkdtemp(prefix="barista-bench-"))
    redis = EmbeddedRedis(port=free_port(), data_dir=workdir / "redis", persist=False)
    redis.start()
    env = {
        "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
        "REDIS_URL": redis.url,
        "BARISTA_VAR_DIR": str(workdir),
        "DJANGO_SETTINGS_MODULE": "project.settings",
        # Production settings: with DEBUG on, Django logs every query.
        "DEBUG": "0",
        "SECRET_KEY": "benchmark-only-not-secret",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SESSION_COOKIE_SECURE": "0",
        "CSRF_COOKIE_SECURE": "0",
        "SECURE_SSL_REDIRECT": "0",  # loopback, plain HTTP
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        # Benchmarks queue more than the default global bound at times.
        "BARISTA_MAX_QUEUED": "1000000",
    }
    # Every Redis role on REDIS_URL (a target that changes it moves them all), whatever
    # the shell says.
    for role in (
        "BARISTA_QUEUE_REDIS_URL",
        "BARISTA_LIVE_REDIS_URL",
        "BARISTA_CHANNELS_REDIS_URLS",
    ):
        os.environ.pop(role, None)
        os.environ.pop(f"{role}_FILE", None)
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    atexit.register(redis.stop)
    return {**os.environ, **env}


def cookie_header(user: User) -> str:
    """A ``Cookie`` header value signing ``user`` in (call after ``setup_django``)."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


class Fleet:
    """Child processes started for one benchmark; all stopped on exit."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, argv: list[str], cwd: Path = BASE_DIR, **extra_env: str
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            argv, cwd=cwd, env={**self.env, **extra_env}, stdout=subprocess.DEVNULL
        )
        self.processes.append(process)
        return process

    def simulator(self, port: int, *flags: str, model: str = "sim-model") -> str:
        process = self.spawn(simulator_argv(port, model, *flags))
        wait_http(f"http://127.0.0.1:{port}/stats", process=process)
        return f"http://127.0.0.1:{port}/v1"

    def worker(self) -> None:
        self.spawn(worker_argv())

    def web(self, port: int) -> str:
        process = self.spawn(web_argv(port))
        wait_http(f"http://127.0.0.1:{port}/healthz", process=process)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        stop_processes(self.processes)


@contextmanager
def fleet(env: dict[str, str]) -> Iterator[Fleet]:
    running = Fleet(env)
    try:
        yield running
    finally:
        running.stop()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def command_stats(client: redis.Redis) -> tuple[Counter[str], Counter[str]]:
    """Calls and µs of each Redis command so far, from one ``INFO commandstats``: the calls
    a Lua script makes count one by one (and their µs inside the script's too), and this
    INFO itself is not counted yet."""
    stats = client.info("commandstats")
    names = [(k.removeprefix("cmdstat_"), v) for k, v in stats.items()]
    calls = Counter({name: int(v["calls"]) for name, v in names})
    return calls, Counter({name: int(v["usec"]) for name, v in names})


def command_calls(client: redis.Redis) -> Counter[str]:
    """Calls of each Redis command so far (``command_stats``)."""
    return command_stats(client)[0]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def record(name: str, markdown: str) -> None:
    """Replace this benchmark's section in docs/benchmarks.md (or append it)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = f"<!-- bench:{name} -->\n{markdown.strip()}\n\n_Measured {stamp} on {machine()}._\n"
    body += f"<!-- /bench:{name} -->"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else text + "\n" + body + "\n"
    DOC.write_text(text)
