"""Live backend state in Redis, shared by every worker.

* **In-flight leases** — a sorted set per backend of lease ids scored by expiry. A prompt
  takes a lease before calling the backend (atomically, only below the backend's cap),
  renews it while the call runs, and gives it back after. A worker that dies stops
  renewing, so its leases expire: a dead worker never leaves a backend looking busy.
* **Peak-EWMA of time to first token** — jumps up at once on a slow answer, decays back
  over ``TAU`` seconds as fast answers come in (Finagle's peak EWMA).
* **Circuit breaker** — consecutive failures, failures in a window, an open circuit's
  cool-down (doubling with each opening) and any Retry-After the backend sent.
* **Health** — the last active check (``apps.backends.health``): up or down, how long it
  took, and the backend's own queue (vLLM's ``num_requests_waiting``, KV-cache use) when
  it publishes them. Kept for a few check intervals, so a stale reading simply disappears.

Scripts read Redis's own clock, so workers on different hosts agree on expiry.
"""

from __future__ import annotations

import asyncio
import collections
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from django.conf import settings
from redis import Redis

from apps.core import clients

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
for i = 1, #KEYS, 3 do
  out[#out + 1] = redis.call('ZCOUNT', KEYS[i], now, '+inf')
  local s = redis.call('HMGET', KEYS[i + 1], 'ttft', 'failures', 'open_until', 'not_before')
  out[#out + 1] = s[1] or false
  out[#out + 1] = tonumber(s[2] or '0')
  -- seconds until the circuit may be probed / until a Retry-After ends (0 = now)
  out[#out + 1] = tostring(math.max(0, tonumber(s[3] or '0') - now))
  out[#out + 1] = tostring(math.max(0, tonumber(s[4] or '0') - now))
  out[#out + 1] = redis.call('HGET', KEYS[i + 1], 'circuit') or 'closed'
  local h = redis.call('HMGET', KEYS[i + 2], 'up', 'waiting', 'kv_cache', 'ms', 'error')
  out[#out + 1] = h[1] or false
  out[#out + 1] = h[2] or '0'
  out[#out + 1] = h[3] or '0'
  out[#out + 1] = h[4] or false
  out[#out + 1] = h[5] or false
end
return out
"""
FIELDS = 11  # values per backend in a snapshot reply

# Outcome of one call. Opens the circuit after ARGV[2] consecutive failures, or when at
# least ARGV[4] calls in the current window (ARGV[3] s) failed at a rate of ARGV[5] or
# more; a failed probe re-opens it with a cool-down that doubles with each opening
# (ARGV[6] s base, ARGV[7] s cap); a success closes it. ARGV[8] is a Retry-After (s).
_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local key = KEYS[1]
local ok = ARGV[1] == '1'
if ARGV[1] == '2' then
  -- "Too many requests": the backend is well, only full. Honour Retry-After; no failure.
  local retry_after = math.max(tonumber(ARGV[8]), 0.5)
  redis.call('HSET', key, 'not_before', tostring(now + retry_after))
  return redis.call('HGET', key, 'circuit') or 'closed'
end
local s = redis.call('HMGET', key, 'failures', 'circuit', 'window_at', 'calls', 'fails', 'openings')
local failures, circuit = tonumber(s[1] or '0'), s[2] or 'closed'
local window_at, calls, fails = tonumber(s[3] or '0'), tonumber(s[4] or '0'), tonumber(s[5] or '0')
local openings = tonumber(s[6] or '0')
if now - window_at > tonumber(ARGV[3]) then window_at, calls, fails = now, 0, 0 end
calls = calls + 1
if ok then
  failures = 0
  if circuit ~= 'closed' then circuit, openings = 'closed', math.max(0, openings - 1) end
else
  failures, fails = failures + 1, fails + 1
  local rate_bad = calls >= tonumber(ARGV[4]) and fails / calls >= tonumber(ARGV[5])
  if circuit == 'open' or failures >= tonumber(ARGV[2]) or rate_bad then
    if circuit ~= 'open' or now >= tonumber(redis.call('HGET', key, 'open_until') or '0') then
      openings = openings + 1
      local cool = math.min(tonumber(ARGV[7]), tonumber(ARGV[6]) * 2 ^ (openings - 1))
      redis.call('HSET', key, 'open_until', tostring(now + cool))
    end
    circuit = 'open'
  end
  local retry_after = tonumber(ARGV[8])
  if retry_after > 0 then redis.call('HSET', key, 'not_before', tostring(now + retry_after)) end
end
redis.call('HSET', key, 'failures', failures, 'circuit', circuit, 'window_at', tostring(window_at),
  'calls', calls, 'fails', fails, 'openings', openings)
redis.call('EXPIRE', key, 86400)
return circuit
"""


def lease_key(backend_id: int) -> str:
    return f"barista:backend:{backend_id}:leases"


def stats_key(backend_id: int) -> str:
    return f"barista:backend:{backend_id}:stats"


def health_key(backend_id: int) -> str:
    return f"barista:backend:{backend_id}:health"


@dataclass(frozen=True, slots=True)
class BackendLive:
    in_flight: int
    ttft_ewma: float | None
    failures: int = 0  # consecutive
    probe_in: float = 0.0  # seconds until an open circuit may be probed
    retry_after: float = 0.0  # seconds left of a Retry-After the backend sent
    circuit: str = "closed"
    up: bool | None = None  # last active health check; None = not checked lately
    waiting: int = 0  # the backend's own queue (vLLM num_requests_waiting)
    kv_cache: float = 0.0  # share of the backend's KV cache in use (vLLM), 0..1
    check_ms: float | None = None
    check_error: str = ""

    @property
    def usable(self) -> bool:
        """Closed, or open past its cool-down (then one probe at a time: see rank)."""
        return self.retry_after <= 0 and (self.circuit != "open" or self.probe_in <= 0)


def _keys(backend_ids: list[int]) -> list[str]:
    return [key for i in backend_ids for key in (lease_key(i), stats_key(i), health_key(i))]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_snapshot(backend_ids: list[int], reply: list[object]) -> dict[int, BackendLive]:
    result = {}
    for index, backend_id in enumerate(backend_ids):
        (in_flight, ewma, failures, probe_in, retry_after, circuit, up, waiting, kv, ms, error) = (
            reply[FIELDS * index : FIELDS * index + FIELDS]
        )
        result[backend_id] = BackendLive(
            int(_text(in_flight)),
            float(_text(ewma)) if ewma else None,
            int(_text(failures)),
            float(_text(probe_in)),
            float(_text(retry_after)),
            _text(circuit),
            up=None if not up else _text(up) == "1",
            waiting=int(float(_text(waiting))),
            kv_cache=float(_text(kv)),
            check_ms=float(_text(ms)) if ms else None,
            check_error=_text(error) if error else "",
        )
    return result


async def snapshot(backend_ids: list[int]) -> dict[int, BackendLive]:
    """Leases, EWMA, circuit and health of these backends, in one round trip."""
    if not backend_ids:
        return {}
    keys = _keys(backend_ids)
    return _parse_snapshot(backend_ids, await clients.redis().eval(_SNAPSHOT, len(keys), *keys))


def snapshot_sync(connection: Redis, backend_ids: list[int]) -> dict[int, BackendLive]:
    """The same, for synchronous code (the console)."""
    if not backend_ids:
        return {}
    keys = _keys(backend_ids)
    return _parse_snapshot(backend_ids, connection.eval(_SNAPSHOT, len(keys), *keys))


async def record_health(
    backend_id: int,
    *,
    up: bool,
    ms: float,
    error: str = "",
    waiting: int = 0,
    kv_cache: float = 0.0,
    keep: float,
) -> None:
    """Store one active health check's result for ``keep`` seconds."""
    key = health_key(backend_id)
    async with clients.redis().pipeline(transaction=False) as pipe:
        pipe.delete(key)
        pipe.hset(
            key,
            mapping={
                "up": "1" if up else "0",
                "ms": f"{ms:.1f}",
                "error": error,
                "waiting": waiting,
                "kv_cache": kv_cache,
            },
        )
        pipe.expire(key, max(1, math.ceil(keep)))
        await pipe.execute()


async def record(
    backend_id: int, *, ok: bool, retry_after: float = 0.0, overloaded: bool = False
) -> str:
    """Feed one call's outcome to the backend's circuit breaker; returns its state. An
    ``overloaded`` answer (HTTP 429) only keeps the backend out for its Retry-After."""
    state = await clients.redis().eval(
        _RECORD,
        1,
        stats_key(backend_id),
        "2" if overloaded else "1" if ok else "0",
        settings.BARISTA_CIRCUIT_FAILURES,
        settings.BARISTA_CIRCUIT_WINDOW,
        settings.BARISTA_CIRCUIT_MIN_CALLS,
        settings.BARISTA_CIRCUIT_FAILURE_RATE,
        settings.BARISTA_CIRCUIT_COOLDOWN,
        settings.BARISTA_CIRCUIT_COOLDOWN_MAX,
        retry_after,
    )
    return state.decode() if isinstance(state, bytes) else str(state)


async def try_acquire(backend_id: int, *, cap: int, ttl: float) -> str | None:
    """Take a lease on the backend if fewer than ``cap`` are held; returns its id."""
    lease = uuid.uuid4().hex
    got = await clients.redis().eval(_ACQUIRE, 1, lease_key(backend_id), cap, ttl, lease)
    return lease if got else None


# Prompts of this process waiting for a slot, per backend, oldest first. Giving a lease
# back wakes the oldest waiter for that backend at once; waiters also poll (slowly) for
# slots freed by other processes.
_waiters: dict[int, collections.deque[asyncio.Future[None]]] = collections.defaultdict(
    collections.deque
)


async def release(backend_id: int, lease: str) -> None:
    await clients.redis().zrem(lease_key(backend_id), lease)
    waiters = _waiters.get(backend_id)
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            break


async def wait_for_slot(backend_ids: list[int], up_to: float) -> None:
    """Until a lease on one of these backends is given back here, or ``up_to`` s."""
    waiter = asyncio.get_running_loop().create_future()
    for backend_id in backend_ids:
        _waiters[backend_id].append(waiter)
    try:
        await asyncio.wait_for(waiter, up_to)
    except TimeoutError:
        pass
    finally:
        for backend_id in backend_ids:
            waiters = _waiters.get(backend_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)


async def observe_ttft(backend_id: int, seconds: float) -> float:
    value = await clients.redis().eval(_OBSERVE, 1, stats_key(backend_id), seconds, TAU)
    return float(value)


@asynccontextmanager
async def held(backend_id: int, lease: str, *, ttl: float) -> AsyncIterator[None]:
    """Keep the lease renewed while the block runs; give it back at the end, always."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            await clients.redis().eval(_RENEW, 1, lease_key(backend_id), ttl, lease)

    renewer = asyncio.create_task(renew())
    try:
        yield
    finally:
        renewer.cancel()
        await asyncio.shield(release(backend_id, lease))
