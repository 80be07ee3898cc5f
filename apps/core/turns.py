"""Chores one process of the fleet does per interval (reconcile, health checks, gauges)."""

from __future__ import annotations

from redis import Redis

TURN_KEY = "barista:turn:{chore}"


def claim_turn(connection: Redis, chore: str, claimant: str, seconds: float) -> bool:
    """True for the first claimant of this ``chore`` in the next ``seconds`` (at least one
    second) across every process sharing this Redis; False for everyone else."""
    key = TURN_KEY.format(chore=chore)
    return bool(connection.set(key, claimant, nx=True, ex=max(1, int(seconds))))
