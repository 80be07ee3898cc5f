"""Live backend state in Redis, shared by every worker.

* **In-flight leases** — a sorted set per backend of lease ids scored by expiry. A prompt
  takes a lease before calling the backend (atomically, only below the backend's cap),
  renews it while the call runs, and gives it back after. A worker that dies stops
  renewing, so its leases expire: a dead worker never leaves a backend looking busy.
* **Peak-EWMA of time to first token** — jumps up at once on a slow answer, decays back
  over ``TAU`` seconds as fast answers come in (Finagle's peak EWMA).

Scripts read Redis's own clock, so workers on different hosts agree on expiry.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis
from django.conf import settings

TAU = 10.0  # seconds for the EWMA to forget

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
  return 1
end
return 0
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
return redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[2])
"""

_OBSERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local sample = tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'ttft'))
local at = tonumber(redis.call('HGET', KEYS[1], 'at'))
local value = sample
if current ~= nil and sample < current then
  local w = math.exp(-(now - at) / tonumber(ARGV[2]))
  value = current * w + sample * (1 - w)
end
redis.call('HSET', KEYS[1], 'ttft', tostring(value), 'at', tostring(now))
return tostring(value)
"""

_SNAPSHOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = redis.call('ZCOUNT', KEYS[i], now, '+inf')
  out[#out + 1] = redis.call('HGET', KEYS[i + 1], 'ttft') or false
end
return out
"""


def lease_key(backend_id: int) -> str:
    return f"barista:backend:{backend_id}:leases"


def stats_key(backend_id: int) -> str:
    return f"barista:backend:{backend_id}:stats"


@dataclass(frozen=True, slots=True)
class BackendLive:
    in_flight: int
    ttft_ewma: float | None


_clients: dict[asyncio.AbstractEventLoop, aioredis.Redis] = {}


def client() -> aioredis.Redis:
    """An asyncio Redis client for the running loop (clients belong to one loop)."""
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None:
        _clients.clear()
        # A blocking pool: with hundreds of prompts in flight, an operation waits for a free
        # connection instead of failing (redis-py's default pool raises past 100).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=settings.BARISTA_LIVE_REDIS_CONNECTIONS, timeout=30
        )
        found = _clients[loop] = aioredis.Redis(connection_pool=pool)
    return found


async def snapshot(backend_ids: list[int]) -> dict[int, BackendLive]:
    """In-flight counts and TTFT EWMAs for these backends, in one round trip."""
    if not backend_ids:
        return {}
    keys = [key for i in backend_ids for key in (lease_key(i), stats_key(i))]
    reply = await client().eval(_SNAPSHOT, len(keys), *keys)
    result = {}
    for index, backend_id in enumerate(backend_ids):
        ewma = reply[2 * index + 1]
        result[backend_id] = BackendLive(int(reply[2 * index]), float(ewma) if ewma else None)
    return result


async def try_acquire(backend_id: int, *, cap: int, ttl: float) -> str | None:
    """Take a lease on the backend if fewer than ``cap`` are held; returns its id."""
    lease = uuid.uuid4().hex
    got = await client().eval(_ACQUIRE, 1, lease_key(backend_id), cap, ttl, lease)
    return lease if got else None


async def release(backend_id: int, lease: str) -> None:
    await client().zrem(lease_key(backend_id), lease)


async def observe_ttft(backend_id: int, seconds: float) -> float:
    value = await client().eval(_OBSERVE, 1, stats_key(backend_id), seconds, TAU)
    return float(value)


@asynccontextmanager
async def held(backend_id: int, lease: str, *, ttl: float) -> AsyncIterator[None]:
    """Keep the lease renewed while the block runs; give it back at the end, always."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            await client().eval(_RENEW, 1, lease_key(backend_id), ttl, lease)

    renewer = asyncio.create_task(renew())
    try:
        yield
    finally:
        renewer.cancel()
        await asyncio.shield(release(backend_id, lease))
