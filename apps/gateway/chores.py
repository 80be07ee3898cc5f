"""The fleet's periodic chores. Every gateway worker offers to do them; for each interval
one worker of the fleet takes the turn (``apps.core.turns.claim_turn``) and does it:

* **gauges** — each wall-clock second: queue depths and oldest waits, calls in flight per
  backend, workers alive, for the metrics store (``apps.gateway.metrics``);
* **RQ maintenance** — every ``BARISTA_WORKER_MAINTENANCE_INTERVAL`` s: RQ cleans its
  registries, so the jobs of a worker that died (their heartbeats expired) are enqueued
  again, and dead workers are unregistered; cancelled jobs a day old are dropped (RQ's
  clean-up leaves those for ever). Two clean-ups must not overlap (each would re-run the
  same abandoned jobs), so one runs under a lease its worker renews while it runs and
  that lapses a heartbeat TTL after that worker dies;
* **reconcile** — every ``BARISTA_RECONCILE_INTERVAL`` s: ledger rows Redis lost track
  of (``apps.gateway.reconciler``);
* **health checks** — every ``BARISTA_HEALTH_INTERVAL`` s: every backend is asked how it
  is (``apps.backends.health``), in a task of its own so a slow backend holds up nothing.

Maintenance and reconciling run in a task of their own too: with hundreds of abandoned
jobs or rows they take seconds, and the worker's heartbeats must not wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from channels.db import database_sync_to_async
from django.conf import settings
from redis import Redis
from redis.exceptions import LockError

from apps.backends import health
from apps.backends.selectors import backend_list_active, backend_names_active
from apps.core import clients
from apps.core.turns import claim_turn
from apps.gateway import metrics, queues, reconciler

logger = logging.getLogger(__name__)

MAINTENANCE_LEASE = "barista:lease:rq-maintenance"
CHORE_POLL_SECONDS = 0.5  # how often a worker offers to take a maintenance turn
GAUGE_TURN_SECONDS = 5  # a second's turn outlives the second: late workers still see it
GAUGE_BACKENDS_SECONDS = 10.0  # how long the list of backends to gauge is reused


class Worker(Protocol):
    """What the chores need of the gateway worker (``apps.gateway.worker``)."""

    @property
    def name(self) -> str: ...
    @property
    def connection(self) -> Redis: ...
    @property
    def maintenance_interval(self) -> float: ...
    @property
    def heartbeat_interval(self) -> float: ...
    @property
    def heartbeat_ttl(self) -> int: ...
    def clean_registries(self) -> None: ...


class Chores:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._warned = float("-inf")
        self._tried: dict[str, float] = {}  # when this process last offered, per chore
        self._gauged_second = 0
        self._gauge_backends: list[tuple[int, str]] = []
        self._gauge_backends_at = float("-inf")

    def _turn(self, chore: str, every: float) -> bool:
        """Whether this process does ``chore`` now: it is ``every`` s since it last
        offered, and no other process of the fleet has taken this interval."""
        if time.monotonic() - self._tried.get(chore, float("-inf")) < every:
            return False
        self._tried[chore] = time.monotonic()
        return claim_turn(self.worker.connection, chore, self.worker.name, every)

    async def record_gauges(self) -> None:
        """The gauges, once each wall-clock second (the worker calls this a few times a
        second, between heartbeats)."""
        second = int(time.time())
        if second != self._gauged_second:
            self._gauged_second = second
            await self._record_gauges(second)

    async def maintenance(self) -> None:
        """RQ maintenance and reconciling, each when this worker has the turn; runs until
        cancelled."""
        while True:
            try:
                if self._turn("rq-maintenance", self.worker.maintenance_interval):
                    await self._clean_registries()
                if self._turn("reconcile", settings.BARISTA_RECONCILE_INTERVAL):
                    await database_sync_to_async(reconciler.reconcile)(self.worker.connection)
            except Exception:  # Redis away, most likely: try again next round
                if time.monotonic() - self._warned > 5:
                    self._warned = time.monotonic()
                    logger.warning("worker %s: maintenance failed", self.worker.name, exc_info=True)
            await asyncio.sleep(CHORE_POLL_SECONDS)

    async def _clean_registries(self) -> None:
        """RQ's clean-up, under the fleet's lease: renewed each heartbeat while it runs,
        lapsing ``heartbeat_ttl`` s after this worker dies."""
        lease = self.worker.connection.lock(MAINTENANCE_LEASE, timeout=self.worker.heartbeat_ttl)
        if not lease.acquire(blocking=False):
            return  # another worker's clean-up is still running
        try:
            cleaning = asyncio.get_running_loop().run_in_executor(None, self._clean)
            while not (await asyncio.wait({cleaning}, timeout=self.worker.heartbeat_interval))[0]:
                # Lapsed (this process stalled for a heartbeat TTL): another clean-up may
                # start, as another worker may re-run this one's jobs; this one still ends.
                with contextlib.suppress(LockError):
                    lease.reacquire()
            cleaning.result()
        finally:
            with contextlib.suppress(LockError):  # it lapsed meanwhile: nothing to give back
                lease.release()

    def _clean(self) -> None:
        self.worker.clean_registries()
        queues.canceled_trim(self.worker.connection)

    async def _record_gauges(self, second: int) -> None:
        if not settings.BARISTA_METRICS_ENABLED:
            return
        connection, name = self.worker.connection, self.worker.name
        try:
            if not claim_turn(connection, f"gauges:{second}", name, GAUGE_TURN_SECONDS):
                return
            if time.monotonic() - self._gauge_backends_at > GAUGE_BACKENDS_SECONDS:
                self._gauge_backends = await database_sync_to_async(backend_names_active)()
                self._gauge_backends_at = time.monotonic()
            metrics.record_gauges(connection, self._gauge_backends, second)
        except Exception:  # metrics must never stop the worker
            logger.warning("worker %s: could not record gauges", name, exc_info=True)

    async def health_checks(self) -> None:
        """Check every backend each interval, when this worker has the turn; runs until
        cancelled."""
        interval = settings.BARISTA_HEALTH_INTERVAL
        if interval <= 0:
            return
        while True:
            try:
                if claim_turn(self.worker.connection, "health", self.worker.name, interval):
                    backends = await database_sync_to_async(list)(backend_list_active())
                    await health.check_all(clients.http(), backends)
            except Exception:  # a failed round must not end the checks
                logger.exception("worker %s: health checks failed", self.worker.name)
            await asyncio.sleep(interval)
