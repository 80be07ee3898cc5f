"""What is done to prompts after they were accepted, and to the queue machinery: an owner
cancels a prompt; staff retry or drop a job, pause a queue, suspend, resume or stop
workers.

These speak RQ and Redis so that the doors and the console never have to: they name an
operation, these functions know the keys and the commands.
"""

from __future__ import annotations

import uuid

from asgiref.sync import async_to_sync
from django.db import transaction
from django.utils import timezone
from rq import Worker
from rq.command import send_shutdown_command, send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.suspension import is_suspended, resume, suspend

from apps.core import clients
from apps.gateway import coalescing, delivery, fairness, queues
from apps.gateway.metrics import recorder
from apps.gateway.models import PromptRequest
from apps.gateway.services import queue_for, request_enqueue, request_hand_over, request_key

Status = PromptRequest.Status


def request_cancel(*, owner_id: int, request_id: uuid.UUID | str) -> PromptRequest | None:
    """Cancel the owner's prompt: a queued job leaves the queue; a running one is stopped
    (its backend call aborted, its slot freed). Returns the row, or None when it is not
    the owner's (or not there). A prompt already final stays as it was.

    Coalesced prompts: a follower simply stops following. A leader others follow keeps
    its backend call going for them if it is running (only its owner stops hearing it);
    if it had not started, its oldest follower takes over."""
    with transaction.atomic():
        request = (
            PromptRequest.objects.select_for_update()
            .filter(id=request_id, owner_id=owner_id)
            .first()
        )
        if request is None or request.is_final:
            return request
        request.status = Status.CANCELLED
        request.error = "Cancelled."
        request.finished_at = timezone.now()
        request.save(update_fields=["status", "error", "finished_at"])
    recorder.request(outcome="cancelled", model=request.model)
    connection, redis = queues.connection(), clients.sync_redis()
    key = request_key(request.id)
    if request.coalesced_with is not None:
        coalescing.leave(redis, leader_id=str(request.coalesced_with), request_id=key)
        return request
    try:
        job = Job.fetch(key, connection=connection, serializer=queues.SERIALIZER)
        if job.get_status() == JobStatus.STARTED:
            if request.cache_key and coalescing.has_followers(redis, leader_id=key):
                return request  # answered for its followers; they are not stopped
            send_stop_job_command(connection, job.id)
        else:
            queues.job_cancel(job)
            fairness.remove(connection, queues.queue(job.origin), key)
            if request.cache_key:
                request_hand_over(leader_id=key, cache_key=request.cache_key)
    except (NoSuchJobError, InvalidJobOperation):
        pass  # already gone: the row's status is what counts, and a worker checks it
    return request


def request_retry(*, request_id: uuid.UUID | str) -> PromptRequest | None:
    """Staff retry a failed prompt (console, jobs): its row waits again and its job goes
    back to its queue. Returns None when there is nothing to retry (only a failed row
    can be: one waiting or running still has a job that will answer it). A re-run after
    tokens were shown restarts that message on the page."""
    key = request_key(request_id)
    with transaction.atomic():
        row = PromptRequest.objects.select_for_update().filter(id=key).first()
        if row is None or row.status != Status.FAILED or row.kind == row.Kind.EMBEDDINGS:
            return None  # (embeddings have no job: the client asks again)
        # Staff give it a fresh set of retries.
        row.status, row.error, row.finished_at, row.attempts = Status.QUEUED, "", None, 0
        row.save(update_fields=["status", "error", "finished_at", "attempts"])
    connection = queues.connection()
    try:
        job = Job.fetch(key, connection=connection, serializer=queues.SERIALIZER)
        if job.get_status() != JobStatus.QUEUED:
            job.delete()  # out of the failed registry too
            # A fresh job in the owner's turn — as the reconciler would give it, so the
            # two never put one prompt in line twice.
            request_enqueue(
                request_id=key,
                owner_id=row.owner_id,
                api_key_id=row.api_key_id,
                queue_name=job.origin,
            )
    except NoSuchJobError:
        request_enqueue(
            request_id=key,
            owner_id=row.owner_id,
            api_key_id=row.api_key_id,
            queue_name=queue_for(source=row.source),
        )
    async_to_sync(delivery.push)(
        request_id=key,
        owner_id=row.owner_id,
        event={"event": "status", "status": "queued", "restart": True},
    )
    return row


def request_discard_job(*, request_id: uuid.UUID | str) -> PromptRequest | None:
    """Staff drop a job (console, jobs): a waiting or running prompt is cancelled as its
    owner would cancel it; a failed one stays failed and its job leaves the failed list."""
    key = request_key(request_id)
    row = PromptRequest.objects.filter(id=key).first()
    if row is not None and not row.is_final:
        request_cancel(owner_id=row.owner_id, request_id=key)
    try:
        job = Job.fetch(key, connection=queues.connection(), serializer=queues.SERIALIZER)
        if job.get_status() in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            job.delete()
    except NoSuchJobError:
        pass
    return row


def queue_pause(*, name: str, paused: bool) -> None:
    """Pause ``name`` (or resume it): workers take nothing from a paused queue."""
    queues.queue_pause(queues.connection(), name, paused=paused)


def workers_suspend() -> None:
    """Every worker finishes what it holds and takes nothing new until resumed."""
    suspend(queues.connection())


def workers_resume() -> None:
    resume(queues.connection())


def workers_suspended() -> bool:
    return bool(is_suspended(queues.connection()))


def worker_shutdown(*, name: str) -> bool:
    """Ask the worker ``name`` to finish its prompts and exit; False if none by that name runs."""
    redis = queues.connection()
    if name not in {worker.name for worker in Worker.all(connection=redis)}:
        return False
    send_shutdown_command(redis, name)
    return True
