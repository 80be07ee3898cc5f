"""Writes on the ledger: submitting, starting, finishing a prompt."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import django_rq
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from rq import Retry
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from apps.gateway.admission import admit
from apps.gateway.models import PromptRequest

Status = PromptRequest.Status


def request_submit(
    *,
    owner: User,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any] | None = None,
    conversation_id: int | None = None,
    source: str = PromptRequest.Source.CHAT,
    request_id: uuid.UUID | None = None,
    queue: str | None = None,
) -> PromptRequest:
    """Admit a prompt (or raise ``Rejection``), record it in the ledger and enqueue it once
    the row is committed.

    Enqueueing after commit means a worker never sees a job whose row it cannot load,
    and a rolled-back submission leaves no job behind.
    """
    from apps.gateway.jobs import process_request_job

    admit(user_id=owner.pk)
    request = PromptRequest.objects.create(
        id=request_id or uuid.uuid4(),
        owner=owner,
        model=model,
        messages=messages,
        params=params or {},
        conversation_id=conversation_id,
        source=source,
    )
    queue_name = queue or settings.BARISTA_QUEUES[0]

    def enqueue() -> None:
        django_rq.get_queue(queue_name).enqueue(
            process_request_job,
            str(request.id),
            job_id=str(request.id),
            job_timeout=settings.BARISTA_JOB_TIMEOUT,
            result_ttl=60,
            failure_ttl=24 * 3600,
            # Re-run only when a worker dies holding the job (RQ's abandoned-job cleanup);
            # the job function records backend failures itself and never raises for them.
            retry=Retry(max=settings.BARISTA_JOB_RETRIES) if settings.BARISTA_JOB_RETRIES else None,
        )

    transaction.on_commit(enqueue)
    return request


@transaction.atomic
def request_start(*, request_id: uuid.UUID | str) -> tuple[PromptRequest, bool] | None:
    """Mark a prompt running. Returns None when it is already final (cancelled, or answered
    by an earlier run): the caller must not call a backend. Otherwise returns the row and
    whether this is a re-run of a prompt whose earlier run may have shown tokens."""
    request = (
        PromptRequest.objects.select_for_update()
        .filter(id=request_id, status__in=[Status.QUEUED, Status.RUNNING])
        .first()
    )
    if request is None:
        return None
    rerun = request.started_at is not None
    request.status = Status.RUNNING
    request.started_at = timezone.now()
    request.first_token_at = None
    request.save(update_fields=["status", "started_at", "first_token_at"])
    return request, rerun


def request_requeue(*, request_id: uuid.UUID | str) -> None:
    """A worker shutting down gave the prompt back to the queue: it waits again."""
    PromptRequest.objects.filter(id=request_id, status=Status.RUNNING).update(
        status=Status.QUEUED, first_token_at=None
    )


def request_cancel(*, owner: User, request_id: uuid.UUID | str) -> PromptRequest | None:
    """Cancel the owner's prompt: a queued job leaves the queue; a running one is stopped
    (its backend call aborted, its slot freed). Returns the row, or None when it is not
    the owner's (or not there). A prompt already final stays as it was."""
    with transaction.atomic():
        request = (
            PromptRequest.objects.select_for_update().filter(id=request_id, owner=owner).first()
        )
        if request is None or request.is_final:
            return request
        request.status = Status.CANCELLED
        request.error = "Cancelled."
        request.finished_at = timezone.now()
        request.save(update_fields=["status", "error", "finished_at"])
    connection = django_rq.get_connection(settings.BARISTA_QUEUES[0])
    try:
        job = Job.fetch(str(request.id), connection=connection)
        if job.get_status() == JobStatus.STARTED:
            send_stop_job_command(connection, job.id)
        else:
            job.cancel()
    except (NoSuchJobError, InvalidJobOperation):
        pass  # already gone: the row's status is what counts, and a worker checks it
    return request


@transaction.atomic
def request_complete(
    *,
    request_id: uuid.UUID | str,
    answer: str,
    backend_id: int | None,
    first_token_at: datetime.datetime | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
) -> bool:
    """Record the final answer exactly once. Returns False if the request was already final
    (a duplicate run, or cancelled meanwhile): the answer is then discarded."""
    request = PromptRequest.objects.select_for_update().get(id=request_id)
    if request.is_final:
        return False
    request.status = Status.DONE
    request.answer = answer
    request.backend_id = backend_id
    request.first_token_at = first_token_at
    request.prompt_tokens = prompt_tokens
    request.completion_tokens = completion_tokens
    request.finished_at = timezone.now()
    request.save()
    if request.conversation_id is not None:
        from apps.chat.services import message_record_answer

        message_record_answer(request=request)
    return True


@transaction.atomic
def request_fail(*, request_id: uuid.UUID | str, error: str) -> bool:
    request = PromptRequest.objects.select_for_update().get(id=request_id)
    if request.is_final:
        return False
    request.status = Status.FAILED
    request.error = error
    request.finished_at = timezone.now()
    request.save(update_fields=["status", "error", "finished_at"])
    return True
