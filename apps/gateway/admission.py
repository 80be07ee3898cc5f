"""Admission: the one port every prompt passes before it is recorded and queued.

``admit(principal, model=..., cache_key=...)`` is called by ``request_submit`` for both
doors. A burst is queued, not refused: fairness is the queue's job — people take turns in
it (``apps.gateway.fairness``) — so one person's 1,000 prompts wait behind nobody's
single one. What refuses, all settings or staff's choices:

* a global bound on queued prompts (``BARISTA_MAX_QUEUED``) — past it Barista is busy
  for anyone who already has prompts waiting (a person with none still gets a turn, so
  one backlog filling the bound locks no one else out);
* limits staff set on every person (off by default): a rate
  (``BARISTA_USER_RATE_PER_MINUTE``, a fixed one-minute window) and a cap on prompts
  waiting or running (``BARISTA_USER_MAX_PENDING``);
* when a program asks with an API key, the key's own limits staff or its owner set: the
  models it may use, requests and tokens per minute, requests at once;
* and the limits staff set on the person (requests and tokens per minute, requests at
  once) for all of their keys together — so a new key does not escape them.

Caps on prompts at once count *slots*, from the ledger: requests merged with an identical
one in flight (coalesced) share its slot, and a stored answer takes none. So 50 identical
requests use one. A refused prompt leaves no ledger row, no job and no backend call. The
Redis counters cost one pipelined round trip. Sizes are checked before this, where the
bytes arrive (the socket frame, the HTTP body) and by the request validator
(``apps.gateway.validation``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from redis.exceptions import LockError

from apps.core import clients
from apps.gateway import fairness
from apps.gateway.metrics import recorder
from apps.gateway.models import PromptRequest, PromptRequestQuerySet
from apps.gateway.queues import connection
from apps.gateway.queues import queues as all_queues

RATE_KEY = "barista:rate:{user_id}:{window}"
# Per-minute counters of an API key ("key") or of all of a person's keys ("person").
API_RATE_KEY = "barista:api:{scope}:{id}:rpm:{window}"
API_TOKENS_KEY = "barista:api:{scope}:{id}:tpm:{window}"
# Held while a prompt that a cap on requests at once applies to is counted and recorded,
# so two prompts of one person, in any processes, cannot both see the last free slot.
ADMIT_LOCK_KEY = "barista:admit-lock:{user_id}"
# Prompts finished per second, on the queues' Redis (the workers write it with RQ's records).
COMPLETED_KEY = "barista:completed:{second}"


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """An API key's limits, as the gateway sees them (the key itself is ``apps.api``'s) —
    or, with ``scope`` "person", the limits staff set on all of a person's keys together
    (``id`` is then the person's)."""

    id: int
    allowed_models: tuple[str, ...] = ()
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    scope: str = "key"

    def allows(self, alias: str) -> bool:
        return not self.allowed_models or alias in self.allowed_models

    def whose(self) -> str:
        return "This key's" if self.scope == "key" else "Your account's (all your keys')"

    def rate_key(self, window: int) -> str:
        return API_RATE_KEY.format(scope=self.scope, id=self.id, window=window)

    def tokens_key(self, window: int) -> str:
        return API_TOKENS_KEY.format(scope=self.scope, id=self.id, window=window)

    def in_flight(self) -> PromptRequestQuerySet:
        rows = PromptRequest.objects.all()
        if self.scope == "key":
            return rows.filter(api_key_id=self.id)
        return rows.filter(owner_id=self.id, api_key_id__isnull=False)


@dataclass(frozen=True, slots=True)
class Quota:
    """Where a key stands in its requests-per-minute window (for x-ratelimit-* headers)."""

    limit: int
    remaining: int
    reset: int  # seconds until the window ends


@dataclass
class Principal:
    """Who asks: a person, and the API key when a program asks on their behalf.
    ``admit`` fills in ``quota`` when the key has a requests-per-minute limit."""

    user_id: int
    key: KeyLimits | None = None
    person: KeyLimits | None = None  # staff's limits on all of the person's keys
    quota: Quota | None = field(default=None, init=False)

    @property
    def api_limits(self) -> list[KeyLimits]:
        return [limits for limits in (self.key, self.person) if limits is not None]

    @property
    def capped(self) -> bool:
        """Whether a cap on requests at once applies to this person's prompts."""
        return bool(settings.BARISTA_USER_MAX_PENDING) or any(
            limits.max_concurrent for limits in self.api_limits
        )


@dataclass
class Rejection(Exception):
    message: str
    code: str
    retry_after: int
    quota: Quota | None = None


def admit(
    principal: Principal,
    *,
    model: str,
    queues: bool = True,
    cache_key: str = "",
    holds_slot: bool | None = None,
) -> None:
    """Raise ``Rejection`` if this prompt may not be queued now. ``queues`` False: it
    will not wait in a queue (a stored answer), so the global bound does not apply, nor
    the caps on requests at once unless it ``holds_slot`` all the same (embeddings, which
    the web process answers itself). ``cache_key``: identical requests in flight share a
    slot."""
    try:
        _admit(principal, model, queues, cache_key, queues if holds_slot is None else holds_slot)
    except Rejection as exc:
        recorder.rejected(model=model, reason=exc.code)
        raise


def _admit(
    principal: Principal, model: str, queues: bool, cache_key: str, holds_slot: bool
) -> None:
    key = principal.key
    if key is not None and not key.allows(model):
        raise Rejection(f"This API key may not use the model {model!r}.", "model_not_allowed", 0)
    now = time.time()
    window = int(now // 60)
    reset = max(1, math.ceil((window + 1) * 60 - now))
    user_rpm = settings.BARISTA_USER_RATE_PER_MINUTE
    rate_key = RATE_KEY.format(user_id=principal.user_id, window=window)
    lines = all_queues() if queues else []
    # Only the counters a limit needs: a key without a per-minute limit costs nothing here.
    per_minute = principal.api_limits
    redis, queue_redis = clients.sync_redis(), connection()
    # One round trip when the queues share REDIS_URL's Redis, else one to each.
    with redis.pipeline(transaction=False) as pipe:
        lane = pipe if queue_redis is redis else queue_redis.pipeline(transaction=False)
        for queue in lines:
            fairness.count_waiting(lane, queue)
        if user_rpm:
            pipe.incr(rate_key)
            pipe.expire(rate_key, 61)
        for limits in per_minute:
            if limits.requests_per_minute:
                pipe.incr(limits.rate_key(window))
                pipe.expire(limits.rate_key(window), 61)
            if limits.tokens_per_minute:
                pipe.get(limits.tokens_key(window))
        answered = pipe.execute()
        if lane is not pipe:
            answered = lane.execute() + answered
    queued = sum(fairness.waiting_counts(answered[: 2 * len(lines)]))
    replies = iter(answered[2 * len(lines) :])
    rate = 0
    if user_rpm:
        rate = next(replies)
        next(replies)  # EXPIRE
    for limits in per_minute:
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        if rpm:
            used = int(next(replies))
            next(replies)  # EXPIRE
            quota = Quota(limit=rpm, remaining=max(0, rpm - used), reset=reset)
            if principal.quota is None or quota.remaining < principal.quota.remaining:
                principal.quota = quota  # the headers tell the tighter of the two
            if used > rpm:
                raise Rejection(
                    f"{limits.whose()} limit is {rpm} requests per minute.",
                    "rate_limit_exceeded",
                    reset,
                    principal.quota,
                )
        if tpm and int(next(replies) or 0) >= tpm:
            raise Rejection(
                f"{limits.whose()} limit is {tpm} tokens per minute.",
                "rate_limit_exceeded",
                reset,
            )
    if queued >= settings.BARISTA_MAX_QUEUED and fairness.waiting_for(
        queue_redis, lines, principal.user_id
    ):
        # The bound is for the crowd: one person's backlog filling it must not lock
        # everyone else out, so a person with nothing waiting still gets their turn.
        wait = estimate_wait(queued)
        raise Rejection(
            f"Barista is busy ({queued:,} prompts waiting). Try again in {wait} s.", "busy", wait
        )
    if user_rpm and rate > user_rpm:
        raise Rejection(
            f"You have sent {user_rpm} prompts this minute, the most allowed. "
            f"Try again in {reset} s.",
            "rate_limited",
            reset,
        )
    if not holds_slot:
        return
    # The ledger knows exactly what is waiting or running: no counter to drift or leak
    # (``admission_lock`` makes counting and recording one step).
    for limits in per_minute:
        if limits.max_concurrent:
            slots = _slots(limits.in_flight(), cache_key)
            if slots is not None and slots >= limits.max_concurrent:
                raise Rejection(
                    f"{limits.whose()} limit is {limits.max_concurrent} requests at once.",
                    "rate_limit_exceeded",
                    1,
                )
    user_cap = settings.BARISTA_USER_MAX_PENDING
    if user_cap:
        slots = _slots(PromptRequest.objects.filter(owner_id=principal.user_id), cache_key)
        if slots is not None and slots >= user_cap:
            wait = estimate_wait(slots)
            raise Rejection(
                f"You already have {slots} prompts waiting or being answered, the most "
                f"allowed. Try again in {wait} s.",
                "too_many_pending",
                wait,
            )


def _slots(rows: PromptRequestQuerySet, cache_key: str) -> int | None:
    """Slots these rows' prompts in flight hold: one per distinct request (identical ones
    share their leader's). None when one of them is identical to this request, which
    will share its slot and so needs none."""
    in_flight = (
        rows.pending().filter(coalesced_with__isnull=True).values_list("cache_key", flat=True)
    )
    keys = list(in_flight)
    if cache_key and cache_key in keys:
        return None
    return len(keys)


@contextmanager
def admission_lock(principal: Principal, *, model: str) -> Iterator[None]:
    """Admit and record a prompt as one step where a cap on requests at once applies:
    otherwise two prompts, in two processes, could both count the last free slot. Held
    until the row is committed (the caller's transaction, if any); no cap, no lock."""
    if not principal.capped:
        yield
        return
    lock = clients.sync_redis().lock(
        ADMIT_LOCK_KEY.format(user_id=principal.user_id), timeout=10, blocking_timeout=10
    )
    if not lock.acquire():
        recorder.rejected(model=model, reason="busy")
        raise Rejection("Too many prompts arriving at once. Try again.", "busy", 1)

    def release() -> None:
        with suppress(LockError):  # expired meanwhile: someone else's now
            lock.release()

    try:
        yield
    except BaseException:
        release()
        raise
    transaction.on_commit(release)  # at once outside a transaction


async def count_tokens(limits: list[KeyLimits], tokens: int) -> None:
    """Tokens used this minute, for the tokens-per-minute limits that apply."""
    window = int(time.time() // 60)
    counters = [lim.tokens_key(window) for lim in limits if lim.tokens_per_minute]
    if not counters or tokens <= 0:
        return
    async with clients.redis().pipeline(transaction=False) as pipe:
        for counter in counters:
            pipe.incrby(counter, tokens)
            pipe.expire(counter, 61)
        await pipe.execute()


def throughput(seconds: int = 10) -> float:
    """Prompts finished per second over the last ``seconds`` (all workers)."""
    now = int(time.time())
    keys = [COMPLETED_KEY.format(second=s) for s in range(now - seconds, now)]
    counts = connection().mget(keys)
    return sum(int(c) for c in counts if c) / seconds


def estimate_wait(position: int) -> int:
    rate = throughput()
    if rate <= 0:
        return 5
    return max(1, math.ceil(position / rate))
