"""The reconciler: no ledger row waits or runs forever.

The ledger (the database) is the record of what was accepted; Redis holds the jobs. When
Redis loses its data (a restart without persistence, a failover, a flush), rows can be
left without the job or the leader that would answer them. Every
``BARISTA_RECONCILE_INTERVAL`` seconds one worker of the fleet looks for them:

* a **queued** row older than ``BARISTA_RECONCILE_AFTER`` seconds whose job is gone,
  ended (its retries ran out) or nowhere a worker will find it (popped by a worker that
  died before starting it), or whose leader (the identical request it follows) has
  already finished, is enqueued again
  as its own job — accepted prompts are not lost, and ``request_complete_many`` still
  records exactly one answer;
* a **running** row whose job is gone or ended and which started longer ago than the job
  timeout
  (so no worker can still be answering it) is failed with a clear error.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from apps.gateway import services
from apps.gateway.models import PromptRequest

logger = logging.getLogger(__name__)

BATCH = 500
LOST_WHILE_RUNNING = (
    "This answer was lost when Barista's queue restarted while it ran. Please send it again."
)

Status = PromptRequest.Status


@dataclass
class Reconciled:
    requeued: int = 0
    failed: int = 0


# A job in one of these states will never answer its row.
ENDED_JOB = {JobStatus.FAILED.value, JobStatus.STOPPED.value, JobStatus.CANCELED.value}


def _jobs_alive(connection: Redis, ids: list[str]) -> dict[str, bool]:
    """Whether each request's job can still answer it: it exists, has not ended (a job
    whose retries ran out sits in the failed registry, its row unanswered), and is where
    a worker will find it — in its queue, or in the started registry. A job a worker
    popped but died before starting is in neither."""
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
                pipe.lpos(Queue(origin, connection=connection).key, request_id)
            elif status == JobStatus.STARTED:
                pipe.zscore(StartedJobRegistry(origin, connection=connection).key, request_id)
            else:
                pipe.echo("")  # keeps the replies in step
        placed = pipe.execute()
    alive = {}
    for request_id, (status, _), where in zip(ids, found, placed, strict=True):
        if status is None or status in ENDED_JOB:
            alive[request_id] = False
        elif status in (JobStatus.QUEUED, JobStatus.STARTED):
            alive[request_id] = where is not None
        else:  # deferred, scheduled, finished: let RQ and the pipeline have it
            alive[request_id] = True
    return alive


def reconcile(connection: Redis) -> Reconciled:
    now = timezone.now()
    done = Reconciled()
    waited = now - datetime.timedelta(seconds=settings.BARISTA_RECONCILE_AFTER)
    queued = list(
        PromptRequest.objects.filter(status=Status.QUEUED, queued_at__lt=waited)
        .order_by("queued_at")
        .values_list("id", "coalesced_with", "source")[:BATCH]
    )
    if queued:
        ids = [str(row_id) for row_id, _, _ in queued]
        alive = _jobs_alive(connection, ids)
        leaders = {str(leader) for _, leader, _ in queued if leader is not None}
        finished_leaders = {
            str(leader_id)
            for leader_id in PromptRequest.objects.filter(
                id__in=leaders, status__in=PromptRequest.FINAL_STATUSES
            ).values_list("id", flat=True)
        }
        for row_id, leader, source in queued:
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
                connection.delete(Job.key_for(key))  # an ended job of the same id goes
                services.request_enqueue(
                    request_id=key, queue_name=services.queue_for(source=source)
                )
                done.requeued += 1
    stale = now - datetime.timedelta(
        seconds=settings.BARISTA_JOB_TIMEOUT + settings.BARISTA_RECONCILE_AFTER
    )
    running = [
        str(row_id)
        for row_id in PromptRequest.objects.filter(
            status=Status.RUNNING, started_at__lt=stale
        ).values_list("id", flat=True)[:BATCH]
    ]
    if running:
        alive = _jobs_alive(connection, running)
        for key in running:
            if not alive[key] and services.request_fail(request_id=key, error=LOST_WHILE_RUNNING):
                done.failed += 1
    if done.requeued or done.failed:
        logger.warning(
            "reconciler: %d waiting prompts had lost their jobs and were queued again; "
            "%d lost while running were failed",
            done.requeued,
            done.failed,
        )
    return done
