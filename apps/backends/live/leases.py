"""In-flight leases: a sorted set per backend of lease ids scored by expiry.

A prompt takes a lease before calling the backend (atomically, only below the backend's
cap), renews it while the call runs, and gives it back after. A worker that dies stops
renewing, so its leases expire: a dead worker never leaves a backend looking busy.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from apps.backends.live.keys import lease_key
from apps.core import clients
from apps.core.scripts import LuaScript

_ACQUIRE = LuaScript("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
  return 1
end
return 0
""")

_RENEW = LuaScript("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
return redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[2])
""")


async def try_acquire(backend_id: int, *, cap: int, ttl: float) -> str | None:
    """Take a lease on the backend if fewer than ``cap`` are held; returns its id."""
    lease = uuid.uuid4().hex
    got = await _ACQUIRE.run(clients.live_redis(), [lease_key(backend_id)], [cap, ttl, lease])
    return lease if got else None


# Prompts of this process waiting for a slot, per backend, oldest first. Giving a lease
# back wakes the oldest waiter for that backend at once; waiters also poll (slowly) for
# slots freed by other processes.
_waiters: dict[int, collections.deque[asyncio.Future[None]]] = collections.defaultdict(
    collections.deque
)


async def release(backend_id: int, lease: str) -> None:
    await clients.live_redis().zrem(lease_key(backend_id), lease)
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


@asynccontextmanager
async def held(backend_id: int, lease: str, *, ttl: float) -> AsyncIterator[None]:
    """Keep the lease renewed while the block runs; give it back at the end, always."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            await _RENEW.run(clients.live_redis(), [lease_key(backend_id)], [ttl, lease])

    renewer = asyncio.create_task(renew())
    try:
        yield
    finally:
        renewer.cancel()
        await asyncio.shield(release(backend_id, lease))
