"""Fair queueing: within each priority queue, people take turns.

A prompt waits in one of two lanes of its queue:

* the **fair lane** — a sorted set per queue, where a new prompt goes. Its score is a
  *start tag* (start-time fair queueing, the virtual-clock form of deficit round robin
  with one prompt as the quantum): ``max(virtual time, the person's last tag) + 1``,
  where the virtual time is the tag of the last prompt a worker took. So each person's
  prompts are spaced one turn apart, and a person who has sent nothing for a while starts
  at the current turn — not ahead of everyone for having been quiet, not behind someone
  else's thousand. Ties (one turn, several people) go in order of arrival.
* the **front lane** — RQ's own list for the queue, for prompts that already waited
  their turn: RQ's re-runs of a job whose worker died, and a worker's give-back (on
  shutdown, or when Redis failed mid-answer). Workers take from it first. (Staff's
  retries and the reconciler's re-runs get a fresh job in the owner's next turn.)

What a person sees: a prompt sent while someone else has 1,000 waiting is placed behind
at most one prompt of each other person with prompts waiting (``position`` counts
exactly what is ahead, so the figure shown is true under this ordering). Coalesced
followers and cache hits never enter a queue.

The worker takes prompts in queue priority order, front lane first (``take``, one
script per queue); an idle worker blocks on the fair lanes (``wait_pop``). The keys: the
lane ``barista:fair:{queue}``, the virtual time ``barista:fair:{queue}:clock``, each
person's last tag ``barista:fair:{queue}:last:{person}`` and how many of their prompts
wait (``...:waiting``, with each waiting job's person in ``...:owners``) — a person with
nothing waiting has no last tag, so what they sent or cancelled before does not count —
and an arrival counter for ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import Redis
from rq import Queue

from apps.core.scripts import LuaScript

LANE = "barista:fair:{queue}"
CLOCK = "barista:fair:{queue}:clock"
LAST = "barista:fair:{queue}:last:"  # + person: the person's last tag
OWNERS = "barista:fair:{queue}:owners"  # job id -> person, while it waits
WAITING = "barista:fair:{queue}:waiting"  # person -> prompts waiting in the lane
ARRIVALS = "barista:fair:arrivals"
LAST_TTL = 86400  # only a safety net: a person's last tag goes when nothing of theirs waits
# Ties within a turn are ordered by arrival: the fraction of a score below 1.
ARRIVAL_SLOTS = 1 << 20

# A job leaves the lane (taken or cancelled): its person has one fewer waiting, and with
# none left their last tag goes — a person with nothing waiting starts at the current
# turn, whatever they sent or cancelled before. (The last-tag key is built here from its
# prefix: these scripts run on one Redis, never a cluster, as RQ's queues do.)
_FORGET = """
local function forget(owners, waiting, last_prefix, id)
  local person = redis.call('HGET', owners, id)
  if not person then return end
  redis.call('HDEL', owners, id)
  if redis.call('HINCRBY', waiting, person, -1) <= 0 then
    redis.call('HDEL', waiting, person)
    redis.call('DEL', last_prefix .. person)
  end
end
"""

_PUSH = LuaScript("""
local clock = tonumber(redis.call('GET', KEYS[2]) or '0')
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
local tag = math.max(clock, last) + 1
local slots = tonumber(ARGV[3])
local arrival = redis.call('INCR', KEYS[4]) % slots
if redis.call('ZADD', KEYS[1], 'NX', tag + arrival / slots, ARGV[1]) == 0 then
  return 0  -- already waiting in this lane
end
redis.call('SET', KEYS[3], tag, 'EX', ARGV[2])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[4])
redis.call('HINCRBY', KEYS[6], ARGV[4], 1)
return tag
""")

# Front lane first, then the fair lane; the clock moves to the last tag taken.
_TAKE = LuaScript(
    _FORGET
    + """
local count = tonumber(ARGV[1])
local ids = redis.call('LPOP', KEYS[1], count)
if not ids then ids = {} end
local left = count - #ids
if left > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[2], left)
  for i = 1, #popped, 2 do
    ids[#ids + 1] = popped[i]
    forget(KEYS[4], KEYS[5], ARGV[2], popped[i])
  end
  if #popped > 0 then
    local tag = math.floor(tonumber(popped[#popped]))
    if tag > tonumber(redis.call('GET', KEYS[3]) or '0') then
      redis.call('SET', KEYS[3], tag)
    end
  end
end
return ids
"""
)

# After a blocking pop took ARGV[2] with score ARGV[1].
_ADVANCE = LuaScript(
    _FORGET
    + """
if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], ARGV[1])
end
forget(KEYS[2], KEYS[3], ARGV[3], ARGV[2])
"""
)

_REMOVE = LuaScript(
    _FORGET
    + """
redis.call('LREM', KEYS[1], 0, ARGV[1])
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  forget(KEYS[3], KEYS[4], ARGV[2], ARGV[1])
end
"""
)


def lane(queue_name: str) -> str:
    return LANE.format(queue=queue_name)


def push(connection: Redis, *, queue_name: str, job_id: str, person: int | str) -> int:
    """Put a job in its queue's fair lane, in the person's next turn. Returns the turn
    (0 if it was already waiting there)."""
    return int(
        _PUSH(
            connection,
            keys=[
                lane(queue_name),
                CLOCK.format(queue=queue_name),
                LAST.format(queue=queue_name) + str(person),
                ARRIVALS,
                OWNERS.format(queue=queue_name),
                WAITING.format(queue=queue_name),
            ],
            args=[job_id, LAST_TTL, ARRIVAL_SLOTS, person],
        )
    )


def take(connection: Redis, queue: Queue, count: int) -> list[str]:
    """Up to ``count`` job ids from the queue: its front lane first, then in turn."""
    name = queue.name
    ids: Any = _TAKE(
        connection,
        keys=[
            queue.key,
            lane(name),
            CLOCK.format(queue=name),
            OWNERS.format(queue=name),
            WAITING.format(queue=name),
        ],
        args=[count, LAST.format(queue=name)],
    )
    return [_text(job_id) for job_id in ids]


def wait_pop(connection: Redis, queues: list[Queue], timeout: float) -> tuple[Queue, str] | None:
    """Block until a job is in one of the queues' fair lanes (the first queue first),
    up to ``timeout`` s, and take it."""
    by_lane = {lane(queue.name): queue for queue in queues}
    popped: Any = connection.bzpopmin(list(by_lane), timeout=timeout)
    if not popped:
        return None
    key, job_id, score = _text(popped[0]), _text(popped[1]), float(popped[2])
    name = by_lane[key].name
    _ADVANCE(
        connection,
        keys=[CLOCK.format(queue=name), OWNERS.format(queue=name), WAITING.format(queue=name)],
        args=[int(score), job_id, LAST.format(queue=name)],
    )
    return by_lane[key], job_id


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


def read_head(pipe: Any, queue: Queue) -> None:
    """Queue, into ``pipe``, the two replies ``head_from`` reads for the queue."""
    pipe.lindex(queue.key, 0)
    pipe.zrange(lane(queue.name), 0, 0)


def head_from(front: Any, fair: Any) -> str | None:
    """The job id next in line, from the replies of ``read_head``: the front lane's first."""
    first = front or (fair[0] if fair else None)
    return _text(first) if first else None


def position(connection: Redis, queues: list[Queue], job_id: str) -> int | None:
    """1-based place in line across the queues in priority order (the front lanes go
    first in each), or None when it is not waiting. One round trip."""
    with connection.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue.key)
            pipe.lpos(queue.key, job_id)
            pipe.zcard(lane(queue.name))
            pipe.zrank(lane(queue.name), job_id)
        replies = pipe.execute()
    ahead = 0
    for index in range(len(queues)):
        front, in_front, fair, in_fair = replies[4 * index : 4 * index + 4]
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
    fair: Any = connection.zrange(lane(queue.name), 0, rest - 1) if rest > 0 else []
    return front + [_text(job_id) for job_id in fair]


def head(connection: Redis, queue: Queue) -> str | None:
    """The job id next in line in the queue."""
    with connection.pipeline(transaction=False) as pipe:
        read_head(pipe, queue)
        return head_from(*pipe.execute())


def is_waiting(pipe: Any, queue: Queue, job_id: str) -> None:
    """Queue, into ``pipe``, two replies: the job's place in each lane (None: not there)."""
    pipe.lpos(queue.key, job_id)
    pipe.zscore(lane(queue.name), job_id)


def remove(connection: Redis, queue: Queue, job_id: str) -> None:
    """Take a job out of line (it was cancelled)."""
    name = queue.name
    _REMOVE(
        connection,
        keys=[queue.key, lane(name), OWNERS.format(queue=name), WAITING.format(queue=name)],
        args=[job_id, LAST.format(queue=name)],
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
