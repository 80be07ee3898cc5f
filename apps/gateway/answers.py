"""A worker's answer recorded: in the ledger (once), in the cache, for the requests that
followed it, and in the metrics — then the final event to each owner."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from apps.backends.models import Backend
from apps.backends.providers.openai_compat import Usage
from apps.core import clients
from apps.gateway import cache, coalescing, services
from apps.gateway.delivery import done_event, push
from apps.gateway.fanout import Fanout
from apps.gateway.group_commit import group_commit
from apps.gateway.metrics import recorder
from apps.gateway.models import PromptRequest


async def record_answer(
    request: PromptRequest,
    *,
    answer: str,
    extra: dict[str, Any],
    backend: Backend,
    usage: Usage,
    first_token_at: datetime.datetime | None,
    fanout: Fanout | None,
) -> None:
    request_id, owner_id = request.id, request.owner_id
    completions = [
        services.Completion(
            request_id=str(request_id),
            answer=answer,
            backend_id=backend.pk,
            first_token_at=first_token_at,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            extra=extra,
        )
    ]
    owners = {str(request_id): owner_id}
    if request.cache_key:
        stored = _cached_answer(answer, extra, backend, usage)
        # One script stores the answer (only a complete one: not one cut short by
        # max_tokens) and closes the key; those who joined are answered with the leader.
        followers = await coalescing.close(
            clients.redis(),
            cache_key=request.cache_key,
            leader_id=str(request_id),
            answer=cache.encode(stored) if usage.finish_reason != "length" else b"",
            ttl=settings.BARISTA_CACHE_TTL,
        )
        assert fanout is not None
        owners.update(await fanout.owner_ids(followers))
        completions += [
            dataclasses.replace(
                completions[0],
                request_id=follower,
                cache_outcome=PromptRequest.CacheOutcome.COALESCED,
            )
            for follower in followers
        ]
        if followers:
            cache.add_saved(stored, len(followers))
    recorded = await asyncio.gather(*(group_commit().complete(c) for c in completions))
    finished = timezone.now()
    for completion, was_recorded in zip(completions, recorded, strict=True):
        if was_recorded:
            leader = completion.request_id == str(request_id)
            recorder.request(
                outcome=completion.cache_outcome,
                model=request.model,
                # Times from the leader's submission (a follower's own is not loaded here).
                latency=(finished - request.queued_at).total_seconds() if leader else None,
                ttft=(first_token_at - request.queued_at).total_seconds()
                if leader and first_token_at
                else None,
                tokens_in=usage.prompt_tokens,
                tokens_out=usage.completion_tokens,
            )
            await push(
                request_id=completion.request_id,
                owner_id=owners[completion.request_id],
                event={
                    **done_event(
                        answer=answer,
                        usage=usage,
                        backend=backend,
                        cache_outcome=completion.cache_outcome,
                        extra=extra,
                    ),
                },
            )


def _cached_answer(
    answer: str, extra: dict[str, Any], backend: Backend, usage: Usage
) -> cache.CachedAnswer:
    return cache.CachedAnswer(
        answer=answer,
        extra=extra,
        backend_id=backend.pk,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cost=cache.cost_of(backend, usage.prompt_tokens, usage.completion_tokens),
    )
