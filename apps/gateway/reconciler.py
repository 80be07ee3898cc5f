"""The reconciler: no ledger row waits or runs forever, and none accepted is lost.

The ledger (the database) is the record of what was accepted; Redis holds the jobs. When
Redis loses its data (a restart without persistence, a failover, a flush), or a worker
dies more often than RQ's retries cover, rows can be left without the job or the leader
that would answer them. Every ``BARISTA_RECONCILE_INTERVAL`` seconds one worker of the
fleet looks for them:

* a **queued** row older than ``BARISTA_RECONCILE_AFTER`` seconds whose job is gone,
  ended (its retries ran out) or nowhere a worker will find it (popped by a worker that
  died before starting it), or whose leader (the identical request it follows) has
  already finished, is enqueued again as its own job;
* a **running** row that started longer ago than ``BARISTA_RECONCILE_AFTER`` and that no
  worker is answering — no live execution (RQ's per-run record, which a worker's
  heartbeat keeps alive and re-creates after Redis lost it) and no job RQ will run again
  — on two passes a heartbeat apart, is queued again while it has starts left
  (1 + ``BARISTA_JOB_RETRIES``, counted in the ledger), else failed with a clear error.

A prompt run twice is still recorded once (``request_complete_many``).
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone
from redis import Redis
from rq import Queue
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from apps.gateway import fairness, services
from apps.gateway.models import PromptRequest

logger = logging.getLogger(__name__)

BATCH = 500
# Running rows seen with no live worker on an earlier pass: request id -> unix time.
SUSPECTS_KEY = "barista:reconciler:suspects"


def stopped_too_often(attempts: int) -> str:
    return (
        f"Barista started this answer {attempts} times and each time the worker answering "
        "it stopped (it crashed or lost its queue). Please send it again."
    )


Status = PromptRequest.Status


@dataclass
class Reconciled:
    requeued: int = 0
    failed: int = 0


# A job in one of these states will never answer its row.
ENDED_JOB = {JobStatus.FAILED.value, JobStatus.STOPPED.value, JobStatus.CANCELED.value}


def _jobs_alive(
    connection: Redis, ids: list[str], *, finished_is_alive: bool = True
) -> dict[str, bool]:
    """Whether each request's job can still answer it: it exists, has not ended (a job
    whose retries ran out sits in the failed registry, its row unanswered), and is where
    a worker will find it — in its queue, or in the started registry (where RQ re-runs
    it if its worker died). A job a worker popped but died before starting is in
    neither. A finished job has answered a queued row's earlier run — unless the row is
    still running, when nothing will (``finished_is_alive=False``)."""
    with connection.pipeline(transaction=False) as pipe:
        for request_id in ids:
            pipe.hmget(Job.key_for(request_id), "status", "origin")
        found = [
            (status.decode() if status else None, (origin or b"").decode())
            for status, origin in pipe.execute()
        ]
    with connection.pipeline(transaction=False) as pipe:
        for request_id, (status, origin) in zip(ids, found, strict=True):
            if status == JobStatus.QUEUED:
                fairness.is_waiting(pipe, Queue(origin, connection=connection), request_id)
            elif status == JobStatus.STARTED:
                pipe.zscore(StartedJobRegistry(origin, connection=connection).key, request_id)
                pipe.echo("")  # two replies for each job
            else:
                pipe.echo("")
                pipe.echo("")
        replies = pipe.execute()
    alive = {}
    for index, (request_id, (status, _)) in enumerate(zip(ids, found, strict=True)):
        placed = any(reply not in (None, b"") for reply in replies[2 * index : 2 * index + 2])
        if status is None or status in ENDED_JOB:
            alive[request_id] = False
        elif status in (JobStatus.QUEUED, JobStatus.STARTED):
            alive[request_id] = placed
        elif status == JobStatus.FINISHED:
            alive[request_id] = finished_is_alive
        else:  # deferred, scheduled: RQ will run it
            alive[request_id] = True
    return alive


def _running_elsewhere(connection: Redis, ids: list[str]) -> dict[str, bool]:
    """Whether a worker is answering each request now: one of its executions (RQ's record
    of a run, expiring a heartbeat TTL after the last heartbeat) is still there."""
    with connection.pipeline(transaction=False) as pipe:
        for request_id in ids:
            pipe.zrange(ExecutionRegistry.key_template.format(request_id), 0, -1)
        executions = pipe.execute()
    with connection.pipeline(transaction=False) as pipe:
        for request_id, execution_ids in zip(ids, executions, strict=True):
            keys = [
                Execution(e.decode(), request_id, connection=connection).key for e in execution_ids
            ]
            if keys:
                pipe.exists(*keys)
            else:
                pipe.echo("")  # keeps the replies in step
        found = pipe.execute()
    return {request_id: bool(n) for request_id, n in zip(ids, found, strict=True)}


def _dead_on_two_passes(connection: Redis, dead: list[str], alive: list[str]) -> list[str]:
    """Of the running rows that look abandoned now, those that also did a heartbeat ago
    (after Redis lost its data, a live worker's next heartbeat re-creates its executions;
    until then its prompts only look abandoned)."""
    now = time.time()
    with connection.pipeline(transaction=False) as pipe:
        if alive:
            pipe.hdel(SUSPECTS_KEY, *alive)
        for request_id in dead:
            pipe.hsetnx(SUSPECTS_KEY, request_id, now)
        if dead:
            pipe.hmget(SUSPECTS_KEY, dead)
        pipe.expire(SUSPECTS_KEY, 3600)
        replies = pipe.execute()
    if not dead:
        return []
    seen = replies[-2]
    settle = settings.BARISTA_WORKER_HEARTBEAT + 1
    return [
        request_id
        for request_id, since in zip(dead, seen, strict=True)
        if since is not None and now - float(since) >= settle
    ]


def _enqueue_again(
    connection: Redis, request_id: str, *, owner_id: int, source: str, attempts: int
) -> None:
    """A fresh job for the row (an ended job of the same id goes), in its owner's turn."""
    connection.delete(Job.key_for(request_id))
    services.request_enqueue(
        request_id=request_id,
        owner_id=owner_id,
        queue_name=services.queue_for(source=source),
        attempts=attempts,
    )


def _requeue_running(
    connection: Redis, rows: dict[str, tuple[int, str, int]], done: Reconciled
) -> None:
    """Abandoned running rows: queued again while they have starts left, else failed."""
    for key, (attempts, source, owner_id) in rows.items():
        if attempts > settings.BARISTA_JOB_RETRIES:
            if services.request_fail(request_id=key, error=stopped_too_often(attempts)):
                done.failed += 1
            continue
        updated = PromptRequest.objects.filter(id=key, status=Status.RUNNING).update(
            status=Status.QUEUED, first_token_at=None, coalesced_with=None
        )
        if updated:
            _enqueue_again(connection, key, owner_id=owner_id, source=source, attempts=attempts)
            done.requeued += 1
    if rows:
        connection.hdel(SUSPECTS_KEY, *rows)


def reconcile(connection: Redis) -> Reconciled:
    now = timezone.now()
    done = Reconciled()
    waited = now - datetime.timedelta(seconds=settings.BARISTA_RECONCILE_AFTER)
    queued = list(
        PromptRequest.objects.filter(status=Status.QUEUED, queued_at__lt=waited)
        .order_by("queued_at")
        .values_list("id", "coalesced_with", "source", "attempts", "owner_id")[:BATCH]
    )
    if queued:
        ids = [str(row[0]) for row in queued]
        alive = _jobs_alive(connection, ids)
        leaders = {str(row[1]) for row in queued if row[1] is not None}
        finished_leaders = {
            str(leader_id)
            for leader_id in PromptRequest.objects.filter(
                id__in=leaders, status__in=PromptRequest.FINAL_STATUSES
            ).values_list("id", flat=True)
        }
        for row_id, leader, source, attempts, owner_id in queued:
            key = str(row_id)
            if leader is not None:
                if str(leader) not in finished_leaders:
                    continue  # its leader is still answering; the answer will reach it
            elif alive[key]:
                continue  # its job is waiting in a queue (or running)
            updated = PromptRequest.objects.filter(id=row_id, status=Status.QUEUED).update(
                coalesced_with=None, cache_outcome=PromptRequest.CacheOutcome.MISS
            )
            if updated:
                _enqueue_again(connection, key, owner_id=owner_id, source=source, attempts=attempts)
                done.requeued += 1
    running = {
        str(row_id): (attempts, source, owner_id)
        for row_id, attempts, source, owner_id in PromptRequest.objects.filter(
            status=Status.RUNNING, started_at__lt=waited
        )
        .order_by("started_at")
        .values_list("id", "attempts", "source", "owner_id")[:BATCH]
    }
    if running:
        ids = list(running)
        answering = _running_elsewhere(connection, ids)
        job_alive = _jobs_alive(connection, ids, finished_is_alive=False)
        dead = [key for key in ids if not answering[key] and not job_alive[key]]
        living = [key for key in ids if answering[key] or job_alive[key]]
        confirmed = _dead_on_two_passes(connection, dead, living)
        _requeue_running(connection, {key: running[key] for key in confirmed}, done)
    if done.requeued or done.failed:
        logger.warning(
            "reconciler: %d prompts had lost their jobs or workers and were queued again; "
            "%d whose workers stopped too often were failed",
            done.requeued,
            done.failed,
        )
    return done
