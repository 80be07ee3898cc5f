"""The reconciler: no ledger row waits or runs forever, and none accepted is lost.

The ledger (the database) is the record of what was accepted; Redis holds the jobs. When
Redis loses its data (a restart without persistence, a failover, a flush), or a worker
dies more often than RQ's retries cover, rows can be left without the job or the leader
that would answer them. Every ``BARISTA_RECONCILE_INTERVAL`` seconds one worker of the
fleet looks for them:

* a **queued** row older than ``BARISTA_RECONCILE_AFTER`` seconds whose job is gone or
  ended (its retries ran out), or whose leader (the identical request it follows) has
  already finished, is enqueued again as its own job — and so is one whose job is
  nowhere a worker will find it (popped by a worker that died before starting it) on two
  passes a heartbeat apart: a live worker's job is in that state too, for the moment
  between its pop and its start, and enqueueing it again then would run it twice;
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
from typing import Any

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


@dataclass(frozen=True, slots=True)
class _Row:
    """What the reconciler needs of a ledger row to give it a job again."""

    owner_id: int
    api_key_id: int | None
    source: str
    attempts: int


@dataclass(frozen=True, slots=True)
class _Seen:
    """A request's job as Redis has it."""

    status: str | None  # None: no job
    placed: bool  # where a worker will find it: a lane of its queue, or the started registry
    answering: bool  # a worker's execution of it is alive (that worker's heartbeat keeps it)
    executions: tuple[str, ...]  # ids of its executions RQ still lists

    def can_answer(self, *, finished_is_alive: bool) -> bool:
        """Whether the job can still answer its row: it exists, has not ended (a job whose
        retries ran out sits in the failed registry, its row unanswered), and is placed —
        waiting, or started (RQ re-runs a started job whose worker died). A job a worker
        took but died before starting is neither. A finished job answered a queued row's
        earlier run — unless the row is still running, when nothing will."""
        if self.status is None or self.status in ENDED_JOB:
            return False
        if self.status in (JobStatus.QUEUED, JobStatus.STARTED):
            return self.placed
        if self.status == JobStatus.FINISHED:
            return finished_is_alive
        return True  # deferred, scheduled: RQ will run it


def _inspect(connection: Redis, ids: list[str]) -> dict[str, _Seen]:
    """Each request's job, its place and its executions, in two round trips."""
    with connection.pipeline(transaction=False) as pipe:
        for request_id in ids:
            pipe.hmget(Job.key_for(request_id), "status", "origin")
            pipe.zrange(ExecutionRegistry.key_template.format(request_id), 0, -1)
        replies = pipe.execute()
    found = []
    for index, request_id in enumerate(ids):
        status, origin = replies[2 * index]
        executions = tuple(e.decode() for e in replies[2 * index + 1])
        found.append(
            (request_id, status.decode() if status else None, (origin or b"").decode(), executions)
        )
    with connection.pipeline(transaction=False) as pipe:
        for request_id, status, origin, executions in found:
            if status == JobStatus.QUEUED:
                fairness.is_waiting(pipe, Queue(origin, connection=connection), request_id)
            elif status == JobStatus.STARTED:
                # RQ's started registry lists a run as "{job id}:{execution id}".
                started = StartedJobRegistry(origin, connection=connection).key
                for execution in executions:
                    pipe.zscore(started, f"{request_id}:{execution}")
            for execution in executions:
                pipe.exists(Execution(execution, request_id, connection=connection).key)
        answers = iter(pipe.execute())
    seen = {}
    for request_id, status, _, executions in found:
        places = 0
        if status == JobStatus.QUEUED:
            places = 2
        elif status == JobStatus.STARTED:
            places = len(executions)
        placed = [next(answers) for _ in range(places)]
        alive = [next(answers) for _ in executions]
        seen[request_id] = _Seen(
            status=status,
            placed=any(reply is not None for reply in placed),
            answering=any(alive),
            executions=executions,
        )
    return seen


def _dead_on_two_passes(connection: Redis, dead: list[str]) -> list[str]:
    """Of the rows that look abandoned now, those that also did a heartbeat ago (after
    Redis lost its data, a live worker's next heartbeat re-creates its executions; a job
    a live worker has just popped is started a moment later; until then their prompts
    only look abandoned). The suspects kept are exactly this pass's: a row that came back
    to life is forgotten."""
    now = time.time()
    earlier = connection.hmget(SUSPECTS_KEY, dead) if dead else []
    since: dict[Any, float] = {
        request_id: float(seen) if seen is not None else now
        for request_id, seen in zip(dead, earlier, strict=True)
    }
    with connection.pipeline(transaction=True) as pipe:
        pipe.delete(SUSPECTS_KEY)
        if since:
            pipe.hset(SUSPECTS_KEY, mapping=since)
            pipe.expire(SUSPECTS_KEY, 3600)
        pipe.execute()
    settle = settings.BARISTA_WORKER_HEARTBEAT + 1
    return [request_id for request_id, first in since.items() if now - first >= settle]


def _enqueue_again(connection: Redis, request_id: str, row: _Row, job: _Seen) -> None:
    """A fresh job for the row, in its owner's turn. The old job goes, with what RQ kept
    of its runs, so RQ's own clean-up cannot bring an old run back."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.delete(Job.key_for(request_id), ExecutionRegistry.key_template.format(request_id))
        if job.executions:
            for name in settings.BARISTA_QUEUES:
                pipe.zrem(
                    StartedJobRegistry(name, connection=connection).key,
                    *[f"{request_id}:{execution}" for execution in job.executions],
                )
        pipe.execute()
    services.request_enqueue(
        request_id=request_id,
        owner_id=row.owner_id,
        api_key_id=row.api_key_id,
        queue_name=services.queue_for(source=row.source),
        attempts=row.attempts,
    )


def _requeue_running(
    connection: Redis, rows: dict[str, _Row], seen: dict[str, _Seen], done: Reconciled
) -> None:
    """Abandoned running rows: queued again while they have starts left, else failed."""
    for key, row in rows.items():
        if row.attempts > settings.BARISTA_JOB_RETRIES:
            if services.request_fail(request_id=key, error=stopped_too_often(row.attempts)):
                done.failed += 1
            continue
        updated = PromptRequest.objects.filter(id=key, status=Status.RUNNING).update(
            status=Status.QUEUED, first_token_at=None, coalesced_with=None
        )
        if updated:
            _enqueue_again(connection, key, row, seen[key])
            done.requeued += 1


def reconcile(connection: Redis) -> Reconciled:
    now = timezone.now()
    done = Reconciled()
    waited = now - datetime.timedelta(seconds=settings.BARISTA_RECONCILE_AFTER)
    queued_rows: dict[str, _Row] = {}
    queued_seen: dict[str, _Seen] = {}
    popped: set[str] = set()  # jobs a worker took and has not started (yet, or ever)
    queued = list(
        PromptRequest.objects.filter(status=Status.QUEUED, queued_at__lt=waited)
        .exclude(kind=PromptRequest.Kind.EMBEDDINGS)  # answered by a web process, no job
        .order_by("queued_at")
        .values_list("id", "coalesced_with", "source", "attempts", "owner_id", "api_key_id")[:BATCH]
    )
    if queued:
        ids = [str(row[0]) for row in queued]
        queued_seen = _inspect(connection, ids)
        leaders = {str(row[1]) for row in queued if row[1] is not None}
        finished_leaders = {
            str(leader_id)
            for leader_id in PromptRequest.objects.filter(
                id__in=leaders, status__in=PromptRequest.FINAL_STATUSES
            ).values_list("id", flat=True)
        }
        for row_id, leader, source, attempts, owner_id, api_key_id in queued:
            key = str(row_id)
            job = queued_seen[key]
            if leader is not None:
                if str(leader) not in finished_leaders:
                    continue  # its leader is still answering; the answer will reach it
            elif job.can_answer(finished_is_alive=True):
                continue  # its job is waiting in a queue (or running)
            elif job.status == JobStatus.QUEUED:
                popped.add(key)
            queued_rows[key] = _Row(owner_id, api_key_id, source, attempts)
    running = {
        str(row_id): _Row(owner_id, api_key_id, source, attempts)
        for row_id, attempts, source, owner_id, api_key_id in PromptRequest.objects.filter(
            status=Status.RUNNING, started_at__lt=waited
        )
        .exclude(kind=PromptRequest.Kind.EMBEDDINGS)
        .order_by("started_at")
        .values_list("id", "attempts", "source", "owner_id", "api_key_id")[:BATCH]
    }
    running_seen = _inspect(connection, list(running)) if running else {}
    dead = [
        key
        for key, job in running_seen.items()
        if not job.answering and not job.can_answer(finished_is_alive=False)
    ]
    confirmed = set(_dead_on_two_passes(connection, [*popped, *dead]))
    for key, row in queued_rows.items():
        if key in popped and key not in confirmed:
            continue
        updated = PromptRequest.objects.filter(id=key, status=Status.QUEUED).update(
            coalesced_with=None, cache_outcome=PromptRequest.CacheOutcome.MISS
        )
        if updated:
            _enqueue_again(connection, key, row, queued_seen[key])
            done.requeued += 1
    _requeue_running(
        connection,
        {key: running[key] for key in dead if key in confirmed},
        running_seen,
        done,
    )
    if done.requeued or done.failed:
        logger.warning(
            "reconciler: %d prompts had lost their jobs or workers and were queued again; "
            "%d whose workers stopped too often were failed",
            done.requeued,
            done.failed,
        )
    return done
