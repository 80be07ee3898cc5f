"""Embeddings (``POST /v1/embeddings``): the same path as a prompt where it makes sense,
answered by the web process that received the request.

* **Admission and the ledger** as for a prompt: the API key's models and per-minute
  limits, then one ``PromptRequest`` row (``kind="embeddings"``) with the counts — how
  many inputs, how many came from the cache — and the tokens, never the vectors.
* **The cache per input**: an embedding is deterministic, so each input's vector is
  kept under the hash of (alias, input, the parameters passed on that could change it) —
  with the owner in it unless the alias's answers are shared — for ``BARISTA_CACHE_TTL``.
  A batch whose inputs are partly cached asks the backend only for the others, and the
  answer keeps the caller's order.
  Vectors are kept as packed doubles (exactly what the backend sent, 8 bytes a number).
* **The balancer**: backends of ``kind="embeddings"`` serve the alias; the same
  weighted choice, per-backend caps (leases), fair line, circuit breaker and failover
  as a prompt.
* **Not** a job on a queue, nor frames on the channel layer: there is no token stream to
  deliver, and a batch of vectors (2,048 × 3,072 numbers is ~50 MB of JSON) has no
  business crossing Redis twice. The web process waits for the backend itself, as it
  would for the channel layer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from apps.backends import live
from apps.backends.balancer import NoBackendAvailable, backend_acquire
from apps.backends.enabled import enabled_backends
from apps.backends.models import Backend
from apps.backends.providers.openai_compat import BackendError, embed
from apps.core import clients
from apps.gateway.admission import Principal, admission_lock, admit
from apps.gateway.cache import IGNORED_PARAMS, shared
from apps.gateway.metrics import recorder
from apps.gateway.models import PromptRequest

KEY = "barista:embedding:{alias}:{digest}"


class EmbeddingFailed(Exception):
    def __init__(self, message: str, code: str = "backend_failed") -> None:
        super().__init__(message)
        self.message, self.code = message, code


@dataclass(frozen=True, slots=True)
class Embeddings:
    request_id: uuid.UUID
    vectors: list[list[float]]
    prompt_tokens: int
    cached: int  # how many inputs came from the cache
    shared: bool  # the alias's answers are shared between people


def item_key(alias: str, item: Any, params: dict[str, Any], owner_id: int) -> str:
    """An input's key: the alias, the input and every parameter passed on that could
    change its vector (``dimensions``, a vendor's ``normalize``…: all but those that
    cannot, as for a completion), and the owner unless the alias shares answers."""
    significant = {k: v for k, v in params.items() if k not in IGNORED_PARAMS}
    document: dict[str, Any] = {"input": item, "params": significant}
    if not shared(alias):
        document["owner"] = owner_id
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return KEY.format(alias=alias, digest=hashlib.sha256(text.encode()).hexdigest())


def _pack(vector: list[float]) -> bytes:
    return struct.pack(f"<{len(vector)}d", *vector)


def _unpack(data: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(data) // 8}d", data))


async def embeddings_create(
    *,
    principal: Principal,
    alias: str,
    inputs: list[Any],
    params: dict[str, Any],
    bypass_cache: bool = False,
) -> Embeddings:
    """Admit, look each input up in the cache, ask a backend for the rest, record.
    Raises ``Rejection`` (admission) or ``EmbeddingFailed``."""
    keys, is_shared, row = await database_sync_to_async(_admit)(principal, alias, inputs, params)
    use_cache = settings.BARISTA_CACHE_POLICY != "off" and not bypass_cache
    redis = clients.redis()
    found = await redis.mget(keys) if use_cache else [None] * len(inputs)
    vectors: list[list[float] | None] = [
        _unpack(raw) if isinstance(raw, bytes) else None for raw in found
    ]
    missing = [index for index, vector in enumerate(vectors) if vector is None]
    started = time.monotonic()
    tokens, backend = 0, None
    try:
        if missing:
            fresh, tokens, backend = await _ask(
                principal, alias, [inputs[i] for i in missing], params
            )
            for index, vector in zip(missing, fresh, strict=True):
                vectors[index] = vector
            if use_cache:
                async with redis.pipeline(transaction=False) as pipe:
                    for index, vector in zip(missing, fresh, strict=True):
                        pipe.set(keys[index], _pack(vector), ex=settings.BARISTA_CACHE_TTL)
                    await pipe.execute()
    except EmbeddingFailed as exc:
        await database_sync_to_async(_record_failure)(row.id, exc.message)
        recorder.request(outcome="failed", model=alias)
        raise
    except BaseException:  # the client left, Redis went away…: the row must not stay running
        await asyncio.shield(
            database_sync_to_async(_record_failure)(row.id, "The request was interrupted.")
        )
        raise
    cached = len(inputs) - len(missing)
    await database_sync_to_async(_record_done)(row.id, backend, tokens, cached, len(inputs))
    recorder.request(
        outcome="hit" if not missing else "miss",
        model=alias,
        latency=time.monotonic() - started,
        tokens_in=tokens,
    )
    return Embeddings(row.id, [v for v in vectors if v is not None], tokens, cached, is_shared)


def _admit(
    principal: Principal, alias: str, inputs: list[Any], params: dict[str, Any]
) -> tuple[list[str], bool, PromptRequest]:
    """Admission and the ledger row (one step, as for a prompt), then each input's cache
    key, and whether the alias shares answers."""
    with admission_lock(principal, model=alias):
        admit(principal, model=alias, queues=False, holds_slot=True)
        row = _record_start(principal, alias, params, len(inputs))
    keys = [item_key(alias, item, params, principal.user_id) for item in inputs]
    return keys, shared(alias), row


async def _ask(
    principal: Principal, alias: str, inputs: list[Any], params: dict[str, Any]
) -> tuple[list[list[float]], int, Backend]:
    """The vectors from a backend of the alias: another one after a retryable failure."""
    tried: set[int] = set()
    last_error = ""
    while True:
        candidates = [
            b
            for b in await enabled_backends.for_alias(alias, kind="embeddings")
            if b.pk not in tried
        ]
        try:
            backend, lease = await backend_acquire(
                candidates,
                alias=alias,
                lease_ttl=settings.BARISTA_LEASE_TTL,
                wait_up_to=settings.BARISTA_JOB_TIMEOUT,
                party=principal.user_id,
                source=principal.key.id if principal.key else None,
            )
        except NoBackendAvailable as exc:
            if tried:
                raise EmbeddingFailed(f"The model backend failed: {last_error}.") from None
            raise EmbeddingFailed(str(exc), code="unavailable") from None
        tried.add(backend.pk)
        try:
            async with live.held(backend.pk, lease, ttl=settings.BARISTA_LEASE_TTL):
                vectors, tokens = await embed(clients.http(), backend, inputs=inputs, params=params)
        except BackendError as exc:
            await live.record(backend.pk, ok=False, retry_after=exc.retry_after)
            recorder.backend_call(
                backend=backend.name, model=alias, status=str(exc.status or "error")
            )
            last_error = exc.message
            if exc.retryable and len(tried) < settings.BARISTA_BACKEND_ATTEMPTS:
                continue
            raise EmbeddingFailed(f"The model backend failed: {exc.message}.") from None
        await live.record(backend.pk, ok=True)
        recorder.backend_call(backend=backend.name, model=alias, status="200")
        return vectors, tokens or 0, backend


def _record_start(
    principal: Principal, alias: str, params: dict[str, Any], count: int
) -> PromptRequest:
    now = timezone.now()
    return PromptRequest.objects.create(
        owner_id=principal.user_id,
        api_key_id=principal.key.id if principal.key else None,
        source=PromptRequest.Source.API,
        kind=PromptRequest.Kind.EMBEDDINGS,
        model=alias,
        messages=[],
        params={**{k: v for k, v in params.items() if k != "input"}, "inputs": count},
        status=PromptRequest.Status.RUNNING,
        started_at=now,
        attempts=1,
    )


def _record_done(
    request_id: uuid.UUID, backend: Backend | None, tokens: int, cached: int, count: int
) -> None:
    now = timezone.now()
    PromptRequest.objects.filter(id=request_id, status=PromptRequest.Status.RUNNING).update(
        status=PromptRequest.Status.DONE,
        backend=backend,
        prompt_tokens=tokens,
        completion_tokens=0,
        cache_outcome=PromptRequest.CacheOutcome.HIT
        if cached == count
        else PromptRequest.CacheOutcome.MISS,
        extra={"inputs": count, "cached": cached},
        first_token_at=now,
        finished_at=now,
    )


def _record_failure(request_id: uuid.UUID, message: str) -> None:
    PromptRequest.objects.filter(id=request_id, status=PromptRequest.Status.RUNNING).update(
        status=PromptRequest.Status.FAILED, error=message, finished_at=timezone.now()
    )
