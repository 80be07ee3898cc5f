"""Snapshots for the live metrics page: one point per second from the metrics store, plus
the gauges read at that moment (queue depth, in flight per backend, workers)."""

from __future__ import annotations

import time
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from apps.backends import live
from apps.backends.models import Backend
from apps.gateway import cache, metrics

HISTORY_SECONDS = 15 * 60


def percentile(counts: dict[str, float], kind: str, q: float) -> float | None:
    """The q-quantile of a histogram's per-bucket counts, linearly within its bucket."""
    per_bucket = []
    for upper in metrics.BUCKETS:
        label = "+Inf" if upper == float("inf") else f"{upper:g}"
        per_bucket.append((upper, counts.get(f"{kind}|{label}", 0.0)))
    total = sum(count for _, count in per_bucket)
    if not total:
        return None
    wanted, seen, lower = q * total, 0.0, 0.0
    for upper, count in per_bucket:
        if count and seen + count >= wanted:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (wanted - seen) / count
        seen += count
        lower = upper if upper != float("inf") else lower
    return lower


def point(second: int, raw: dict[Any, Any]) -> dict[str, Any]:
    counts = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
    requests = {outcome: counts.get(f"req|{outcome}", 0.0) for outcome in metrics.OUTCOMES}
    return {
        "t": second,
        "requests": requests,
        "latency": {f"p{q}": percentile(counts, "lat", q / 100) for q in (50, 95, 99)},
        "ttft": {f"p{q}": percentile(counts, "ttft", q / 100) for q in (50, 95, 99)},
        "tokens_out": counts.get("tokens_out", 0.0),
    }


async def history(seconds: int = HISTORY_SECONDS) -> list[dict[str, Any]]:
    """The last ``seconds`` complete seconds, oldest first (one pipelined round trip)."""
    now = int(time.time())
    span = range(now - seconds, now)
    async with live.client().pipeline(transaction=False) as pipe:
        for second in span:
            pipe.hgetall(metrics.SECOND_KEY.format(second=second))
        replies = await pipe.execute()
    return [point(second, raw) for second, raw in zip(span, replies, strict=True)]


def _backends() -> list[tuple[int, str]]:
    return list(
        Backend.objects.exclude(state=Backend.State.DISABLED)
        .order_by("name")
        .values_list("pk", "name")
    )


async def gauges() -> dict[str, Any]:
    redis = live.client()
    backends = await database_sync_to_async(_backends)()
    states = await live.snapshot([pk for pk, _ in backends])
    async with redis.pipeline(transaction=False) as pipe:
        for name in settings.BARISTA_QUEUES:
            pipe.llen(f"rq:queue:{name}")
        pipe.scard("rq:workers")
        pipe.hgetall(cache.COUNTERS_KEY)
        *depths, workers, counters = await pipe.execute()
    counted = {k.decode(): float(v) for k, v in counters.items()}
    asked = sum(counted.get(name, 0.0) for name in ("hit", "miss", "coalesced"))
    saved = counted.get("hit", 0.0) + counted.get("coalesced", 0.0)
    return {
        "queues": dict(zip(settings.BARISTA_QUEUES, depths, strict=True)),
        "inflight": {name: states[pk].in_flight for pk, name in backends},
        "circuits": {name: states[pk].circuit for pk, name in backends},
        "workers": workers,
        "cache_ratio": saved / asked if asked else None,
    }


async def snapshot() -> dict[str, Any]:
    """The last complete second, and the gauges now."""
    second = int(time.time()) - 1
    raw = await live.client().hgetall(metrics.SECOND_KEY.format(second=second))
    return {"point": point(second, raw), "gauges": await gauges()}
