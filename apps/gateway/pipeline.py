"""What a worker does with one prompt: pick a backend, stream from it, deliver, record."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
import uuid

import httpx
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from apps.backends import live
from apps.backends.balancer import NoBackendAvailable, backend_acquire
from apps.backends.directory import directory
from apps.backends.providers.openai_compat import BackendError, Delta, Usage, stream_chat
from apps.gateway import services
from apps.gateway.delivery import TokenBatcher, push
from apps.gateway.ledger import ledger
from apps.gateway.models import PromptRequest
from apps.gateway.worker import CANCEL_REQUEUE, CANCEL_STOP

logger = logging.getLogger(__name__)


async def request_process(request_id: uuid.UUID | str, client: httpx.AsyncClient) -> None:
    """Answer one ledger row. Safe to run twice: a final row is never touched again, and
    only one run can record the answer (``request_complete_many``)."""
    started = await ledger().start(str(request_id))
    if started is None:
        logger.info("request %s is already final; nothing to do", request_id)
        return
    request, rerun = started
    owner_id = request.owner_id
    try:
        await _answer(request, rerun, client)
    except asyncio.CancelledError as exc:
        # The worker says why it stopped us (see apps.gateway.worker).
        reason = exc.args[0] if exc.args else None
        if reason == CANCEL_REQUEUE:
            await database_sync_to_async(services.request_requeue)(request_id=request_id)
            await push(
                request_id=request_id,
                owner_id=owner_id,
                event={"event": "status", "status": "queued", "restart": True},
            )
        elif reason == CANCEL_STOP:
            await push(request_id=request_id, owner_id=owner_id, event={"event": "cancelled"})
        else:
            await _fail(request, "The answer took too long and was stopped.")
        raise


async def _fail(request: PromptRequest, message: str) -> None:
    """Record the failure (unless the row is already final) and tell the owner."""
    if await database_sync_to_async(services.request_fail)(request_id=request.id, error=message):
        await push(
            request_id=request.id,
            owner_id=request.owner_id,
            event={"event": "failed", "error": message},
        )


async def _answer(request: PromptRequest, rerun: bool, client: httpx.AsyncClient) -> None:
    request_id, owner_id = request.id, request.owner_id

    # A re-run (its first worker died) tells the page to drop what it showed and start over.
    await push(
        request_id=request_id,
        owner_id=owner_id,
        event={"event": "status", "status": "running", "restart": rerun},
    )
    try:
        backend, lease = await backend_acquire(
            await directory.for_alias(request.model),
            alias=request.model,
            lease_ttl=settings.BARISTA_LEASE_TTL,
            wait_up_to=settings.BARISTA_JOB_TIMEOUT,
        )
    except NoBackendAvailable as exc:
        await _fail(request, str(exc))
        return

    batcher = TokenBatcher(request_id=request_id, owner_id=owner_id)
    parts: list[str] = []
    usage = Usage(None, None, None)
    first_token_at: datetime.datetime | None = None
    asked = time.monotonic()
    try:
        async with live.held(backend.pk, lease, ttl=settings.BARISTA_LEASE_TTL):
            async for event in stream_chat(
                client, backend, messages=request.messages, params=request.params
            ):
                if isinstance(event, Delta):
                    if first_token_at is None:
                        first_token_at = timezone.now()
                        await live.observe_ttft(backend.pk, time.monotonic() - asked)
                    parts.append(event.text)
                    await batcher.add(event.text)
                else:
                    usage = event
    except asyncio.CancelledError:
        batcher.discard()
        raise
    except BackendError as exc:
        await batcher.flush()
        await batcher.close()
        logger.warning("request %s failed: %s", request_id, exc.message)
        await _fail(request, f"The model backend failed: {exc.message}.")
        return
    # No last flush: the final frame carries the whole answer.
    await batcher.close()
    answer = "".join(parts)
    recorded = await ledger().complete(
        services.Completion(
            request_id=str(request_id),
            answer=answer,
            backend_id=backend.pk,
            first_token_at=first_token_at,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )
    )
    if recorded:
        await push(
            request_id=request_id,
            owner_id=owner_id,
            event={
                "event": "done",
                "content": answer,
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                },
                "backend": backend.name,
                "simulated": backend.simulated,
            },
        )
