"""The RQ queues and their Redis connection, made once per process.

``django_rq.get_queue()`` builds a new Redis client (and connection pool) on every call, so
every prompt opened fresh connections: about ten extra Redis commands per prompt (HELLO,
CLIENT SETINFO, INFO for the server version) and a TCP handshake. Cached by URL, so
changing the settings (as tests do) still takes effect.
"""

from __future__ import annotations

import django_rq
from django.conf import settings
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

# Jobs are stored as JSON (settings.RQ_QUEUES): whatever reads one must say so.
SERIALIZER = JSONSerializer


class BaristaJob(Job):
    """RQ's job, less callbacks. A job record names its callbacks by import path and RQ
    calls them — in its clean-ups too, not only where the job function would run. Barista
    sets none, so whatever a record in Redis names is ignored (settings.RQ's JOB_CLASS)."""

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None


_queues: dict[tuple[str, str], Queue] = {}


def queue(name: str) -> Queue:
    key = (name, str(settings.RQ_QUEUES[name].get("URL")))
    cached = _queues.get(key)
    if cached is None:
        cached = _queues[key] = django_rq.get_queue(name)
    return cached


def queues() -> list[Queue]:
    """Barista's queues in priority order."""
    return [queue(name) for name in settings.BARISTA_QUEUES]


def connection() -> Redis:
    return queue(settings.BARISTA_QUEUES[0]).connection


PAUSED_KEY = "barista:queues:paused"


def paused_queues(connection: Redis) -> set[str]:
    """Queues staff paused: workers take nothing from them until they are resumed."""
    return {
        name.decode() if isinstance(name, bytes) else name
        for name in connection.smembers(PAUSED_KEY)
    }


def queue_pause(connection: Redis, name: str, *, paused: bool) -> None:
    if paused:
        connection.sadd(PAUSED_KEY, name)
    else:
        connection.srem(PAUSED_KEY, name)
