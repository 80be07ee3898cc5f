"""Admission: the checks a prompt passes before it is recorded and queued.

Three limits, all settings; the first two cost one pipelined Redis round trip:

* a global bound on queued prompts (``BARISTA_MAX_QUEUED``) — past it Barista is busy;
* a per-person rate (``BARISTA_USER_RATE_PER_MINUTE``), a fixed one-minute window;
* a per-person cap on prompts waiting or running (``BARISTA_USER_MAX_PENDING``). This is
  the fairness rule: one person's 1,000 prompts cannot fill the line in front of someone
  else's one, because at most this many of them are in it at a time. The rest are refused
  with a retry time, so nothing accepted is ever dropped. Counted from the ledger.

A refused prompt leaves no ledger row, no job and no backend call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from django.conf import settings

from apps.gateway.queues import connection, queues

RATE_KEY = "barista:rate:{user_id}:{window}"
COMPLETED_KEY = "barista:completed:{second}"


@dataclass
class Rejection(Exception):
    message: str
    code: str
    retry_after: int


def queue_keys() -> list[str]:
    return [q.key for q in queues()]


def admit(*, user_id: int) -> None:
    """Raise ``Rejection`` if this person's prompt may not be queued now."""
    from apps.gateway.models import PromptRequest

    now = time.time()
    window = int(now // 60)
    rate_key = RATE_KEY.format(user_id=user_id, window=window)
    with connection().pipeline(transaction=False) as pipe:
        for key in queue_keys():
            pipe.llen(key)
        pipe.incr(rate_key)
        pipe.expire(rate_key, 61)
        replies = pipe.execute()
    queued, rate = sum(replies[:-2]), replies[-2]
    if queued >= settings.BARISTA_MAX_QUEUED:
        wait = estimate_wait(queued)
        raise Rejection(
            f"Barista is busy ({queued:,} prompts waiting). Try again in {wait} s.", "busy", wait
        )
    if rate > settings.BARISTA_USER_RATE_PER_MINUTE:
        wait = max(1, math.ceil((window + 1) * 60 - now))
        raise Rejection(
            f"You have sent {settings.BARISTA_USER_RATE_PER_MINUTE} prompts this minute, the "
            f"most allowed. Try again in {wait} s.",
            "rate_limited",
            wait,
        )
    # The ledger knows exactly what is waiting or running: no counter to drift or leak.
    pending = PromptRequest.objects.filter(owner_id=user_id).pending().count()
    if pending >= settings.BARISTA_USER_MAX_PENDING:
        wait = estimate_wait(pending)
        raise Rejection(
            f"You already have {pending} prompts waiting or being answered, the most allowed. "
            f"Try again in {wait} s.",
            "too_many_pending",
            wait,
        )


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
