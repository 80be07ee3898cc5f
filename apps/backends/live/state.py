"""A backend's live state as the balancer and the console read it, in one round trip:
leases in flight, EWMA, circuit, and the last active health check
(``apps.backends.health``), which is stored here for a few check intervals, so a stale
reading simply disappears."""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis import Redis

from apps.backends.live.keys import health_key, lease_key, stats_key
from apps.core import clients
from apps.core.scripts import LuaScript

_SNAPSHOT = LuaScript("""
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
""")
FIELDS = 11  # values per backend in a snapshot reply


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
    reply = await _SNAPSHOT.run(clients.live_redis(), _keys(backend_ids))
    return _parse_snapshot(backend_ids, reply)


def snapshot_sync(connection: Redis, backend_ids: list[int]) -> dict[int, BackendLive]:
    """The same, for synchronous code (the console)."""
    if not backend_ids:
        return {}
    return _parse_snapshot(backend_ids, _SNAPSHOT(connection, _keys(backend_ids)))


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
    async with clients.live_redis().pipeline(transaction=False) as pipe:
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
