"""A job's run as RQ records it, on RQ's public API, into a pipeline the worker batches.

RQ's stock workers record a run with ``handle_job_success`` / ``handle_job_failure``: a
pipeline (and a WATCH) per job, and the worker's one current execution. The gateway
worker has hundreds of runs at once and records them a batch at a time, so it composes
the public pieces those methods are made of, each into the pipeline it is given:

* **start** — an ``Execution`` (the job's entry in the started registry, with an expiry)
  and the job marked started;
* **perform** — the job's function called, and awaited;
* **heartbeat** — both extended, so the job is not taken for abandoned;
* **finish** — the execution deleted, then the job ``finished`` with its result in the
  finished registry, or ``failed`` / ``stopped`` with the reason in the failed registry
  (as RQ's ``handle_job_failure`` records a stopped job) — or, for a job cancelled by a
  shutdown or one that Redis failed mid-answer, nothing more: the worker puts it back at
  the front of its queue untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import import_attribute, now
from rq.worker import BaseWorker

from apps.gateway.stops import CANCEL_REQUEUE, CANCEL_STOP, CANCEL_TIMEOUT

# The one job function there is (by name: the job module imports the pipeline, which
# imports the services that enqueue it). A worker runs nothing else.
PROCESS_REQUEST_JOB = "apps.gateway.jobs.process_request_job"
ALLOWED_JOBS = frozenset({PROCESS_REQUEST_JOB})

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Running:
    """A job in flight in this worker."""

    job: Job
    queue: Queue
    execution: Execution
    task: asyncio.Task[Any] | None = None
    started: float = field(default_factory=time.monotonic)
    cancel_reason: str | None = None  # one of apps.gateway.stops, when the worker cancels
    result: Any = None


def start(job: Job, queue: Queue, *, pipe: Pipeline, worker_name: str, ttl: int) -> Running:
    """Record that this worker starts the job; its entry expires ``ttl`` s on."""
    execution = Execution.create(job, ttl, pipeline=pipe, worker_name=worker_name)
    job.prepare_for_execution(worker_name, pipeline=pipe)
    return Running(job=job, queue=queue, execution=execution)


async def perform(
    running: Running, functions: Callable[[Job], Callable[..., Any]]
) -> BaseException | None:
    """Run the job's function (``functions`` finds it; awaited if it is a coroutine
    function); its return value is kept in ``running.result``. Returns the exception that
    ended it, if one did — a job that is not Barista's, or cannot be read, included."""
    job = running.job
    try:
        result = functions(job)(*job.args, **job.kwargs)
        running.result = await result if isinstance(result, Awaitable) else result
    except asyncio.CancelledError as exc:  # the worker cancelled it: see running.cancel_reason
        return exc
    except Exception as exc:
        logger.exception("job %s raised", job.id)
        return exc
    finally:
        job.ended_at = now()
    return None


def heartbeat(runs: Iterable[Running], *, pipe: Pipeline, ttl: int) -> None:
    """Keep these runs' started-registry entries alive ``ttl`` s more."""
    stamp = now()
    for running in runs:
        running.execution.heartbeat(running.job.started_job_registry, ttl, pipeline=pipe)
        running.job.heartbeat(stamp, ttl, pipeline=pipe, xx=True)


def finish(
    running: Running,
    error: BaseException | None,
    *,
    pipe: Pipeline,
    worker: BaseWorker,
) -> bool:
    """Record how the run ended (``error`` None: it returned ``running.result``). False
    when it is not to be recorded as ended: it goes back to its queue (shutting down)."""
    job, execution = running.job, running.execution
    execution.delete(job=job, pipeline=pipe)
    run: dict[str, Any] = {
        "worker_name": worker.name,
        "pipeline": pipe,
        "execution_id": execution.id,
        "execution_started_at": execution.created_at,
        "execution_ended_at": job.ended_at,
    }
    if error is None:
        result_ttl = job.get_result_ttl(worker.default_result_ttl)
        job.set_status(JobStatus.FINISHED, pipeline=pipe)
        # As RQ saves a finished job: its meta is the job's own, not ours to clobber.
        job.save(pipeline=pipe, include_meta=False, include_result=False)
        Result.create(job, Result.Type.SUCCESSFUL, result_ttl, return_value=running.result, **run)
        if result_ttl != 0:
            job.finished_job_registry.add(job, result_ttl, pipeline=pipe)
        job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
        return True
    if running.cancel_reason == CANCEL_REQUEUE or isinstance(error, RedisError):
        # Given back (shutting down), or Redis went away mid-answer and the pipeline gave
        # the prompt back: first in line again, not a failure.
        return False
    if running.cancel_reason == CANCEL_STOP:
        status, text = JobStatus.STOPPED, "Stopped: the request was cancelled."
    elif running.cancel_reason == CANCEL_TIMEOUT:
        status, text = JobStatus.FAILED, f"Job exceeded its timeout ({job.timeout} s)."
    else:
        status, text = JobStatus.FAILED, f"{type(error).__name__}: {error}"
    job.set_status(status, pipeline=pipe)
    job.failed_job_registry.add(job, ttl=job.failure_ttl, exc_string=text, pipeline=pipe)
    Result.create_failure(job, job.failure_ttl, exc_string=text, **run)
    return True


class Functions:
    """Job functions, imported once per name: RQ's ``job.func`` imports one anew on every
    access, probing sys.path each time (a tenth of the worker's time)."""

    def __init__(self) -> None:
        self._imported: dict[str, Callable[..., Any]] = {}

    def __call__(self, job: Job) -> Callable[..., Any]:
        name = job.func_name
        if job.instance is not None or name not in ALLOWED_JOBS:
            # Whoever can write to Redis must not be able to run code here: a job naming
            # anything but Barista's own function fails, and runs nothing.
            raise PermissionError(f"refused a job that is not Barista's: {name!r}")
        function = self._imported.get(name)
        if function is None:
            function = self._imported[name] = import_attribute(name)
        return function
