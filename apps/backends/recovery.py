"""Waiting for a model to come back: prompts hold on while every backend of their alias is
down, and the backends are probed at once rather than after their cool-downs.

When no backend of an alias can take a prompt because each is unreachable or its circuit
is open (Envoy's outlier detection calls this *panic*: every host ejected), the prompt
waits, up to ``BARISTA_BACKEND_RETURN_WAIT`` seconds, while the backends are probed with
an active health check (``apps.backends.health``) — at once, then every second, by one
waiting process of the fleet per backend (a Redis key taken with ``SET NX``). A probe that
answers closes the backend's circuit and marks it *returned*; every prompt waiting for it
tries it again. One that does not counts a failure toward the circuit as any check does.

With active health checks off (``BARISTA_HEALTH_INTERVAL=0``) nothing tells a backend
that is back from one that is not, so nothing waits: the prompt fails at once, as the
circuit breaker alone decides.
"""

from __future__ import annotations

import asyncio
import time

from django.conf import settings
from redis import Redis

from apps.backends import health, live
from apps.backends.models import Backend
from apps.core import clients

PROBE_KEY = "barista:backend:{id}:probe"  # held by the process probing it this second
RETURNED_KEY = "barista:backend:{id}:returned"  # when a probe last found it back (unix s)
PROBE_EVERY = 1.0  # seconds between probes of one backend, fleet-wide
RETURNED_TTL = 300


def enabled() -> bool:
    """Whether prompts wait for a backend to come back (health checks tell them when)."""
    return settings.BARISTA_HEALTH_INTERVAL > 0 and settings.BARISTA_BACKEND_RETURN_WAIT > 0


def failing(alias: str) -> str:
    """What a person is told when every backend of their model is down."""
    return f"Every backend for {alias!r} is failing right now; try again shortly."


def all_open(backends: list[Backend], states: dict[int, live.BackendLive]) -> bool:
    """Every one of these backends is down: its circuit open, within its cool-down."""
    return all(states[b.pk].circuit == "open" and states[b.pk].probe_in > 0 for b in backends)


def all_down(connection: Redis, backends: list[Backend]) -> float | None:
    """When every one of these backends is down (``all_open``): seconds until the first
    may be probed again (at least 1). None when one can take a prompt. For a client that
    asked not to wait for a model to come back."""
    if not backends:
        return None
    states = live.snapshot_sync(connection, [b.pk for b in backends])
    if all_open(backends, states):
        return max(1.0, min(states[b.pk].probe_in for b in backends))
    return None


async def probe(backend: Backend) -> bool | None:
    """Probe the backend if no one else of the fleet did this second: True if it answers,
    False if not, None when another process has the turn."""
    redis = clients.live_redis()
    if not await redis.set(PROBE_KEY.format(id=backend.pk), 1, nx=True, px=int(PROBE_EVERY * 1000)):
        return None
    result = await health.check_backend(clients.http(), backend)
    await live.record_health(
        backend.pk,
        up=result.up,
        ms=result.ms,
        error="" if result.up else result.message,
        keep=settings.BARISTA_HEALTH_INTERVAL * 3,
    )
    await live.record(backend.pk, ok=result.up)  # an answer closes the circuit
    if result.up:
        await redis.set(RETURNED_KEY.format(id=backend.pk), time.time(), ex=RETURNED_TTL)
    return result.up


async def returned_since(backends: list[Backend], since: float) -> bool:
    """Whether a probe found one of these backends back after ``since`` (unix seconds)."""
    stamps = await clients.live_redis().mget([RETURNED_KEY.format(id=b.pk) for b in backends])
    return any(stamp is not None and float(stamp) > since for stamp in stamps)


async def wait_for_return(backends: list[Backend], *, until: float) -> bool:
    """Probe these backends until one answers (True), or until the loop's clock reaches
    ``until`` (False)."""
    loop = asyncio.get_running_loop()
    since = time.time()
    while True:
        for backend in backends:
            if await probe(backend):
                return True
        if await returned_since(backends, since):
            return True  # another process's probe found one back
        if loop.time() >= until:
            return False
        await asyncio.sleep(min(0.25, max(0.0, until - loop.time())))
