"""The response cache: a finished answer, kept for ``BARISTA_CACHE_TTL`` seconds under the
hash of the normalized request (DESIGN.md, decision 5).

* **Key** — the model alias and every parameter that changes the answer (messages with
  roles and content, temperature, top_p, max_tokens, stop, seed, tools, response
  format…), serialized with sorted keys and no insignificant whitespace, then SHA-256
  (no other normalizing: strings are kept as sent). Parameters that do not change the
  answer (``user``, ``stream``, ``stream_options``…) are left out.
* **Scope** — private by default: the owner's id is part of the key, so a person's
  answers are theirs alone, unless staff share an alias's answers between people
  (``Backend.share_answers``, in the console) or ``BARISTA_CACHE_SCOPE=global`` shares
  every alias's (``shared``). People are told how a request was answered (hit, merged)
  only where answers are shared.
* **Policy** — ``all``; ``deterministic`` (only temperature 0 or a seed); ``off``.
  Coalescing (``apps.gateway.coalescing``) follows the same key, so it obeys the same
  policy, scope and per-request bypass.
* Only complete answers are stored: a failed, cancelled or truncated (``length``) answer
  never is.
* **Counters** — hits, misses, coalesced followers, tokens and money saved, in one Redis
  hash shared by every process; each process adds its counts every quarter second
  (``Counts``).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from redis import Redis
from redis.exceptions import RedisError

from apps.backends.enabled import enabled_backends
from apps.core import clients

logger = logging.getLogger(__name__)

# Parameters that do not change the answer: left out of the key.
IGNORED_PARAMS = frozenset(
    {"stream", "stream_options", "user", "metadata", "store", "service_tier"}
)
COUNTERS_KEY = "barista:cache:counters"
KEY_PREFIX = "answer"  # django-redis adds its own prefix ("barista:1:")
# Counts wait in the process at most this long before they are added to COUNTERS_KEY.
COUNTS_DELAY = 0.25


@functools.cache
def _store() -> BaseCache:
    """The answers' store, one per process. Django's ``cache`` is one per thread and per
    async context — per request here — and django-redis builds a Redis client for each
    (about 0.4 ms of CPU a request); this one is shared (redis-py's pool is thread-safe)."""
    return caches.create_connection("default")


def shared(alias: str) -> bool:
    """Whether an alias's answers are shared between people (an identical question from
    anyone is answered from the same stored answer, and merged while in flight) — staff's
    choice per alias, or everywhere with ``BARISTA_CACHE_SCOPE=global``. Where they are
    not, the owner is part of every key, and people are not told how a request was
    answered (hit, merged): there is nothing of anyone else's to tell."""
    return settings.BARISTA_CACHE_SCOPE == "global" or enabled_backends.shares_answers(alias)


def is_deterministic(params: dict[str, Any]) -> bool:
    return params.get("seed") is not None or params.get("temperature") in (0, 0.0)


def cache_key(
    *,
    alias: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    owner_id: int,
    bypass: bool = False,
    kind: str = "chat",
) -> str | None:
    """The request's key, or None when policy, or the caller, says not to cache (then it
    is not coalesced either). ``kind``: a chat or a text completion (``PromptRequest.kind``)."""
    policy = settings.BARISTA_CACHE_POLICY
    if bypass or policy == "off" or (policy == "deterministic" and not is_deterministic(params)):
        return None
    significant = {k: v for k, v in params.items() if k not in IGNORED_PARAMS}
    document: dict[str, Any] = {"model": alias, "messages": messages, "params": significant}
    if kind != "chat":  # (chat keys stay as they were)
        document["kind"] = kind
    if not shared(alias):
        document["owner"] = owner_id
    # Only what is provably the same request shares a key: key order and JSON spacing
    # differ, nothing else ("\n" and " " as a stop are two requests).
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{alias}:{hashlib.sha256(text.encode()).hexdigest()}"


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    answer: str
    backend_id: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: str = "0"  # what the backend charged for it, in the backends' currency
    extra: dict[str, Any] = field(default_factory=dict)  # tool calls…: apps.gateway.extras


def redis_key(key: str) -> str:
    """The Redis key django-redis stores this answer under (for scripts)."""
    return str(_store().make_key(f"{KEY_PREFIX}:{key}"))


def lookup(key: str) -> CachedAnswer | None:
    try:
        found = _store().get(f"{KEY_PREFIX}:{key}")
    except ValueError:  # not JSON (planted, or from a version that pickled): a miss
        return None
    if not isinstance(found, dict):
        return None
    try:
        return CachedAnswer(**found)
    except TypeError:
        return None  # written by an older version: a miss


def encode(answer: CachedAnswer) -> bytes:
    """The bytes django-redis would store for this answer (its serializer and compressor),
    so a worker can write it from its own asyncio Redis client, in the same script that
    closes the key to new followers, and ``lookup`` reads it back."""
    return bytes(_store().client.encode(asdict(answer), allow_int=False))  # type: ignore[attr-defined]


def flush(alias: str | None = None) -> int:
    """Drop stored answers (all, or one model alias's); returns how many."""
    pattern = f"{KEY_PREFIX}:{alias}:*" if alias else f"{KEY_PREFIX}:*"
    return int(_store().delete_pattern(pattern))  # type: ignore[attr-defined]


def size(connection: Redis) -> int:
    """How many answers are stored (a SCAN: fine for a console page, not a hot path)."""
    pattern = _store().make_key(f"{KEY_PREFIX}:*")
    return sum(1 for _ in connection.scan_iter(match=pattern, count=1000))


def cost_of(backend: Any, prompt_tokens: int | None, completion_tokens: int | None) -> str:
    """What a backend charges for an answer, from its prices per million tokens."""
    cost = (
        Decimal(prompt_tokens or 0) * backend.price_input_per_million
        + Decimal(completion_tokens or 0) * backend.price_output_per_million
    ) / 10**6
    return str(cost)


class Counts:
    """Hits, misses, followers and what they saved, kept in the process and added to the
    shared hash (``COUNTERS_KEY``) in one pipeline at most ``COUNTS_DELAY`` seconds later:
    a hit then costs one Redis command (its lookup), not four, and a miss one round trip
    less. A process reading the counters adds its own first; a process killed outright
    loses at most its last quarter second of counts (they are statistics, not the
    ledger). Safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._cost = 0.0
        self._timer: threading.Timer | None = None

    def add(self, outcome: str, saved: CachedAnswer | None = None, times: int = 1) -> None:
        """``times`` more of ``outcome`` ("hit", "miss", "coalesced"; "" counts only what
        was saved); each that has ``saved`` an answer saved its tokens and cost."""
        with self._lock:
            if outcome:
                self._counts[outcome] += times
            if saved is not None:
                tokens = (saved.prompt_tokens or 0) + (saved.completion_tokens or 0)
                self._counts["tokens_saved"] += tokens * times
                self._cost += float(saved.cost) * times
            self._schedule(COUNTS_DELAY)

    def flush(self) -> None:
        """Add what this process counted to the shared hash now. Redis away: kept for the
        next try."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
            cost, self._cost = self._cost, 0.0
            self._timer = None
        if not counts and not cost:
            return
        try:
            with clients.sync_redis().pipeline(transaction=False) as pipe:
                for name, value in counts.items():
                    pipe.hincrby(COUNTERS_KEY, name, value)
                if cost:
                    pipe.hincrbyfloat(COUNTERS_KEY, "cost_saved", cost)
                pipe.execute()
        except RedisError:
            logger.warning("could not add the cache's counts to Redis; trying again later")
            with self._lock:
                self._counts.update(counts)
                self._cost += cost
                self._schedule(1.0)

    def _schedule(self, delay: float) -> None:
        """A flush ``delay`` seconds from now, unless one is due already (lock held)."""
        if self._timer is None:
            self._timer = threading.Timer(delay, self.flush)
            self._timer.daemon = True
            self._timer.start()


counts = Counts()
atexit.register(counts.flush)


def count(outcome: str, saved: CachedAnswer | None = None) -> None:
    """One more hit, miss or coalesced follower; a hit or follower saved a backend call."""
    counts.add(outcome, saved)


def add_saved(saved: CachedAnswer, times: int) -> None:
    """``times`` followers were answered without a backend call of their own."""
    counts.add("", saved, times)


def counters(connection: Redis) -> dict[str, float]:
    counts.flush()  # this process's own counts first
    return counters_from(connection.hgetall(COUNTERS_KEY))  # type: ignore[arg-type]


def counters_from(raw: dict[bytes, bytes]) -> dict[str, float]:
    """The counters hash as numbers, with ``asked`` (every cacheable request) and
    ``hit_ratio`` (the share answered without a backend call; 0 when nothing was asked)."""
    values = {k.decode(): float(v) for k, v in raw.items()}
    for name in ("hit", "miss", "coalesced", "tokens_saved", "cost_saved"):
        values.setdefault(name, 0.0)
    values["asked"] = values["hit"] + values["miss"] + values["coalesced"]
    saved = values["hit"] + values["coalesced"]
    values["hit_ratio"] = saved / values["asked"] if values["asked"] else 0.0
    return values
