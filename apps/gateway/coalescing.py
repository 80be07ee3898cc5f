"""Request coalescing: an identical request already in flight is followed, not repeated.

Per cache key, Redis holds the id of the request in flight (the *leader*) and, per leader,
the list of its *followers*, oldest first. Scripts make each step atomic:

* ``join`` — after a new request's row is committed: if a leader is in flight, become its
  follower (no job is enqueued); otherwise become the leader.
* ``close`` — when the leader's answer is recorded: no one may join any more, and the
  followers present are returned, to be answered with the same text in the same
  transaction as the leader.
* ``hand_over`` — when the leader fails, or is cancelled before it ran: the oldest
  follower becomes the leader (and gets a job); the others follow it. Errors are never
  handed to followers.
* ``leave`` — a follower cancelled.

The worker running a leader sends each follower the text so far when it first sees it,
then every new batch (``Fanout``), so a late joiner catches up from the first token.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from apps.core.scripts import LuaScript
from apps.gateway.cache import redis_key

INFLIGHT = "barista:inflight:"
FOLLOWERS = "barista:followers:"

# KEYS[2] is the cached answer: a leader stores it before it closes the key, so a request
# joining finds either a leader in flight or the answer — never neither.
_JOIN = LuaScript("""
local leader = redis.call('GET', KEYS[1])
if leader and leader ~= ARGV[1] then
  local followers = ARGV[3] .. leader
  redis.call('RPUSH', followers, ARGV[1])
  redis.call('EXPIRE', followers, ARGV[2])
  return leader
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'cached' end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
""")
CACHED = "cached"

# Stores the answer (when ARGV[2] is not empty) *before* it closes the key, in one step:
# a request arriving after finds the answer; one arriving before is among the followers.
_CLOSE = LuaScript("""
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3]) end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
local followers = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return followers
""")

_HAND_OVER = LuaScript("""
local new = redis.call('LPOP', KEYS[2])
if not new then
  if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return false
end
redis.call('SET', KEYS[1], new, 'EX', ARGV[2])
local rest = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
if #rest > 0 then
  redis.call('RPUSH', ARGV[3] .. new, unpack(rest))
  redis.call('EXPIRE', ARGV[3] .. new, ARGV[2])
end
return {new, unpack(rest)}
""")


def _ttl() -> int:
    # As long as a job may run, and then some: a dead leader's key does not linger.
    return settings.BARISTA_JOB_TIMEOUT * (settings.BARISTA_JOB_RETRIES + 1) + 60


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def join(connection: Any, *, cache_key: str, request_id: str) -> str | None:
    """Follow the request in flight for this key (returns its id); or ``CACHED`` when its
    answer was stored meanwhile; or lead (None)."""
    leader = _JOIN(
        connection,
        [INFLIGHT + cache_key, redis_key(cache_key)],
        [request_id, _ttl(), FOLLOWERS],
    )
    return _text(leader) if leader else None


def hand_over(connection: Any, *, cache_key: str, leader_id: str) -> list[str]:
    """The oldest follower leads now; returns [new leader, *its followers], or []."""
    reply = _HAND_OVER(
        connection, [INFLIGHT + cache_key, FOLLOWERS + leader_id], [leader_id, _ttl(), FOLLOWERS]
    )
    return [_text(item) for item in reply] if reply else []


def leave(connection: Any, *, leader_id: str, request_id: str) -> None:
    connection.lrem(FOLLOWERS + leader_id, 0, request_id)


def has_followers(connection: Any, *, leader_id: str) -> bool:
    return bool(connection.llen(FOLLOWERS + leader_id))


async def followers(connection: Any, *, leader_id: str) -> list[str]:
    return [_text(item) for item in await connection.lrange(FOLLOWERS + leader_id, 0, -1)]


async def close(
    connection: Any, *, cache_key: str, leader_id: str, answer: bytes = b"", ttl: int = 0
) -> list[str]:
    """Store the answer (if given), then let no one join; returns the followers to answer
    with the leader."""
    reply = await _CLOSE.run(
        connection,
        [INFLIGHT + cache_key, FOLLOWERS + leader_id, redis_key(cache_key)],
        [leader_id, answer, ttl],
    )
    return [_text(item) for item in reply]
