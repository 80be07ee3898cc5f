"""Snapshots for the live metrics page: one point per second from the metrics store, plus
the gauges read at that moment (queue depth, in flight per backend, workers).

A second's counts keep arriving for a moment after it ends (each process adds its own at
its next flush), so each snapshot carries the last few seconds again and the page replaces
the points it has: a refusal counted late is drawn, not lost to a point read too early."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from rq.worker_registration import REDIS_WORKER_KEYS

from apps.backends import live
from apps.backends.selectors import backend_names_active
from apps.core import clients
from apps.core.loop import PerLoop
from apps.gateway import fairness, metrics
from apps.gateway.queues import queues

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
    gauges: dict[str, dict[str, float]] = {"depth": {}, "oldest": {}, "inflight": {}}
    backend_seconds: dict[str, float] = {}
    backend_ttft: dict[str, float] = {}
    answered: dict[str, float] = {}
    refused: dict[str, float] = {}
    client_errors: dict[str, float] = {}
    for field, value in counts.items():
        kind, _, label = field.partition("|")
        if kind in gauges:
            gauges[kind][label] = value
        elif kind == "rej":
            refused[label] = value
        elif kind == "cerr":
            door, _, what = label.partition("|")
            client_errors[f"{door} {what}"] = value
        elif kind == "bsec":
            backend_seconds[label] = value
        elif kind == "bttft":
            backend_ttft[label] = value
        elif kind == "bn":
            answered[label] = value
    return {
        "t": second,
        "requests": requests,
        "latency": {f"p{q}": percentile(counts, "lat", q / 100) for q in (50, 95, 99)},
        "ttft": {f"p{q}": percentile(counts, "ttft", q / 100) for q in (50, 95, 99)},
        "tokens_out": counts.get("tokens_out", 0.0),
        # Refusals by reason; the client's errors by door and status (or code).
        "refused": refused,
        "client_errors": client_errors,
        # Gauges a worker wrote for this second (absent when no worker ran then).
        "queues": gauges["depth"] or None,
        "oldest": gauges["oldest"] or None,
        "inflight": gauges["inflight"] or None,
        "workers": counts.get("workers"),
        # Mean time per answered backend call, and to its first token.
        "backend_latency": {name: backend_seconds[name] / n for name, n in answered.items()},
        "backend_ttft": {
            name: backend_ttft[name] / n for name, n in answered.items() if name in backend_ttft
        },
    }


async def history(seconds: int = HISTORY_SECONDS) -> list[dict[str, Any]]:
    """The last ``seconds`` complete seconds, oldest first (one pipelined round trip)."""
    now = int(time.time())
    span = range(now - seconds, now)
    async with clients.redis().pipeline(transaction=False) as pipe:
        for second in span:
            pipe.hgetall(metrics.SECOND_KEY.format(second=second))
        replies = await pipe.execute()
    return [point(second, raw) for second, raw in zip(span, replies, strict=True)]


async def gauges() -> dict[str, Any]:
    backends = await database_sync_to_async(backend_names_active)()
    states = await live.snapshot([pk for pk, _ in backends])
    async with clients.queue_redis().pipeline(transaction=False) as pipe:
        for rq_queue in queues():
            fairness.count_waiting(pipe, rq_queue)
        pipe.scard(REDIS_WORKER_KEYS)
        *lanes, workers = await pipe.execute()
    depths = fairness.waiting_counts(lanes)
    return {
        "queues": dict(zip(settings.BARISTA_QUEUES, depths, strict=True)),
        "inflight": {name: states[pk].in_flight for pk, name in backends},
        "circuits": {name: states[pk].circuit for pk, name in backends},
        "workers": workers,
    }


_latest: tuple[int, dict[str, Any]] | None = None
_lock = PerLoop(asyncio.Lock)  # a lock belongs to one loop; a process serves from one


async def snapshot() -> dict[str, Any]:
    """The last ``SETTLE_SECONDS`` complete seconds (oldest first; the page replaces the
    points it has), and the gauges now. Read once per second per process, however many
    metrics pages this process serves: a hundred open pages cost the same Redis round
    trips as one."""
    global _latest
    second = int(time.time()) - 1
    if _latest is not None and _latest[0] == second:
        return _latest[1]
    async with _lock():
        if _latest is not None and _latest[0] == second:
            return _latest[1]
        span = range(second - metrics.SETTLE_SECONDS + 1, second + 1)
        async with clients.redis().pipeline(transaction=False) as pipe:
            for each in span:
                pipe.hgetall(metrics.SECOND_KEY.format(second=each))
            replies = await pipe.execute()
        taken = {
            "points": [point(each, raw) for each, raw in zip(span, replies, strict=True)],
            "gauges": await gauges(),
        }
        _latest = (second, taken)
        return taken


_frame: tuple[int, str] | None = None


async def snapshot_frame() -> str:
    """The snapshot as the websocket frame every page is sent, encoded once per second."""
    global _frame
    taken = await snapshot()
    second = taken["points"][-1]["t"]
    if _frame is None or _frame[0] != second:
        _frame = (second, json.dumps({"type": "snapshot", **taken}))
    return _frame[1]
