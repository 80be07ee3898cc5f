"""What someone who can write to Redis cannot do: make a worker run code of their
choosing, or have a stored value run code when read. Jobs and cached answers are JSON."""

from __future__ import annotations

import pickle

import pytest
from django.core.cache import cache as django_cache
from rq.job import Job

from apps.gateway import cache, runs
from apps.gateway.queues import SERIALIZER, queue
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("lifted_limits")]


class Boom:
    """Unpickling this would run code (it records that it did)."""

    ran = False

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (Boom._run, ())

    @staticmethod
    def _run() -> str:
        Boom.ran = True
        return "ran"


def test_a_worker_refuses_a_job_that_is_not_barista_s(redis_conn):
    job = queue("interactive").create_job("os.system", args=("echo owned",))
    assert job.serializer is SERIALIZER or queue("interactive").serializer is SERIALIZER
    with pytest.raises(PermissionError, match="not Barista's: 'os.system'"):
        runs.Functions()(job)
    ours = queue("interactive").create_job(runs.PROCESS_REQUEST_JOB, args=("x",))
    assert callable(runs.Functions()(ours))


def test_jobs_and_cached_answers_are_stored_as_json_and_a_pickle_is_not_loaded(
    redis_conn, queue_conn
):
    job = queue("interactive").create_job(runs.PROCESS_REQUEST_JOB, args=("req-1",))
    job.save()
    stored = queue_conn.hget(f"rq:job:{job.id}", "data")
    assert stored is not None
    loaded = Job.fetch(job.id, connection=queue_conn, serializer=SERIALIZER)
    assert loaded.args == ("req-1",) or list(loaded.args) == ["req-1"]
    # A pickle planted where a job's data goes is refused, not run.
    queue_conn.hset(f"rq:job:{job.id}", "data", pickle.dumps(Boom()))
    with pytest.raises(Exception):  # noqa: B017 - whichever error: it must not load
        Job.fetch(job.id, connection=queue_conn, serializer=SERIALIZER).func_name  # noqa: B018
    assert not Boom.ran
    # A cached answer is JSON; a pickle planted under an answer's key is not loaded.
    answer = cache.CachedAnswer("hello", 1, 2, 3, extra={"tool_calls": []})
    assert b'"answer"' in cache.encode(answer)
    redis_conn.set(cache.redis_key("sim-chat:planted"), pickle.dumps(Boom()))
    with pytest.raises(Exception):  # noqa: B017
        django_cache.get("answer:sim-chat:planted")
    assert cache.lookup("sim-chat:planted") is None  # a miss, not an error
    assert not Boom.ran


def test_a_running_worker_fails_a_planted_job_without_running_it(
    queue_conn, start_worker, tmp_path
):
    planted = tmp_path / "owned"
    job = queue("interactive").create_job("os.system", args=(f"touch {planted}",))
    job.save()
    queue_conn.rpush(queue("interactive").key, job.id)  # straight into the line
    start_worker()
    wait_for(
        lambda: (
            Job.fetch(job.id, connection=queue_conn, serializer=SERIALIZER).get_status() == "failed"
        ),
        timeout=20,
    )
    assert not planted.exists()


def test_callbacks_a_job_record_names_are_never_called(queue_conn):
    """RQ calls a job's callbacks by the import path its record holds (in its clean-ups
    too): Barista's job class ignores them."""
    from apps.gateway.queues import BaristaJob

    job = queue("interactive").create_job(runs.PROCESS_REQUEST_JOB, args=("x",))
    job.save()
    queue_conn.hset(
        f"rq:job:{job.id}",
        mapping={
            "success_callback_name": "os.system",
            "failure_callback_name": "os.system",
            "stopped_callback_name": "os.system",
        },
    )
    loaded = BaristaJob.fetch(job.id, connection=queue_conn, serializer=SERIALIZER)
    assert (
        type(queue("interactive")).job_class is BaristaJob
        or queue("interactive").job_class is BaristaJob
    )
    assert (loaded.success_callback, loaded.failure_callback, loaded.stopped_callback) == (
        None,
        None,
        None,
    )
