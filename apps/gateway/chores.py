"""The fleet's periodic chores. Every gateway worker offers to do them; for each interval
one worker of the fleet takes the turn (``apps.core.turns.claim_turn``) and does it:

* **gauges** — each wall-clock second: queue depths and oldest waits, calls in flight per
  backend, workers alive, for the metrics store (``apps.gateway.metrics``);
* **RQ maintenance** — every ``BARISTA_WORKER_MAINTENANCE_INTERVAL`` s: RQ cleans its
  registries, so the jobs of a worker that died (their heartbeats expired) are enqueued
  again, and dead workers are unregistered; cancelled jobs a day old are dropped (RQ's
  clean-up leaves those for ever);
* **reconcile** — every ``BARISTA_RECONCILE_INTERVAL`` s: ledger rows Redis lost track
  of (``apps.gateway.reconciler``);
* **health checks** — every ``BARISTA_HEALTH_INTERVAL`` s: every backend is asked how it
  is (``apps.backends.health``), in a task of its own so a slow backend holds up nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from channels.db import database_sync_to_async
from django.conf import settings
from rq.worker import BaseWorker

from apps.backends import health
from apps.backends.selectors import backend_list_active, backend_names_active
from apps.core import clients
from apps.core.turns import claim_turn
from apps.gateway import metrics, queues, reconciler

logger = logging.getLogger(__name__)

GAUGE_TURN_SECONDS = 5  # a second's turn outlives the second: late workers still see it
GAUGE_BACKENDS_SECONDS = 10.0  # how long the list of backends to gauge is reused


class Chores:
    def __init__(self, worker: BaseWorker) -> None:
        self.worker = worker
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

    async def run_due(self) -> None:
        """The chores whose time has come (the worker calls this a few times a second)."""
        second = int(time.time())
        if second != self._gauged_second:
            self._gauged_second = second
            await self._record_gauges(second)
        if self._turn("rq-maintenance", self.worker.maintenance_interval):
            await asyncio.get_running_loop().run_in_executor(None, self.worker.clean_registries)
            await asyncio.get_running_loop().run_in_executor(
                None, queues.canceled_trim, self.worker.connection
            )
        if self._turn("reconcile", settings.BARISTA_RECONCILE_INTERVAL):
            await database_sync_to_async(reconciler.reconcile)(self.worker.connection)

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
