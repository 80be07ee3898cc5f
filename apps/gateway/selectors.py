from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Count, Q, Sum

from apps.gateway import fairness
from apps.gateway.admission import Principal
from apps.gateway.cache import CachedAnswer, cache_key, lookup
from apps.gateway.models import PromptRequest
from apps.gateway.queues import connection, queues


def is_request_id(value: object) -> bool:
    """Whether ``value`` is a string holding a UUID: the shape of every ledger row's id."""
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def request_get_owned(*, user: User, request_id: str | uuid.UUID) -> PromptRequest | None:
    """The ledger row if ``user`` owns it; None if missing, malformed or someone else's."""
    try:
        parsed = uuid.UUID(str(request_id))
    except ValueError:
        return None
    return PromptRequest.objects.filter(id=parsed, owner=user).first()


def queue_position(*, request_id: str) -> int | None:
    """1-based place in line across all queues in priority order — counting exactly what
    will be taken before it (``apps.gateway.fairness``) — or None when the prompt is no
    longer waiting. One round trip."""
    return fairness.position(connection(), queues(), str(request_id))


def usage_summary(*, user: User) -> dict[str, int]:
    """What the person has asked of Barista, from the ledger: prompts, tokens, and what the
    cache and coalescing saved them."""
    rows = PromptRequest.objects.filter(owner=user)
    totals = rows.aggregate(
        prompts=Count("id"),
        answered=Count("id", filter=Q(status=PromptRequest.Status.DONE)),
        failed=Count("id", filter=Q(status=PromptRequest.Status.FAILED)),
        tokens_in=Sum("prompt_tokens"),
        tokens_out=Sum("completion_tokens"),
        from_api=Count("id", filter=Q(source=PromptRequest.Source.API)),
    )
    saved = rows.filter(
        status=PromptRequest.Status.DONE,
        cache_outcome__in=[PromptRequest.CacheOutcome.HIT, PromptRequest.CacheOutcome.COALESCED],
    ).aggregate(answers=Count("id"), tokens=Sum("completion_tokens"))
    return {
        **{key: int(value or 0) for key, value in totals.items()},
        "saved_answers": int(saved["answers"] or 0),
        "saved_tokens": int(saved["tokens"] or 0),
    }


def cached_answer(
    *,
    principal: Principal,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    bypass_cache: bool = False,
    kind: str = "chat",
) -> CachedAnswer | None:
    """The stored answer to exactly this request in this person's cache scope, if any."""
    key = cache_key(
        alias=model,
        messages=messages,
        params=params,
        owner_id=principal.user_id,
        bypass=bypass_cache,
        kind=kind,
    )
    return lookup(key) if key else None
