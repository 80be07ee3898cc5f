"""Live backend state in Redis, shared by every worker.

* **In-flight leases** (``leases``) — taken below a backend's cap, renewed while a call
  runs, given back after; a dead worker's leases expire.
* **Peak-EWMA of time to first token** and the **circuit breaker** (``stats``) —
  consecutive failures, failures in a window, an open circuit's cool-down (doubling with
  each opening) and any Retry-After the backend sent.
* **Health** (``state``) — the last active check (``apps.backends.health``): up or down,
  how long it took, and the backend's own queue (vLLM's ``num_requests_waiting``,
  KV-cache use) when it publishes them.

``snapshot`` reads all of it for a set of backends in one round trip. Scripts read Redis's
own clock, so workers on different hosts agree on expiry.
"""

from apps.backends.live.keys import health_key, lease_key, stats_key
from apps.backends.live.leases import held, release, try_acquire, wait_for_slot
from apps.backends.live.state import (
    FIELDS,
    BackendLive,
    record_health,
    snapshot,
    snapshot_sync,
)
from apps.backends.live.stats import TAU, observe_ttft, record

__all__ = [
    "FIELDS",
    "TAU",
    "BackendLive",
    "health_key",
    "held",
    "lease_key",
    "observe_ttft",
    "record",
    "record_health",
    "release",
    "snapshot",
    "snapshot_sync",
    "stats_key",
    "try_acquire",
    "wait_for_slot",
]
