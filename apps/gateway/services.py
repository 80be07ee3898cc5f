"""Writes on the ledger: submitting, starting, finishing a prompt."""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from rq import Retry
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from apps.gateway import queues
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
        queues.queue(queue_name).enqueue(
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


def request_key(request_id: uuid.UUID | str) -> str:
    return str(uuid.UUID(str(request_id)))


@transaction.atomic
def request_start_many(*, request_ids: list[str]) -> dict[str, tuple[PromptRequest, bool] | None]:
    """Mark prompts running, in one transaction. For each id: None when the row is already
    final (cancelled, or answered by an earlier run) and the caller must not call a
    backend; else the row and whether this is a re-run of a prompt whose earlier run may
    have shown tokens."""
    keys = [request_key(request_id) for request_id in request_ids]
    rows = {
        str(row.id): row
        for row in PromptRequest.objects.select_for_update().filter(
            id__in=keys, status__in=[Status.QUEUED, Status.RUNNING]
        )
    }
    started_at = timezone.now()
    result: dict[str, tuple[PromptRequest, bool] | None] = {}
    for key in keys:
        row = rows.get(key)
        if row is None:
            result[key] = None
            continue
        result[key] = (row, row.started_at is not None)
        row.status, row.started_at, row.first_token_at = Status.RUNNING, started_at, None
    # Every row gets the same values: one UPDATE, not bulk_update's CASE per row.
    PromptRequest.objects.filter(id__in=list(rows)).update(
        status=Status.RUNNING, started_at=started_at, first_token_at=None
    )
    return result


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
    try:
        job = Job.fetch(str(request.id), connection=queues.connection())
        if job.get_status() == JobStatus.STARTED:
            send_stop_job_command(queues.connection(), job.id)
        else:
            job.cancel()
    except (NoSuchJobError, InvalidJobOperation):
        pass  # already gone: the row's status is what counts, and a worker checks it
    return request


@dataclass(frozen=True, slots=True)
class Completion:
    request_id: str
    answer: str
    backend_id: int | None
    first_token_at: datetime.datetime | None
    prompt_tokens: int | None
    completion_tokens: int | None


@transaction.atomic
def request_complete_many(*, completions: list[Completion]) -> dict[str, bool]:
    """Record final answers, each exactly once, in one transaction. For each request: False
    if it was already final (a duplicate run, or cancelled meanwhile) and its answer is
    discarded. Chat answers join their conversations in the same transaction."""
    keys = [request_key(c.request_id) for c in completions]
    rows = {
        str(row.id): row for row in PromptRequest.objects.select_for_update().filter(id__in=keys)
    }
    finished_at = timezone.now()
    recorded: list[PromptRequest] = []
    result: dict[str, bool] = {}
    for key, completion in zip(keys, completions, strict=True):
        row = rows.get(key)
        if row is None or row.is_final:  # (a second completion in one batch sees DONE)
            result[key] = False
            continue
        row.status = Status.DONE
        row.answer = completion.answer
        row.backend_id = completion.backend_id
        row.first_token_at = completion.first_token_at
        row.prompt_tokens = completion.prompt_tokens
        row.completion_tokens = completion.completion_tokens
        row.finished_at = finished_at
        recorded.append(row)
        result[key] = True
    PromptRequest.objects.bulk_update(
        recorded,
        [
            "status",
            "answer",
            "backend_id",
            "first_token_at",
            "prompt_tokens",
            "completion_tokens",
            "finished_at",
        ],
    )
    in_conversations = [row for row in recorded if row.conversation_id is not None]
    if in_conversations:
        from apps.chat.services import message_record_answers

        message_record_answers(requests=in_conversations)
    return result


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
