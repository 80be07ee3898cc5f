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


# Retry budget: retries under way in this process stay below a fifth of the prompts in
# flight (with a floor, so a quiet worker can still fail over), so a sick fleet is not
# hammered with twice its load.
_in_flight = 0
_retrying = 0


def _may_retry() -> bool:
    return _retrying < max(settings.BARISTA_RETRY_BUDGET_MIN, _in_flight // 5)


async def _answer(request: PromptRequest, rerun: bool, client: httpx.AsyncClient) -> None:
    global _in_flight, _retrying
    _in_flight += 1
    attempt = _Attempts()
    try:
        await _answer_once(request, rerun, client, attempt)
    finally:
        _in_flight -= 1
        if attempt.retrying:
            _retrying -= 1


class _Attempts:
    retrying = False  # counted in _retrying while True


async def _answer_once(
    request: PromptRequest, rerun: bool, client: httpx.AsyncClient, attempt: _Attempts
) -> None:
    global _retrying
    request_id, owner_id = request.id, request.owner_id

    # A re-run (its first worker died) tells the page to drop what it showed and start over.
    await push(
        request_id=request_id,
        owner_id=owner_id,
        event={"event": "status", "status": "running", "restart": rerun},
    )
    batcher = TokenBatcher(request_id=request_id, owner_id=owner_id)
    parts: list[str] = []
    usage = Usage(None, None, None)
    first_token_at: datetime.datetime | None = None
    tried: set[int] = set()
    last_error = ""
    while True:
        candidates = [b for b in await directory.for_alias(request.model) if b.pk not in tried]
        try:
            backend, lease = await backend_acquire(
                candidates,
                alias=request.model,
                lease_ttl=settings.BARISTA_LEASE_TTL,
                wait_up_to=settings.BARISTA_JOB_TIMEOUT,
            )
        except NoBackendAvailable as exc:
            # After a failure with no other backend to try, the person hears what failed.
            await _fail(request, f"The model backend failed: {last_error}." if tried else str(exc))
            return
        tried.add(backend.pk)
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
            overloaded = exc.status == 429
            await live.record(
                backend.pk, ok=False, retry_after=exc.retry_after, overloaded=overloaded
            )
            if not overloaded and first_token_at is None:
                # A failure counts as a slow answer in the EWMA (at least the penalty), so
                # a backend answering quick 500s stops looking fast.
                await live.observe_ttft(
                    backend.pk, max(time.monotonic() - asked, settings.BARISTA_FAILURE_PENALTY)
                )
            logger.warning("request %s: %s", request_id, exc.message)
            last_error = exc.message
            if overloaded and first_token_at is None:
                # Full, not failing: it sits out its Retry-After, the prompt waits for a
                # slot (here or elsewhere), and no attempt is used up.
                tried.discard(backend.pk)
                continue
            # Before the first token the person has seen nothing: try another backend.
            # After it, no silent retry: they keep what arrived and get a clear error.
            if (
                first_token_at is None
                and exc.retryable
                and len(tried) < settings.BARISTA_BACKEND_ATTEMPTS
                and (attempt.retrying or _may_retry())
            ):
                if not attempt.retrying:
                    attempt.retrying, _retrying = True, _retrying + 1
                continue
            await batcher.flush()
            await batcher.close()
            await _fail(request, f"The model backend failed: {exc.message}.")
            return
        await live.record(backend.pk, ok=True)
        break
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
