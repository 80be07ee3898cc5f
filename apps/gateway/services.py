"""Writes on the ledger: submitting, starting, finishing a prompt."""

from __future__ import annotations

import uuid
from typing import Any

import django_rq
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

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
    """Record a prompt in the ledger and enqueue it once the row is committed.

    Enqueueing after commit means a worker never sees a job whose row it cannot load,
    and a rolled-back submission leaves no job behind.
    """
    from apps.gateway.jobs import process_request_job

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
        )

    transaction.on_commit(enqueue)
    return request


def request_start(*, request_id: uuid.UUID | str) -> PromptRequest | None:
    """Mark a queued prompt running. Returns None when it is already final (cancelled, or
    answered by an earlier run), in which case the caller must not call a backend."""
    updated = PromptRequest.objects.filter(
        id=request_id, status__in=[Status.QUEUED, Status.RUNNING]
    ).update(status=Status.RUNNING, started_at=timezone.now())
    if not updated:
        return None
    return PromptRequest.objects.select_related("owner").get(id=request_id)


def request_first_token(*, request_id: uuid.UUID | str, backend_id: int) -> None:
    PromptRequest.objects.filter(id=request_id, first_token_at__isnull=True).update(
        first_token_at=timezone.now(), backend_id=backend_id
    )


@transaction.atomic
def request_complete(
    *,
    request_id: uuid.UUID | str,
    answer: str,
    backend_id: int | None,
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
