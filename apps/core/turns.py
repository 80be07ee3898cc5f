"""Chores one process of the fleet does per interval (reconcile, health checks, gauges)."""

from __future__ import annotations

from redis import Redis

TURN_KEY = "barista:turn:{chore}"


def claim_turn(connection: Redis, chore: str, claimant: str, seconds: float) -> bool:
    """True for the first claimant of this ``chore`` in the next ``seconds`` across every
    process sharing this Redis; False for everyone else."""
    key = TURN_KEY.format(chore=chore)
    # Milliseconds: health checks may run twice a second (BARISTA_HEALTH_INTERVAL=0.5).
    return bool(connection.set(key, claimant, nx=True, px=max(1, round(seconds * 1000))))
