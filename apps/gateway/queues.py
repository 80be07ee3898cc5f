"""The RQ queues and their Redis connection, made once per process.

``django_rq.get_queue()`` builds a new Redis client (and connection pool) on every call, so
every prompt opened fresh connections: about ten extra Redis commands per prompt (HELLO,
CLIENT SETINFO, INFO for the server version) and a TCP handshake. Cached by URL, so
changing the settings (as tests do) still takes effect; the client is the process's one
for that URL (``apps.core.clients.sync_redis``).
"""

from __future__ import annotations

import time

import django_rq
from django.conf import settings
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry
from rq.serializers import JSONSerializer

from apps.core import clients

# Jobs are stored as JSON (settings.RQ_QUEUES): whatever reads one must say so.
SERIALIZER = JSONSerializer
# How long RQ keeps a job that ended without an answer (failed, stopped or cancelled),
# for the console's jobs pages; the ledger keeps the prompt itself for good.
ENDED_JOB_TTL = 24 * 3600


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
    url = str(settings.RQ_QUEUES[name]["URL"])
    cached = _queues.get((name, url))
    if cached is None:
        cached = _queues[(name, url)] = django_rq.get_queue(
            name, connection=clients.sync_redis(url)
        )
    return cached


def queues() -> list[Queue]:
    """Barista's queues in priority order."""
    return [queue(name) for name in settings.BARISTA_QUEUES]


def connection() -> Redis:
    """The queues' Redis (BARISTA_QUEUE_REDIS_URL): RQ's jobs, registries and workers,
    the fair lane, pauses, throughput, the fleet's chores — nothing else. The cache,
    merging and counters are on ``apps.core.clients.sync_redis()`` (the same client when
    both roles share one Redis), backends' live state on ``live_sync_redis()``."""
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


def job_cancel(job: Job) -> None:
    """Cancel a job that is waiting, as RQ does, and let its record go after
    ``ENDED_JOB_TTL``: RQ keeps a cancelled job, and its entry in the canceled registry,
    for ever (``canceled_trim`` takes the entries)."""
    with job.connection.pipeline() as pipe:
        job.cancel(pipeline=pipe)
        pipe.expire(job.key, ENDED_JOB_TTL)
        pipe.execute()


def canceled_trim(connection: Redis, *, now: float | None = None, batch: int = 1000) -> int:
    """Remove canceled-registry entries older than ``ENDED_JOB_TTL`` from every queue,
    with their job records if still cancelled (those of older releases had no expiry).
    RQ's own clean-up skips this registry. Returns how many entries went."""
    cutoff = (time.time() if now is None else now) - ENDED_JOB_TTL
    removed = 0
    for name in settings.BARISTA_QUEUES:
        key = CanceledJobRegistry(name, connection=connection).key
        members = connection.zrangebyscore(key, 0, cutoff, start=0, num=batch)
        ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        if not ids:
            continue
        with connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(Job.key_for(job_id), "status")
            statuses = pipe.execute()
        with connection.pipeline() as pipe:
            for job_id, status in zip(ids, statuses, strict=True):
                text = status.decode() if isinstance(status, bytes) else status
                if text == JobStatus.CANCELED.value:
                    pipe.delete(Job.key_for(job_id))
            pipe.zrem(key, *ids)
            pipe.execute()
        removed += len(ids)
    return removed
