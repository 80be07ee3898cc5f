"""Chooses the backend for a prompt (DESIGN.md, decision 4).

Default (``peak_ewma``): among the alias's backends below their concurrency cap, the lowest
``peak-EWMA(time to first token) × (in flight + 1) / weight`` — every backend is scored
for small pools, two random choices are compared for large ones. The fallback tier is
used only when no primary backend can take the prompt. ``round_robin``, ``weighted``
(random, by weight) and ``least_inflight`` are there for comparison, per alias if wanted.

The backend's own queue (vLLM's ``num_requests_waiting``, read by the health checks)
counts as load. Rather than hand a prompt to a backend more than ``PATIENCE_RATIO`` times
slower than a busy one, ``peak_ewma`` waits for the busy one, but never longer than the
slower one would lose.

When every backend is at its cap (or asked to be left alone with Retry-After) the prompt
waits for a slot, taking turns with other people's prompts. When every backend is down
(its circuit open) the prompt waits for one to come back, and they are probed at once
(``apps.backends.recovery``); past ``BARISTA_BACKEND_RETURN_WAIT`` it fails with a clear
error.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable, Hashable

from django.conf import settings

from apps.backends import live, recovery
from apps.backends.models import Backend
from apps.core.fairlock import FairLock
from apps.core.loop import PerLoop

STRATEGIES = ("peak_ewma", "round_robin", "weighted", "least_inflight")
FULL_SCAN_UP_TO = 8
DEFAULT_TTFT = 0.1  # seconds assumed for a backend not measured yet (optimistic: try it)
KV_CACHE_CROWDED = 0.95
# Rather than hand a prompt to a backend this many times slower than a busy one, wait for
# the busy one — for at most the time the slower one would lose.
PATIENCE_RATIO = 2.0

_round_robin = itertools.count()


class NoBackendAvailable(Exception):
    pass


class AllBackendsDown(NoBackendAvailable):
    """Every backend's circuit is open, within its cool-down."""


def strategy_for(alias: str) -> str:
    return settings.BARISTA_BALANCER_BY_ALIAS.get(alias, settings.BARISTA_BALANCER)


def score(backend: Backend, state: live.BackendLive, prior: float) -> float:
    """Peak-EWMA(TTFT) x (in flight + the backend's own queue + 1) / weight, doubled for
    each consecutive failure and again when the backend says its KV cache is nearly full
    (vLLM would start preempting)."""
    ttft = state.ttft_ewma if state.ttft_ewma is not None else prior
    load = state.in_flight + state.waiting + 1
    crowded = 2.0 if state.kv_cache >= KV_CACHE_CROWDED else 1.0
    return ttft * load / backend.weight * 2**state.failures * crowded


def takes_prompts(backend: Backend, state: live.BackendLive) -> bool:
    """Below its cap, no Retry-After pending, circuit closed — or open past its cool-down
    with nothing in flight (the half-open probe: one call at a time)."""
    if not state.usable:
        return False
    limit = 1 if state.circuit == "open" else backend.max_concurrency
    return state.in_flight < limit


def rank(
    candidates: list[Backend],
    states: dict[int, live.BackendLive],
    strategy: str,
    rng: random.Random | None = None,
) -> list[Backend]:
    """The backends to try, best first: primaries below their cap, then fallbacks."""
    chooser = rng or random.Random()  # noqa: S311 - load spreading, not security
    empty = live.BackendLive(0, None)
    open_ = [b for b in candidates if takes_prompts(b, states.get(b.pk, empty))]
    ordered: list[Backend] = []
    for tier in (Backend.Tier.PRIMARY, Backend.Tier.FALLBACK):
        pool = [b for b in open_ if b.tier == tier]
        # Half-open: a backend whose cool-down is over gets one probe, ahead of the rest
        # (a failed probe before the first token is retried elsewhere, so it costs little).
        probes = [b for b in pool if states.get(b.pk, empty).circuit == "open"]
        rest = [b for b in pool if b not in probes]
        ordered += probes + _order(rest, states, strategy, chooser, empty)
    return ordered


def _order(
    pool: list[Backend],
    states: dict[int, live.BackendLive],
    strategy: str,
    chooser: random.Random,
    empty: live.BackendLive,
) -> list[Backend]:
    if len(pool) <= 1:
        return pool
    if strategy == "round_robin":
        start = next(_round_robin) % len(pool)
        return pool[start:] + pool[:start]
    if strategy == "weighted":
        rest, ordered = list(pool), []
        while rest:
            pick = chooser.choices(rest, weights=[b.weight for b in rest], k=1)[0]
            ordered.append(pick)
            rest.remove(pick)
        return ordered
    if strategy == "least_inflight":
        return sorted(
            pool, key=lambda b: (states.get(b.pk, empty).in_flight / b.weight, chooser.random())
        )
    known = [s.ttft_ewma for b in pool if (s := states.get(b.pk, empty)).ttft_ewma is not None]
    prior = min(known) if known else DEFAULT_TTFT
    if len(pool) <= FULL_SCAN_UP_TO:
        return sorted(
            pool, key=lambda b: (score(b, states.get(b.pk, empty), prior), chooser.random())
        )
    # Large pool: compare two random backends; the rest follow, in case both are taken.
    first, second = chooser.sample(pool, 2)
    pair = sorted((first, second), key=lambda b: score(b, states.get(b.pk, empty), prior))
    others = [b for b in pool if b not in pair]
    chooser.shuffle(others)
    return pair + others


def worth_waiting(
    backend: Backend,
    candidates: list[Backend],
    states: dict[int, live.BackendLive],
    waited: float,
) -> bool:
    """Is a busy backend of the same tier so much faster than ``backend`` that the prompt
    should wait for it? Only while the wait is shorter than what the slower one would lose.
    (Peak-EWMA only: the other strategies are kept plain, for comparison.)"""
    mine = states[backend.pk].ttft_ewma
    if mine is None:
        return False
    busy = [
        ttft
        for other in candidates
        if other.tier == backend.tier
        and (state := states[other.pk]).circuit == "closed"
        and state.retry_after <= 0
        and state.in_flight >= other.max_concurrency
        and (ttft := state.ttft_ewma) is not None
    ]
    if not busy:
        return False
    fastest = min(busy)
    return mine > PATIENCE_RATIO * fastest and waited < mine - fastest


# Locks belong to a loop: one set of lines per event loop.
_lines: PerLoop[dict[str, FairLock]] = PerLoop(dict)


def _line(alias: str) -> FairLock:
    """The waiting line for an alias in this process. Within a person's prompts it is
    first come, first served, so the prompt that has waited longest takes the next free
    slot (without it a newcomer could take a slot just given back and old prompts would
    starve: measured, it was the tail of the fleet benchmark under overload). Between
    people it goes round robin (``FairLock``): one person's burst cannot make another's
    single prompt wait behind all of it."""
    lines = _lines()
    line = lines.get(alias)
    if line is None:
        line = lines[alias] = FairLock()
    return line


async def _attempt(
    candidates: list[Backend], alias: str, strategy: str, lease_ttl: float, waited: float
) -> tuple[Backend, str] | None:
    states = await live.snapshot([b.pk for b in candidates])
    if recovery.all_open(candidates, states):
        raise AllBackendsDown(alias)  # the caller waits for one to come back
    for backend in rank(candidates, states, strategy):
        if strategy == "peak_ewma" and worth_waiting(backend, candidates, states, waited):
            return None
        lease = await live.try_acquire(backend.pk, cap=backend.max_concurrency, ttl=lease_ttl)
        if lease is not None:
            return backend, lease
    return None


async def backend_acquire(
    candidates: list[Backend],
    *,
    alias: str,
    lease_ttl: float,
    wait_up_to: float,
    party: Hashable = None,
    source: Hashable = None,
    on_wait: Callable[[str], Awaitable[None]] | None = None,
) -> tuple[Backend, str]:
    """Pick a backend and take a lease on it. Waits in line — taking turns with other
    ``party``s (people), and within a party by ``source`` (their API keys) — while every
    backend is at its cap (up to ``wait_up_to`` seconds), and while every backend is down
    (up to ``BARISTA_BACKEND_RETURN_WAIT`` seconds of that, probing them:
    ``apps.backends.recovery``); raises
    ``NoBackendAvailable`` if there is none. ``on_wait`` hears once why the prompt waits:
    ``"busy"`` or ``"down"``."""
    if not candidates:
        raise NoBackendAvailable(f"No backend serves the model {alias!r} right now.")
    strategy = strategy_for(alias)
    line = _line(alias)
    if not line.locked():  # no one waiting: no need to queue
        try:
            found = await _attempt(candidates, alias, strategy, lease_ttl, 0.0)
        except AllBackendsDown:
            found = None
        if found is not None:
            return found
    loop = asyncio.get_running_loop()
    started = loop.time()
    ids = [b.pk for b in candidates]
    told: set[str] = set()

    async def tell(reason: str) -> None:
        if on_wait is not None and reason not in told:
            told.add(reason)
            await on_wait(reason)

    async with line.hold(party, source):
        delay = 0.02
        while True:
            waited = loop.time() - started
            try:
                found = await _attempt(candidates, alias, strategy, lease_ttl, waited)
            except AllBackendsDown:
                if not recovery.enabled():
                    raise NoBackendAvailable(recovery.failing(alias)) from None
                await tell("down")
                until = started + min(wait_up_to, settings.BARISTA_BACKEND_RETURN_WAIT)
                if await recovery.wait_for_return(candidates, until=until):
                    continue
                raise NoBackendAvailable(recovery.failing(alias)) from None
            if found is not None:
                return found
            if waited >= wait_up_to:
                raise NoBackendAvailable(f"Every backend for {alias!r} stayed busy; try again.")
            await tell("busy")
            # A slot given back in this process wakes us at once; others' are found by
            # polling.
            await live.wait_for_slot(ids, delay)
            delay = min(delay * 2, 0.2)


async def backend_wait_for_return(
    backends: list[Backend], *, alias: str, on_wait: Callable[[str], Awaitable[None]] | None
) -> None:
    """A prompt's backends are all unreachable: wait (probing them) for one to come
    back, up to ``BARISTA_BACKEND_RETURN_WAIT`` seconds; ``NoBackendAvailable`` after."""
    if on_wait is not None:
        await on_wait("down")
    until = asyncio.get_running_loop().time() + settings.BARISTA_BACKEND_RETURN_WAIT
    if not await recovery.wait_for_return(backends, until=until):
        raise NoBackendAvailable(recovery.failing(alias))
