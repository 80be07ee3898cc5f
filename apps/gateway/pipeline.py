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
from redis.exceptions import RedisError

from apps.backends import live, recovery
from apps.backends.balancer import NoBackendAvailable, backend_acquire, backend_wait_for_return
from apps.backends.enabled import enabled_backends
from apps.backends.models import Backend
from apps.backends.providers.openai_compat import BackendError, Delta, Usage, stream_chat
from apps.core import clients
from apps.gateway import coalescing, services
from apps.gateway.answers import record_answer
from apps.gateway.delivery import TokenBatcher, push
from apps.gateway.extras import Extras
from apps.gateway.fanout import Fanout, owners_of
from apps.gateway.group_commit import group_commit
from apps.gateway.metrics import recorder
from apps.gateway.models import PromptRequest
from apps.gateway.stops import CANCEL_REQUEUE, CANCEL_STOP

logger = logging.getLogger(__name__)

# What the page is told while a prompt waits for a backend (apps.backends.balancer).
WAITING = {"busy": "waiting_slot", "down": "waiting_backend"}


async def request_process(request_id: uuid.UUID | str, client: httpx.AsyncClient) -> None:
    """Answer one ledger row. Safe to run twice: a final row is never touched again, and
    only one run can record the answer (``request_complete_many``)."""
    try:
        started = await group_commit().start(str(request_id))
    except asyncio.CancelledError as exc:
        if exc.args and exc.args[0] == CANCEL_REQUEUE:
            # Given back while it was being started: the start, if it went through, is
            # taken back with it, or it would count against the prompt's retries.
            await database_sync_to_async(services.request_requeue)(request_id=request_id)
        raise
    if started is None:
        logger.info("request %s is already final; nothing to do", request_id)
        # Cancelled before it ran, while others had started following it: one of them
        # takes over (request_cancel does this too; whichever comes second finds no one).
        row = await database_sync_to_async(
            PromptRequest.objects.filter(id=request_id, status=PromptRequest.Status.CANCELLED)
            .only("id", "cache_key", "owner_id")
            .first
        )()
        if row is not None and row.cache_key:
            await _hand_over(row)
        return
    request, rerun = started
    owner_id = request.owner_id
    fanout = Fanout(request, rerun) if request.cache_key else None
    try:
        await _answer(request, rerun, client, fanout)
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
            await _hand_over(request, fanout)
        else:
            await _fail(request, "The answer took too long and was stopped.", code="timeout")
            await _hand_over(request, fanout)
        raise
    except RedisError:
        # Redis went away mid-answer (a restart, a failover). The prompt was accepted, so it
        # is not failed: it waits again. Once Redis is back the worker puts its job first
        # in line (apps.gateway.runs.finish), or, if Redis lost it, the reconciler gives
        # it a new one.
        await database_sync_to_async(services.request_requeue)(request_id=request_id)
        raise
    except Exception:
        # Anything else (the database went away, a bug): the row must not be left
        # running. The owner gets a clear error; the job still fails, with the trace.
        await _fail(
            request,
            "Barista lost track of this answer (its database was unavailable). "
            "Please send it again.",
            code="unavailable",
        )
        raise


async def _fail(request: PromptRequest, message: str, code: str = "backend_failed") -> None:
    """Record the failure (unless the row is already final) and tell the owner. ``code``
    says what kind (the API maps it to an HTTP status): ``backend_failed``, ``timeout``,
    ``unavailable`` (no backend can take it now)."""
    if await database_sync_to_async(services.request_fail)(request_id=request.id, error=message):
        recorder.request(outcome="failed", model=request.model)
        try:
            await push(
                request_id=request.id,
                owner_id=request.owner_id,
                event={"event": "failed", "error": message, "code": code},
            )
        except Exception:  # Redis away: the ledger has it; the page catches up on reconnect
            logger.warning("request %s: could not tell its owner it failed", request.id)


async def _hand_over(request: PromptRequest, fanout: Fanout | None = None) -> None:
    """The leader will not answer: its oldest follower leads now (errors are not shared);
    followers that were shown tokens start that message over."""
    if not request.cache_key:
        return
    new_leader = await database_sync_to_async(services.request_hand_over)(
        leader_id=request.id, cache_key=request.cache_key
    )
    if new_leader is not None and fanout is not None:
        await fanout.restart()


async def _fail_followers(request: PromptRequest, message: str) -> None:
    """The request itself was refused (it would fail anywhere): followers hear the same."""
    followers = await coalescing.close(
        clients.redis(), cache_key=request.cache_key, leader_id=str(request.id)
    )
    owners = await database_sync_to_async(owners_of)(followers)
    for follower, owner in owners.items():
        if await database_sync_to_async(services.request_fail)(request_id=follower, error=message):
            await push(
                request_id=follower, owner_id=owner, event={"event": "failed", "error": message}
            )


# Retry budget: retries under way in this process stay below a fifth of the prompts in
# flight (with a floor, so a quiet worker can still fail over), so a sick fleet is not
# hammered with twice its load.
_in_flight = 0
_retrying = 0


def _may_retry() -> bool:
    return _retrying < max(settings.BARISTA_RETRY_BUDGET_MIN, _in_flight // 5)


async def _answer(
    request: PromptRequest, rerun: bool, client: httpx.AsyncClient, fanout: Fanout | None
) -> None:
    global _in_flight, _retrying
    _in_flight += 1
    attempt = _Attempts()
    try:
        await _answer_once(request, rerun, client, attempt, fanout)
    finally:
        _in_flight -= 1
        if attempt.retrying:
            _retrying -= 1


class _Attempts:
    retrying = False  # counted in _retrying while True


async def _answer_once(
    request: PromptRequest,
    rerun: bool,
    client: httpx.AsyncClient,
    attempt: _Attempts,
    fanout: Fanout | None,
) -> None:
    global _retrying
    request_id, owner_id = request.id, request.owner_id

    # A re-run (its first worker died) tells the page to drop what it showed and start over.
    await push(
        request_id=request_id,
        owner_id=owner_id,
        event={"event": "status", "status": "running", "restart": rerun},
    )
    parts: list[str] = []
    extras = Extras()

    async def to_followers() -> None:
        if fanout is not None:
            await fanout.sync("".join(parts))

    batcher = TokenBatcher(
        request_id=request_id, owner_id=owner_id, after_flush=to_followers if fanout else None
    )
    usage = Usage(None, None, None)
    first_token_at: datetime.datetime | None = None
    tried: set[int] = set()
    down: dict[int, Backend] = {}  # tried, and could not be reached at all
    came_back: set[int] = set()  # waited for, and a probe found it back
    last_error = ""

    async def waiting(reason: str) -> None:
        await push(
            request_id=request_id,
            owner_id=owner_id,
            event={"event": "status", "status": WAITING[reason]},
        )

    while True:
        candidates = [
            b for b in await enabled_backends.for_alias(request.model) if b.pk not in tried
        ]
        try:
            if not candidates and down and first_token_at is None:
                # Every backend it may use is unreachable: wait for one to come back.
                await backend_wait_for_return(
                    list(down.values()), alias=request.model, on_wait=waiting
                )
                tried.difference_update(down)
                came_back.update(down)
                down.clear()
                continue
            backend, lease = await backend_acquire(
                candidates,
                alias=request.model,
                lease_ttl=settings.BARISTA_LEASE_TTL,
                wait_up_to=settings.BARISTA_JOB_TIMEOUT,
                party=owner_id,
                source=request.api_key_id,
                on_wait=waiting,
            )
        except NoBackendAvailable as exc:
            # After a failure with no other backend to try, the person hears what failed.
            if tried and not down:
                await _fail(request, f"The model backend failed: {last_error}.")
            else:
                await _fail(request, str(exc), code="unavailable")
            await _hand_over(request, fanout)
            return
        tried.add(backend.pk)
        asked = time.monotonic()
        ttft_seconds: float | None = None
        try:
            async with live.held(backend.pk, lease, ttl=settings.BARISTA_LEASE_TTL):
                async for event in stream_chat(
                    client,
                    backend,
                    messages=request.messages,
                    params=request.params,
                    text_completion=request.kind == PromptRequest.Kind.TEXT,
                ):
                    if isinstance(event, Delta):
                        if first_token_at is None:
                            first_token_at = timezone.now()
                            ttft_seconds = time.monotonic() - asked
                            await live.observe_ttft(backend.pk, ttft_seconds)
                        if event.piece is not None:
                            extras.add(event.piece)
                        if event.text:
                            parts.append(event.text)
                        await batcher.add(event.text, event.piece)
                    else:
                        usage = event
        except asyncio.CancelledError as exc:
            batcher.discard()
            if exc.args and exc.args[0] == CANCEL_STOP and parts:
                # Stopped by its owner: keep what was written (shielded: we are being
                # cancelled, and the row must get it all the same).
                await asyncio.shield(
                    database_sync_to_async(services.request_keep_stopped)(
                        request_id=request_id, answer="".join(parts)
                    )
                )
            raise
        except BackendError as exc:
            recorder.backend_call(
                backend=backend.name, model=request.model, status=str(exc.status or "error")
            )
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
            if (
                exc.unreachable
                and first_token_at is None
                and backend.pk not in came_back  # back for its probe, not for us: a failure
                and recovery.enabled()
            ):
                down[backend.pk] = backend
                tried.add(backend.pk)
                continue  # another backend, or wait for this one to come back
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
            message = f"The model backend failed: {exc.message}."
            await _fail(request, message)
            if request.cache_key and not exc.retryable:
                await _fail_followers(request, message)
            else:
                await _hand_over(request, fanout)
            return
        await live.record(backend.pk, ok=True)
        recorder.backend_call(
            backend=backend.name,
            model=request.model,
            status="200",
            seconds=time.monotonic() - asked,
            ttft=ttft_seconds,
        )
        break
    # No last flush: the final frame carries the whole answer.
    await batcher.close()
    await record_answer(
        request,
        answer="".join(parts),
        extra=extras.document(usage.finish_reason),
        backend=backend,
        usage=usage,
        first_token_at=first_token_at,
        fanout=fanout,
    )
