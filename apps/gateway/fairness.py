"""Fair queueing: within each priority queue, people take turns.

A prompt waits in one of two lanes of its queue:

* the **fair lane** — a sorted set per queue, where a new prompt goes. Its score is a
  *start tag* (start-time fair queueing, the virtual-clock form of deficit round robin
  with one prompt as the quantum): ``max(virtual time, the person's last tag) + 1``,
  where the virtual time is the tag of the last prompt a worker took. So each person's
  prompts are spaced one turn apart, and a person who has sent nothing for a while starts
  at the current turn — not ahead of everyone for having been quiet, not behind someone
  else's thousand. Ties (one turn, several people) go in order of arrival.

  Within a person, their *sources* — each API key, and the chat page — take turns the
  same way: a person's turns are theirs, and which of their prompts runs in each is the
  first by their sources' tags (one script swaps the two when it is another of theirs).
  So a program's 1,000 prompts on one key do not hold up its owner's prompt from the chat
  page or another key, and a person cannot win more turns by making more keys.
* the **front lane** — RQ's own list for the queue, for prompts that already waited
  their turn: RQ's re-runs of a job whose worker died, and a worker's give-back (on
  shutdown, or when Redis failed mid-answer). Workers take from it first. (Staff's
  retries and the reconciler's re-runs get a fresh job in the owner's next turn.)

What a person sees: a prompt sent while someone else has 1,000 waiting is placed behind
at most one prompt of each other person with prompts waiting (``position`` counts
exactly what is ahead — the turn the prompt will run in, not the one it holds — so the
figure shown is true under this ordering). Coalesced followers and cache hits never
enter a queue.

The worker takes prompts in queue priority order, front lane first (``take``, one
script per queue); an idle worker blocks on the fair lanes (``wait_pop``). The keys: the
lane ``barista:fair:{queue}``, the virtual time ``barista:fair:{queue}:clock``, how many
of each person's prompts wait (``...:waiting``, with each waiting job's person in
``...:owners``), and while something of theirs waits: their jobs by their sources' tags
(``...:order:{person}``), by their turns (``...:mine:{person}``), and a hash of their last
tag, their sources' clock and last tags (``...:sources:{person}``) — a person with nothing
waiting has none of these, so what they sent or cancelled before does not count — and an
arrival counter for ties. Each script reads and writes a person's tags in one command
each way, and a person's last prompt taken drops their keys without first emptying them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis import Redis
from rq import Queue

from apps.core.scripts import LuaScript

LANE = "barista:fair:{queue}"  # the prefix of the queue's other keys (see above)
CLOCK = "barista:fair:{queue}:clock"
WAITING = "barista:fair:{queue}:waiting"  # person -> prompts waiting in the lane
ARRIVALS = "barista:fair:arrivals"
LAST_TTL = 86400  # only a safety net: a person's keys go when nothing of theirs waits
# Ties within a turn are ordered by arrival: the fraction of a score below 1.
ARRIVAL_SLOTS = 1 << 20

# The per-person keys are built in the scripts from their prefixes: these scripts run on
# one Redis, never a cluster, as RQ's queues do. ARGV[1] of every script is the queue's
# key prefix "barista:fair:{queue}".
_COMMON = """
local prefix = ARGV[1]
local lane, owners, waiting = prefix, prefix .. ':owners', prefix .. ':waiting'
-- A person's keys while something of theirs waits: their jobs by their sources' tags, by
-- their turns, and a hash of their last tag ('last'), their sources' clock ('clock') and
-- each source's last tag ('s:' .. source).
local function keys_of(person)
  return prefix .. ':order:' .. person, prefix .. ':mine:' .. person,
         prefix .. ':sources:' .. person
end

-- A job leaves the lane (taken or cancelled): its person has one fewer waiting, and with
-- none left their keys go — a person with nothing waiting starts at the current turn,
-- whatever they sent or cancelled before. Returns whether they still have some waiting.
local function forget(id, person)
  person = person or redis.call('HGET', owners, id)
  if not person then return false end
  redis.call('HDEL', owners, id)
  local order, mine, sources = keys_of(person)
  if redis.call('HINCRBY', waiting, person, -1) <= 0 then
    redis.call('HDEL', waiting, person)
    redis.call('DEL', order, mine, sources)
    return false
  end
  redis.call('ZREM', order, id)
  redis.call('ZREM', mine, id)
  return true
end

-- The job that runs in the turn ``id`` holds (score ``score``, already out of the lane):
-- its person's first by their sources' turns. When that is another job of theirs, the
-- two swap turns: ``id`` goes back into the lane in the other's later turn.
local function runs_in_turn_of(id, score)
  local person = redis.call('HGET', owners, id)
  if not person then return id end
  local order, mine, sources = keys_of(person)
  local first = redis.call('ZRANGE', order, 0, 0, 'WITHSCORES')
  if #first == 0 then  -- their keys expired (a safety net): keep the counts right
    forget(id, person)
    return id
  end
  local chosen = first[1]
  if chosen ~= id then
    local later = redis.call('ZSCORE', lane, chosen)
    if later then
      redis.call('ZREM', lane, chosen)
      redis.call('ZADD', lane, later, id)
      redis.call('ZADD', mine, later, id)
    else
      chosen = id
    end
  end
  if forget(chosen, person) then  -- (else their keys are gone, the clock with them)
    redis.call('HSET', sources, 'clock', math.floor(tonumber(first[2])))
  end
  return chosen
end

local function advance_clock(score)
  local tag = math.floor(tonumber(score))
  if tag > tonumber(redis.call('GET', lane .. ':clock') or '0') then
    redis.call('SET', lane .. ':clock', tag)
  end
end

-- The job that runs in the turn held by the lane's member ``id`` (still in the lane).
local function effective(id)
  local person = redis.call('HGET', owners, id)
  if not person then return id end
  local order, mine = keys_of(person)
  local rank = redis.call('ZRANK', mine, id)
  if not rank then return id end
  local at = redis.call('ZRANGE', order, rank, rank)
  return at[1] or id
end
"""

# ARGV: prefix, job id, person, source, ttl, arrival slots. KEYS: the clock and the
# arrival counter (declared; the rest are built from the prefix).
_PUSH = LuaScript(
    _COMMON
    + """
local id, person, source, ttl = ARGV[2], ARGV[3], 's:' .. ARGV[4], ARGV[5]
local order, mine, sources = keys_of(person)
local clock = tonumber(redis.call('GET', KEYS[1]) or '0')
local own = redis.call('HMGET', sources, 'last', 'clock', source)
local tag = math.max(clock, tonumber(own[1] or '0')) + 1
local slots = tonumber(ARGV[6])
local arrival = (redis.call('INCR', KEYS[2]) % slots) / slots
if redis.call('ZADD', lane, 'NX', tag + arrival, id) == 0 then
  return 0  -- already waiting in this lane
end
redis.call('HSET', owners, id, person)
redis.call('HINCRBY', waiting, person, 1)
redis.call('ZADD', mine, tag + arrival, id)
-- Within the person, their sources (API keys, the chat page) take turns the same way.
local own_tag = math.max(tonumber(own[2] or '0'), tonumber(own[3] or '0')) + 1
redis.call('HSET', sources, 'last', tag, source, own_tag)
redis.call('ZADD', order, own_tag + arrival, id)
redis.call('EXPIRE', order, ttl)
redis.call('EXPIRE', mine, ttl)
redis.call('EXPIRE', sources, ttl)
return tag
"""
)

# Front lane first (KEYS[1], RQ's list), then the fair lane in turn; the clock moves to
# the last turn taken. ARGV: prefix, count.
_TAKE = LuaScript(
    _COMMON
    + """
local count = tonumber(ARGV[2])
local ids = redis.call('LPOP', KEYS[1], count)
if not ids then ids = {} end
while #ids < count do
  local popped = redis.call('ZPOPMIN', lane)
  if #popped == 0 then break end
  advance_clock(popped[2])
  ids[#ids + 1] = runs_in_turn_of(popped[1], popped[2])
end
return ids
"""
)

# After a blocking pop took ARGV[2] with score ARGV[3]: returns the job that runs.
_ADVANCE = LuaScript(
    _COMMON
    + """
advance_clock(ARGV[3])
return runs_in_turn_of(ARGV[2], ARGV[3])
"""
)

_REMOVE = LuaScript(
    _COMMON
    + """
redis.call('LREM', KEYS[1], 0, ARGV[2])
-- Out of the lane but still owned: a blocking pop took it and its script has not run
-- yet. Forgotten now, so that script hands it on as it is (the worker finds it
-- cancelled) instead of putting it back in someone's turn.
if redis.call('ZREM', lane, ARGV[2]) == 1 or redis.call('HEXISTS', owners, ARGV[2]) == 1 then
  forget(ARGV[2])
end
"""
)

# {front lane length, place in it or false, fair lane length, place in it or false}: a
# job's place in the fair lane is that of the turn it will run in — its person's turns in
# order, taken by their jobs in their sources' order.
_PLACE = LuaScript(
    _COMMON
    + """
local id = ARGV[2]
local front, fair = redis.call('LLEN', KEYS[1]), redis.call('ZCARD', lane)
local in_front = redis.call('LPOS', KEYS[1], id)
if in_front then return {front, in_front, fair, false} end
local person = redis.call('HGET', owners, id)
if not person then return {front, false, fair, false} end
local order, mine = keys_of(person)
local rank = redis.call('ZRANK', order, id)
if not rank then return {front, false, fair, false} end
local turn = redis.call('ZRANGE', mine, rank, rank, 'WITHSCORES')
if #turn == 0 then return {front, false, fair, false} end
return {front, false, fair, redis.call('ZCOUNT', lane, '-inf', '(' .. turn[2])}
"""
)

# The first ARGV[2] jobs of the fair lane, in the order they will run.
_FIRST = LuaScript(
    _COMMON
    + """
local ids = redis.call('ZRANGE', lane, 0, tonumber(ARGV[2]) - 1)
for i = 1, #ids do ids[i] = effective(ids[i]) end
return ids
"""
)


def lane(queue_name: str) -> str:
    return LANE.format(queue=queue_name)


def push(
    connection: Redis, *, queue_name: str, job_id: str, person: int | str, source: int | str = ""
) -> int:
    """Put a job in its queue's fair lane, in the person's next turn; within the person,
    ``source`` (an API key's id; "" for the chat page) takes turns with their other
    sources. Returns the turn (0 if it was already waiting there)."""
    keys, args = _push_parts(queue_name, job_id, person, source)
    return int(_PUSH(connection, keys=keys, args=args))


def push_into(
    pipe: Any,
    connection: Redis,
    *,
    queue_name: str,
    job_id: str,
    person: int | str,
    source: int | str = "",
) -> Callable[[Any], int]:
    """``push``, queued into ``pipe`` (a pipeline of ``connection`` to be run with
    ``raise_on_error=False``). Returns what turns the push's reply into the turn."""
    keys, args = _push_parts(queue_name, job_id, person, source)
    _PUSH.evalsha_into(pipe, connection, keys, args)
    return lambda reply: int(_PUSH.settle(connection, reply, keys, args))


def _push_parts(
    queue_name: str, job_id: str, person: int | str, source: int | str
) -> tuple[list[str], list[Any]]:
    keys = [CLOCK.format(queue=queue_name), ARRIVALS]
    return keys, [lane(queue_name), job_id, person, source, LAST_TTL, ARRIVAL_SLOTS]


def take(connection: Redis, queue: Queue, count: int) -> list[str]:
    """Up to ``count`` job ids from the queue: its front lane first, then in turn."""
    ids: Any = _TAKE(connection, keys=[queue.key], args=[lane(queue.name), count])
    return [_text(job_id) for job_id in ids]


def wait_pop(connection: Redis, queues: list[Queue], timeout: float) -> tuple[Queue, str] | None:
    """Block until a job is in one of the queues' fair lanes (the first queue first),
    up to ``timeout`` s, and take the one that runs in that turn."""
    by_lane = {lane(queue.name): queue for queue in queues}
    popped: Any = connection.bzpopmin(list(by_lane), timeout=timeout)
    if not popped:
        return None
    key, job_id, score = _text(popped[0]), _text(popped[1]), float(popped[2])
    chosen: Any = _ADVANCE(connection, keys=[], args=[key, job_id, score])
    return by_lane[key], _text(chosen)


def put_back(connection: Redis, queue: Queue, job_id: str) -> None:
    """A job taken but not started (the worker is stopping): first in line again."""
    connection.lpush(queue.key, job_id)


def waiting_for(connection: Redis, queues: list[Queue], person: int | str) -> int:
    """How many of the person's prompts wait in the queues' fair lanes."""
    with connection.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.hget(WAITING.format(queue=queue.name), str(person))
        return sum(int(n or 0) for n in pipe.execute())


def count_waiting(pipe: Any, queue: Queue) -> None:
    """Queue, into ``pipe``, the two replies ``waiting_counts`` adds up for the queue."""
    pipe.llen(queue.key)
    pipe.zcard(lane(queue.name))


def waiting_counts(replies: Sequence[Any]) -> list[int]:
    """Prompts waiting in each queue, both lanes, from the replies of ``count_waiting``."""
    return [int(replies[i]) + int(replies[i + 1]) for i in range(0, len(replies), 2)]


def depths(connection: Redis, queues: list[Queue]) -> list[int]:
    """Prompts waiting in each queue, both lanes."""
    with connection.pipeline(transaction=False) as pipe:
        for queue in queues:
            count_waiting(pipe, queue)
        return waiting_counts(pipe.execute())


def read_head(pipe: Any, connection: Redis, queue: Queue) -> None:
    """Queue, into ``pipe``, the two replies ``head_from`` reads for the queue."""
    pipe.lindex(queue.key, 0)
    _FIRST.into(pipe, connection, keys=[], args=[lane(queue.name), 1])


def head_from(front: Any, fair: Any) -> str | None:
    """The job id next in line, from the replies of ``read_head``: the front lane's first."""
    first = front or (fair[0] if fair else None)
    return _text(first) if first else None


def position(connection: Redis, queues: list[Queue], job_id: str) -> int | None:
    """1-based place in line across the queues in priority order (the front lanes go
    first in each), or None when it is not waiting. One round trip."""
    with connection.pipeline(transaction=False) as pipe:
        for queue in queues:
            _PLACE.into(pipe, connection, keys=[queue.key], args=[lane(queue.name), job_id])
        replies = pipe.execute()
    ahead = 0
    for front, in_front, fair, in_fair in replies:
        if in_front is not None:
            return ahead + int(in_front) + 1
        if in_fair is not None:
            return ahead + int(front) + int(in_fair) + 1
        ahead += int(front) + int(fair)
    return None


def waiting_ids(connection: Redis, queue: Queue, limit: int) -> list[str]:
    """The first ``limit`` job ids in line in the queue, in the order they will be taken."""
    front = [_text(job_id) for job_id in connection.lrange(queue.key, 0, limit - 1)]
    rest = limit - len(front)
    fair: Any = _FIRST(connection, keys=[], args=[lane(queue.name), rest]) if rest > 0 else []
    return front + [_text(job_id) for job_id in fair]


def head(connection: Redis, queue: Queue) -> str | None:
    """The job id next in line in the queue."""
    with connection.pipeline(transaction=False) as pipe:
        read_head(pipe, connection, queue)
        return head_from(*pipe.execute())


def is_waiting(pipe: Any, queue: Queue, job_id: str) -> None:
    """Queue, into ``pipe``, two replies: the job's place in each lane (None: not there)."""
    pipe.lpos(queue.key, job_id)
    pipe.zscore(lane(queue.name), job_id)


def remove(connection: Redis, queue: Queue, job_id: str) -> None:
    """Take a job out of line (it was cancelled)."""
    _REMOVE(connection, keys=[queue.key], args=[lane(queue.name), job_id])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
