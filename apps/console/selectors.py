"""What the console shows about the running system: Redis, the database, queues, jobs and
workers. Reads only; every function answers quickly or says what it could not reach."""

from __future__ import annotations

import datetime
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.db import connection as db_connection
from redis import Redis
from redis.exceptions import RedisError
from rq import Worker
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry, StartedJobRegistry

from apps.backends import live
from apps.backends.models import Backend
from apps.console.models import AuditEntry
from apps.console.monitoring import redis_servers
from apps.core import clients
from apps.gateway import cache, fairness, metrics
from apps.gateway.models import PromptRequest
from apps.gateway.queues import ENDED_JOB_TTL, SERIALIZER, connection, paused_queues, queue
from apps.gateway.selectors import is_request_id


@dataclass(frozen=True, slots=True)
class Check:
    """One part of the system: is it well, and the figures that say so."""

    name: str
    ok: bool
    summary: str
    details: list[tuple[str, str]] = field(default_factory=list)


def _ms(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.1f} ms"


def check_redis(redis: Redis, name: str = "Redis") -> Check:
    started = time.perf_counter()
    try:
        redis.ping()
        took = _ms(started)
        info: dict[str, Any] = redis.info()
    except RedisError as exc:
        return Check(name, False, f"unreachable ({type(exc).__name__})")
    return Check(
        name,
        True,
        f"answering in {took}",
        [
            ("version", str(info.get("redis_version", "?"))),
            ("memory", str(info.get("used_memory_human", "?"))),
            ("clients", str(info.get("connected_clients", "?"))),
            ("commands/s", str(info.get("instantaneous_ops_per_sec", "?"))),
        ],
    )


def check_database() -> Check:
    started = time.perf_counter()
    try:
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        took = _ms(started)
        waiting = PromptRequest.objects.filter(status=PromptRequest.Status.QUEUED).count()
        running = PromptRequest.objects.filter(status=PromptRequest.Status.RUNNING).count()
    except Exception as exc:  # any database error means "not well"
        return Check("Database", False, f"unreachable ({type(exc).__name__})")
    return Check(
        "Database",
        True,
        f"answering in {took}",
        [
            ("engine", db_connection.vendor),
            ("prompts waiting", str(waiting)),
            ("prompts running", str(running)),
        ],
    )


def check_workers(workers: list[WorkerRow] | None) -> Check:
    if workers is None:
        return Check("Workers", False, "unknown (Redis unreachable)")
    if not workers:
        return Check("Workers", False, "none running: prompts wait in their queues")
    in_flight = sum(worker.in_flight for worker in workers)
    return Check(
        "Workers",
        True,
        f"{len(workers)} alive",
        [("prompts in flight", str(in_flight))],
    )


def check_backends(redis: Redis) -> Check:
    backends = list(Backend.objects.exclude(state=Backend.State.DISABLED))
    if not backends:
        return Check("Backends", False, "none enabled: add one under Backends")
    try:
        states = live.snapshot_sync(redis, [b.pk for b in backends])
    except RedisError:
        return Check("Backends", False, "unknown (Redis unreachable)")
    usable = [
        b for b in backends if states[b.pk].circuit != "open" and states[b.pk].up is not False
    ]
    down = [b.name for b in backends if b not in usable]
    return Check(
        "Backends",
        bool(usable),
        f"{len(usable)} of {len(backends)} usable",
        [("down", ", ".join(down))] if down else [],
    )


@dataclass(frozen=True, slots=True)
class QueueRow:
    name: str
    depth: int
    oldest_wait: float | None  # seconds the job at the head has waited
    running: int
    failed: int  # in the last 24 hours
    cancelled: int  # in the last 24 hours: not failures
    paused: bool


# How far back the console looks for jobs that ended without an answer: as long as RQ
# keeps them (apps.gateway.queues).
ENDED_WINDOW = ENDED_JOB_TTL
_CANCELLED = {JobStatus.STOPPED.value, JobStatus.CANCELED.value}


@dataclass(frozen=True, slots=True)
class Ended:
    """A queue's jobs that ended without an answer in the last 24 hours, newest first,
    each with the moment it ended (Unix seconds): those that failed, and those cancelled
    — which are not failures, and cannot be retried."""

    failed: list[tuple[str, float]]
    cancelled: list[tuple[str, float]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _scored(reply: Any) -> list[tuple[str, float]]:
    """A sorted set's members with their scores, as ``ZRANGE … WITHSCORES`` answers."""
    return [(_text(member), float(score)) for member, score in reply]


def ended_jobs(redis: Redis, name: str) -> Ended:
    """A cancelled prompt's job is in one of two places: RQ's failed registry, marked
    *stopped*, when it was running (RQ records a stopped job there, and so does
    ``apps.gateway.runs``), or RQ's canceled registry when it was still waiting. So the
    failed registry is told apart by each job's status. Two round trips; counted, never
    cleaned up — RQ's clean-up reads (and may unpickle) job data, which is the worker's
    business, not a page's."""
    now = time.time()
    failed_key = FailedJobRegistry(name, connection=redis).key
    # A failed job's score is when it expires (it ended ``ENDED_WINDOW`` before); a
    # cancelled one's is when it was cancelled (RQ gives it no expiry; the fleet's chores
    # trim them after ``ENDED_WINDOW``).
    in_failed = _scored(redis.zrevrangebyscore(failed_key, "+inf", now, withscores=True))
    with redis.pipeline(transaction=False) as pipe:
        for job_id, _ in in_failed:
            pipe.hget(Job.key_for(job_id), "status")
        pipe.zrevrangebyscore(
            CanceledJobRegistry(name, connection=redis).key,
            "+inf",
            now - ENDED_WINDOW,
            withscores=True,
        )
        *statuses, canceled = pipe.execute()
    failed: list[tuple[str, float]] = []
    stopped: list[tuple[str, float]] = []
    for (job_id, expires), status in zip(in_failed, statuses, strict=True):
        ended = (job_id, expires - ENDED_WINDOW)
        (stopped if status and _text(status) in _CANCELLED else failed).append(ended)
    cancelled = sorted(stopped + _scored(canceled), key=lambda pair: pair[1], reverse=True)
    return Ended(failed=failed, cancelled=cancelled)


def queue_rows(redis: Redis) -> list[QueueRow]:
    paused = paused_queues(redis)
    rows = []
    for name in settings.BARISTA_QUEUES:
        rq_queue = queue(name)
        head = fairness.head(redis, rq_queue)
        stamp = redis.hget(Job.key_for(head), "enqueued_at") if head else None
        oldest = metrics.seconds_since(stamp, time.time()) if stamp else None
        ended = ended_jobs(redis, name)
        rows.append(
            QueueRow(
                name=name,
                depth=fairness.depths(redis, [rq_queue])[0],
                oldest_wait=oldest,
                running=int(redis.zcard(StartedJobRegistry(name, connection=redis).key)),
                failed=len(ended.failed),
                cancelled=len(ended.cancelled),
                paused=name in paused,
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    queue: str
    status: str
    when: datetime.datetime | None
    error: str
    request: PromptRequest | None

    @property
    def can_retry(self) -> bool:
        """Only a failed prompt can be retried (``request_retry``): not a cancelled one,
        nor one whose job failed after its owner cancelled it."""
        return self.request is not None and self.request.status == PromptRequest.Status.FAILED


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


JOB_KINDS = ("failed", "cancelled", "waiting")


def job_rows(redis: Redis, *, kind: str, limit: int = 100) -> list[JobRow]:
    """``failed`` or ``cancelled`` jobs of the last 24 hours (newest first), or
    ``waiting`` ones (head of each queue first), with the ledger rows they answer."""
    found: list[tuple[str, str, float | None]] = []
    for name in settings.BARISTA_QUEUES:
        if kind == "waiting":
            found += [
                (name, job_id, None) for job_id in fairness.waiting_ids(redis, queue(name), limit)
            ]
        else:
            ended = ended_jobs(redis, name)
            found += [
                (name, job_id, at)
                for job_id, at in (ended.cancelled if kind == "cancelled" else ended.failed)
            ]
    if kind != "waiting":
        found.sort(key=lambda each: each[2] or 0.0, reverse=True)
    found = found[:limit]
    jobs = Job.fetch_many(
        [job_id for _, job_id, _ in found], connection=redis, serializer=SERIALIZER
    )
    rows_by_id = {
        str(row.id): row
        for row in PromptRequest.objects.select_related("owner").filter(
            id__in=[job_id for _, job_id, _ in found if is_request_id(job_id)]
        )
    }
    rows = []
    for (name, job_id, ended_at), job in zip(found, jobs, strict=True):
        request = rows_by_id.get(job_id)
        when = datetime.datetime.fromtimestamp(ended_at, tz=datetime.UTC) if ended_at else None
        if job is None:
            rows.append(JobRow(job_id, name, "gone", when, "", request))
            continue
        state = job.get_status(refresh=False)
        status = state.value if state is not None else "unknown"
        error = ""
        if status == JobStatus.CANCELED.value:
            error = "Cancelled while it waited in its queue."
        elif kind != "waiting":
            result = job.latest_result()
            error = _last_line(result.exc_string if result else None)
        rows.append(
            JobRow(
                id=job_id,
                queue=name,
                status=status,
                when=when if kind != "waiting" else job.enqueued_at,
                error=error,
                request=request,
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class WorkerRow:
    name: str
    hostname: str
    pid: int | None
    state: str
    queues: list[str]
    in_flight: int
    done: int
    last_heartbeat: datetime.datetime | None
    born: datetime.datetime | None


def worker_rows(redis: Redis) -> list[WorkerRow]:
    workers = Worker.all(connection=redis)
    with redis.pipeline(transaction=False) as pipe:
        for worker in workers:
            pipe.hmget(worker.key, "barista_inflight", "barista_done")
        extra = pipe.execute()
    rows = []
    for worker, (in_flight, done) in zip(workers, extra, strict=True):
        rows.append(
            WorkerRow(
                name=worker.name,
                hostname=str(worker.hostname or ""),
                pid=worker.pid,
                state=str(worker.get_state()),
                queues=worker.queue_names(),
                in_flight=int(in_flight or 0),
                done=int(done or 0),
                last_heartbeat=worker.last_heartbeat,
                born=worker.birth_date,
            )
        )
    return sorted(rows, key=lambda row: row.name)


CHECK_NAMES = {
    "redis": "Redis",
    "redis_live": "Redis (live state)",
    "redis_queues": "Redis (queues)",
}


def overview() -> dict[str, Any]:
    redis, live_redis, queue_redis = (
        clients.sync_redis(),
        clients.live_sync_redis(),
        connection(),
    )
    by_server = {
        id(server): check_redis(server, CHECK_NAMES[name])
        for name, server in redis_servers().items()
    }
    redis_check, live_check = by_server[id(redis)], by_server[id(live_redis)]
    queue_check = by_server[id(queue_redis)]
    workers: list[WorkerRow] | None = None
    queues: list[QueueRow] = []
    counters: dict[str, float] = {}
    if queue_check.ok:
        try:
            workers, queues = worker_rows(queue_redis), queue_rows(queue_redis)
        except RedisError:
            workers, queues = None, []
    cache_known = False
    if redis_check.ok:
        with suppress(RedisError):
            counters, cache_known = cache.counters(redis), True
    checks = [*by_server.values(), check_database(), check_workers(workers)]
    if live_check.ok:
        checks.append(check_backends(live_redis))
    return {
        "checks": checks,
        "queues": queues,
        "cache_known": cache_known,  # the cache's counters were read (they live on REDIS_URL)
        "cache_ratio": counters["hit_ratio"] if counters.get("asked") else None,
        "all_ok": all(check.ok for check in checks),
    }


# --- The audit log ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditRow:
    at: datetime.datetime
    actor: Any
    action: str
    target: str
    detail: str


_ADMIN_ACTIONS = {ADDITION: "admin.add", CHANGE: "admin.change", DELETION: "admin.delete"}


def audit_log(*, limit: int) -> list[AuditRow]:
    """What staff did, newest first: the console's operations and every change made in
    Django's admin (its own log, read as it is — bulk deletions there write no signals)."""
    rows = [
        AuditRow(entry.at, entry.actor, entry.action, entry.target, entry.detail)
        for entry in AuditEntry.objects.select_related("actor")[:limit]
    ]
    for entry in LogEntry.objects.select_related("user", "content_type")[:limit]:
        kind = entry.content_type.model if entry.content_type else "object"
        rows.append(
            AuditRow(
                at=entry.action_time,
                actor=entry.user,
                action=_ADMIN_ACTIONS.get(entry.action_flag, "admin"),
                target=f"{kind} {entry.object_repr}"[:200],
                detail=entry.get_change_message(),
            )
        )
    rows.sort(key=lambda row: row.at, reverse=True)
    return rows[:limit]
