"""Where a backend's live state lives in Redis: one key per kind, per backend."""

from __future__ import annotations


def lease_key(backend_id: int) -> str:
    return f"barista:backend:{backend_id}:leases"


def stats_key(backend_id: int) -> str:
    return f"barista:backend:{backend_id}:stats"


def health_key(backend_id: int) -> str:
    return f"barista:backend:{backend_id}:health"
