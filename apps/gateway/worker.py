"""The gateway worker: many prompts in flight per process, on RQ's public API.

RQ's stock workers run one job per process (the forking one also forks per job). AI calls
spend seconds waiting on the network, so this worker keeps up to ``concurrency`` jobs in
flight on one asyncio loop (DESIGN.md, decision 1). It is an RQ worker all the same: it
registers itself, answers RQ's commands (shutdown, stop-job) and suspension, and keeps the
registries truthful — a job in flight sits in the started registry under a live
heartbeat, and ends in the finished or the failed registry (``apps.gateway.runs`` records
each step on RQ's public API). Its own Redis bookkeeping is batched: one pipeline starts a
whole batch of jobs, one pipeline heartbeats every job in flight, and finished jobs are
recorded together. Between jobs it offers to do the fleet's chores
(``apps.gateway.chores``).

Recovery: a job's started-registry entry expires ``heartbeat_ttl`` seconds after its last
heartbeat. If this process dies (SIGKILL, power loss), the next RQ maintenance pass (a
chore of the fleet) finds those entries expired and RQ re-enqueues the jobs (they are
enqueued with ``Retry``). The job function is safe to run twice: see ``apps.gateway.pipeline``.

Signals: SIGTERM/SIGINT stop taking jobs, let those in flight finish for ``grace``
seconds, then cancel the rest and put them back at the front of their queue, untouched.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError
from rq import Queue, worker_registration
from rq.command import parse_payload
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import clean_registries
from rq.suspension import is_suspended
from rq.worker import BaseWorker, WorkerStatus
from rq.worker_registration import REDIS_WORKER_KEYS

from apps.core import clients
from apps.gateway import runs
from apps.gateway.admission import COMPLETED_KEY
from apps.gateway.chores import Chores
from apps.gateway.intake import Intake, Popped, woken
from apps.gateway.runs import Running
from apps.gateway.stops import CANCEL_REQUEUE, CANCEL_STOP, CANCEL_TIMEOUT

logger = logging.getLogger(__name__)


class GatewayWorker(BaseWorker):
    def __init__(
        self,
        queues: list[Queue],
        *,
        concurrency: int,
        heartbeat_interval: float,
        heartbeat_ttl: int,
        grace: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            queues, maintenance_interval=kwargs.pop("maintenance_interval", 10), **kwargs
        )
        self.concurrency = concurrency
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_ttl = heartbeat_ttl
        self.grace = grace
        self.running: dict[str, Running] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._finished: list[tuple[Running, BaseException | None]] = []
        self.completed = 0
        self._redis_warned = 0.0
        self._last_beat = self._last_registered = 0.0  # monotonic
        self._function = runs.Functions()
        self.chores = Chores(self)
        self.intake = Intake(self.queues, self.connection)

    # --- RQ plumbing ------------------------------------------------------------------

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.heartbeat_ttl

    def clean_registries(self) -> None:
        """RQ's clean-up of every queue's registries, without RQ's lock. That lock lasts 15
        minutes, and a worker killed while it held it (a SIGKILL lands anywhere) left every
        other worker unable to re-run abandoned jobs for that long; the fleet's chores run
        this under a lease that lapses with its holder's heartbeat instead
        (``apps.gateway.chores``)."""
        for queue in self.queues:
            clean_registries(queue, self._exc_handlers)
            worker_registration.clean_worker_registry(queue)
            queue.intermediate_queue.cleanup(self, queue)

    def handle_payload(self, message: dict[str, Any]) -> None:
        """RQ commands arrive on a pub/sub thread; hand them to the loop."""
        payload = parse_payload(message)
        command = payload.get("command")
        if command == "stop-job":
            self._call_soon(self._cancel_job, payload.get("job_id", ""), CANCEL_STOP)
        elif command == "shutdown":
            self._call_soon(self._request_stop)

    def _redis_trouble(self, exc: BaseException) -> None:
        now_ = time.monotonic()
        if now_ - self._redis_warned > 5:
            self._redis_warned = now_
            logger.warning("worker %s: Redis is not answering (%s); retrying", self.name, exc)

    def _call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback, *args)

    def _cancel_job(self, job_id: str, reason: str) -> None:
        running = self.running.get(job_id)
        if running and running.task and not running.task.done():
            running.cancel_reason = reason
            running.task.cancel(reason)

    def _request_stop(self) -> None:
        if not self._stopping:
            logger.info("worker %s: stopping; %d in flight", self.name, len(self.running))
        self._stopping = True
        if self._wake:
            self._wake.set()

    # --- Main loop --------------------------------------------------------------------

    def work(  # type: ignore[override]
        self, burst: bool = False, logging_level: str | None = "WARNING", **kwargs: Any
    ) -> bool:
        self.bootstrap(logging_level)
        try:
            asyncio.run(self._main(burst))
        finally:
            self.teardown()  # type: ignore[no-untyped-call]
        return self.completed > 0

    async def _main(self, burst: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self._request_stop)
        housekeeping = asyncio.create_task(self._housekeeping())
        checks = asyncio.create_task(self.chores.health_checks())
        maintenance = asyncio.create_task(self.chores.maintenance())
        try:
            await self._dispatch(burst)
            await self._drain()
        finally:
            housekeeping.cancel()
            checks.cancel()
            maintenance.cancel()
            self._flush_finished()
            http = clients.http.current()
            if http is not None:
                await http.aclose()

    async def _dispatch(self, burst: bool) -> None:
        assert self._wake is not None
        suspended_checked, suspended = 0.0, False
        while not self._stopping:
            try:
                if time.monotonic() - suspended_checked > 1.0:
                    suspended_checked = time.monotonic()
                    suspended = bool(is_suspended(self.connection, self))
                    self.intake.refresh_paused()
                    self.set_state(
                        WorkerStatus.SUSPENDED
                        if suspended
                        else (WorkerStatus.BUSY if self.running else WorkerStatus.IDLE)
                    )
                free = self.concurrency - len(self.running)
                started = 0
                if free > 0 and not suspended:
                    started = await self._start_batch(free)
                if burst and not started and not self.running:
                    return
                if started and started == free:
                    continue
                if started:
                    await asyncio.sleep(0)
                    continue
                # Nothing to start: wait for a slot, a new job, or a stop — briefly, so new jobs
                # are picked up fast without a blocking pop stalling the loop.
                self._wake.clear()
                if free > 0 and not suspended:
                    first = await self.intake.wait(self._wake)
                    if first is not None and self._stopping:
                        self.intake.put_back(first)  # not ours to start any more
                    elif first is not None:
                        await self._start_batch(free, first)
                else:
                    await woken(self._wake, 1.0)
            except RedisError as exc:
                # Redis restarting or unreachable: keep what is in flight, retry in a
                # second (redis-py reconnects by itself), never die over it.
                self._redis_trouble(exc)
                await asyncio.sleep(1.0)

    async def _start_batch(self, free: int, first: Popped | None = None) -> int:
        """Pop up to ``free`` jobs, queues in priority order, and start them together.
        ``first`` is a job the blocking wait already popped."""
        popped = self.intake.take(free, first)
        if not popped:
            return 0
        all_ids = [job_id for _, ids in popped for job_id in ids]
        by_id = {job.id: job for job in self._fetch(all_ids)}
        batch: list[Running] = []
        with self.connection.pipeline() as pipe:
            for queue, ids in popped:
                for job_id in ids:
                    job = by_id.get(job_id)
                    if job is None or job.get_status(refresh=False) == JobStatus.CANCELED:
                        continue  # deleted or cancelled while queued
                    batch.append(
                        runs.start(
                            job, queue, pipe=pipe, worker_name=self.name, ttl=self.heartbeat_ttl
                        )
                    )
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            pipe.execute()
        for running in batch:
            self.running[running.job.id] = running
            running.task = asyncio.create_task(self._run(running), name=running.job.id)
        return len(batch)

    def _fetch(self, job_ids: list[str]) -> list[Job]:
        """The jobs, skipping any whose record cannot be read (corrupt, or written by
        someone else): logged and left alone, never the end of the worker."""
        try:
            fetched = self.job_class.fetch_many(job_ids, self.connection, self.serializer)
            return [job for job in fetched if job]
        except RedisError:
            raise
        except Exception:
            found = []
            for job_id in job_ids:
                try:
                    job = self.job_class.fetch(
                        job_id, connection=self.connection, serializer=self.serializer
                    )
                    job.get_status(refresh=False)
                    found.append(job)
                except NoSuchJobError:
                    continue
                except Exception:
                    logger.error("job %s: its record cannot be read; skipped", job_id)
            return found

    async def _run(self, running: Running) -> None:
        job = running.job
        timer = None
        if job.timeout and job.timeout > 0:
            timer = asyncio.get_running_loop().call_later(
                job.timeout, self._cancel_job, job.id, CANCEL_TIMEOUT
            )
        try:
            error = await runs.perform(running, self._function)
        finally:
            if timer is not None:
                timer.cancel()
        self.running.pop(job.id, None)
        self._finished.append((running, error))
        if len(self._finished) >= 32:
            self._flush_finished()
        if self._wake:
            self._wake.set()

    def _flush_finished(self) -> None:
        """Record finished jobs in RQ's registries, all in one pipeline."""
        if not self._finished:
            return
        finished, self._finished = self._finished, []
        try:
            self._record_finished(finished)
        except RedisError as exc:
            # The ledger already holds each answer; only RQ's registries miss these.
            self._redis_trouble(exc)

    def _record_finished(self, finished: list[tuple[Running, BaseException | None]]) -> None:
        requeue: list[Running] = []
        with self.connection.pipeline() as pipe:
            for running, error in finished:
                if not runs.finish(running, error, pipe=pipe, worker=self):
                    requeue.append(running)
                elif error is None:
                    self.completed += 1
            if not self.running:
                self.set_state(WorkerStatus.IDLE, pipeline=pipe)
            # Recent throughput, for queue-position estimates (apps.gateway.admission).
            second_key = COMPLETED_KEY.format(second=int(time.time()))
            pipe.incrby(second_key, len(finished))
            pipe.expire(second_key, 120)
            pipe.execute()
        for running in requeue:
            # Back to the front of its queue, as it was before this worker took it.
            running.queue.enqueue_job(running.job, at_front=True)

    async def _housekeeping(self) -> None:
        """Heartbeats for the worker and every job in flight; finished-job flushes; the
        fleet's gauges. Nothing here may take long: a late heartbeat abandons every job in
        flight."""
        while True:
            await asyncio.sleep(min(self.heartbeat_interval, 0.05 if self._finished else 0.5))
            try:
                self._flush_finished()
                self._heartbeat()
                await self.chores.record_gauges()
            except Exception as exc:  # Redis away, most likely: try again next round
                self._redis_trouble(exc)

    def _heartbeat(self) -> None:
        if time.monotonic() - self._last_beat >= self.heartbeat_interval:
            self._last_beat = time.monotonic()
            with self.connection.pipeline() as pipe:
                self.heartbeat(self.heartbeat_ttl + 60, pipeline=pipe)
                # For the console's workers page.
                pipe.hset(
                    self.key,
                    mapping={"barista_inflight": len(self.running), "barista_done": self.completed},
                )
                runs.heartbeat(list(self.running.values()), pipe=pipe, ttl=self.heartbeat_ttl)
                pipe.execute()
        if time.monotonic() - self._last_registered >= self.maintenance_interval:
            self._last_registered = time.monotonic()
            if not self.connection.sismember(REDIS_WORKER_KEYS, self.key):
                # Redis came back without our registration (a restart without
                # persistence): register again, so the fleet and the console see us.
                self.connection.delete(self.key)
                self.register_birth()  # type: ignore[no-untyped-call]

    async def _drain(self) -> None:
        """Stop: let in-flight jobs finish for ``grace`` s, then requeue the rest."""
        tasks = [r.task for r in self.running.values() if r.task is not None]
        if tasks:
            logger.warning(
                "worker %s: waiting up to %.0f s for %d prompts in flight",
                self.name,
                self.grace,
                len(tasks),
            )
            await asyncio.wait(tasks, timeout=self.grace)
        leftover = [r.task for r in self.running.values() if r.task is not None]
        for job_id in list(self.running):
            self._cancel_job(job_id, CANCEL_REQUEUE)
        if leftover:
            await asyncio.wait(leftover)
        self._flush_finished()
