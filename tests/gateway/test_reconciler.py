"""The reconciler: rows Redis lost track of are queued again or failed, never left."""

from __future__ import annotations

import datetime
import uuid

import pytest
from django.utils import timezone
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from apps.chat.services import chat_prompt_submit
from apps.gateway import fairness, reconciler, runs
from apps.gateway.models import PromptRequest
from apps.gateway.queues import connection, queue

pytestmark = pytest.mark.django_db(transaction=True)


def aged(request_id, *, seconds: float, **fields) -> None:
    then = timezone.now() - datetime.timedelta(seconds=seconds)
    PromptRequest.objects.filter(id=request_id).update(queued_at=then, **fields)


def queued_ids(redis) -> list[str]:
    return fairness.waiting_ids(redis, queue("interactive"), 1000)


def test_waiting_rows_whose_jobs_are_gone_or_ended_are_queued_again(alice, settings):
    redis = connection()
    lost = chat_prompt_submit(user=alice, model="sim-chat", content="lost")
    ended = chat_prompt_submit(user=alice, model="sim-chat", content="ended")
    fine = chat_prompt_submit(user=alice, model="sim-chat", content="fine")
    young = chat_prompt_submit(user=alice, model="sim-chat", content="young")
    popped = chat_prompt_submit(user=alice, model="sim-chat", content="popped")
    starting = chat_prompt_submit(user=alice, model="sim-chat", content="starting")
    redis.flushdb()  # Redis came back empty
    # Four whose jobs did come back: one ended, one waiting in its queue, one a worker
    # popped from the queue and died holding before it started it, and one a worker has
    # just started (its row not marked running yet).
    for request in (ended, fine, popped):
        redis.hset(f"rq:job:{request.id}", mapping={"status": "queued", "origin": "interactive"})
    redis.hset(f"rq:job:{ended.id}", "status", "failed")
    redis.rpush("rq:queue:interactive", str(fine.id))
    job = queue("interactive").create_job(runs.PROCESS_REQUEST_JOB, job_id=str(starting.id))
    job.origin = "interactive"
    with redis.pipeline() as pipe:  # as apps.gateway.runs.start records a run
        Execution.create(job, 20, pipeline=pipe, worker_name="w")
        job.set_status(JobStatus.STARTED, pipeline=pipe)
        job.save(pipeline=pipe)
        pipe.execute()
    for request in (lost, ended, fine, popped, starting):
        aged(request.id, seconds=settings.BARISTA_RECONCILE_AFTER + 5)

    done = reconciler.reconcile(redis)
    assert done.requeued == 2 and done.failed == 0
    assert sorted(queued_ids(redis)) == sorted([str(fine.id), str(lost.id), str(ended.id)])
    assert str(young.id) not in queued_ids(redis)  # too young to judge
    assert redis.hget(f"rq:job:{ended.id}", "status") == b"queued"  # a fresh job
    # A popped job is one a live worker is about to start, for a moment: it is only lost
    # when it is still neither waiting nor started a heartbeat later.
    assert reconciler.reconcile(redis).requeued == 0
    age_suspects(redis, seconds=settings.BARISTA_WORKER_HEARTBEAT + 1)
    assert reconciler.reconcile(redis).requeued == 1
    assert str(popped.id) in queued_ids(redis)
    assert reconciler.reconcile(redis).requeued == 0  # and not twice
    assert redis.hlen(reconciler.SUSPECTS_KEY) == 0


def test_a_job_a_live_worker_popped_is_not_queued_again_when_it_starts(alice, settings):
    """The moment between a worker's pop and its start: the reconciler must not give the
    prompt a second job then (it would be answered twice, and counted as started twice)."""
    redis = connection()
    request = chat_prompt_submit(user=alice, model="sim-chat", content="just popped")
    aged(request.id, seconds=settings.BARISTA_RECONCILE_AFTER + 5)
    interactive = queue("interactive")
    assert fairness.take(redis, interactive, 10) == [str(request.id)]  # a worker popped it

    assert reconciler.reconcile(redis).requeued == 0  # neither waiting nor started yet
    job = Job.fetch(str(request.id), connection=redis)
    with redis.pipeline() as pipe:  # the worker starts it
        running = runs.start(job, interactive, pipe=pipe, worker_name="w", ttl=20)
        pipe.execute()
    age_suspects(redis, seconds=settings.BARISTA_WORKER_HEARTBEAT + 1)

    assert reconciler.reconcile(redis).requeued == 0
    assert queued_ids(redis) == []
    assert Job.fetch(str(request.id), connection=redis).get_status() == "started"
    assert redis.exists(running.execution.key)
    assert redis.hlen(reconciler.SUSPECTS_KEY) == 0


def age_suspects(redis, *, seconds: float) -> None:
    """As if the reconciler's earlier pass had been ``seconds`` ago."""
    for request_id, since in redis.hgetall(reconciler.SUSPECTS_KEY).items():
        redis.hset(reconciler.SUSPECTS_KEY, request_id, float(since) - seconds)


def test_running_rows_no_worker_answers_are_queued_again_until_their_retries_run_out(
    alice, settings
):
    redis = connection()
    settings.BARISTA_JOB_RETRIES = 3
    a_while_ago = timezone.now() - datetime.timedelta(seconds=settings.BARISTA_RECONCILE_AFTER + 5)
    gone = chat_prompt_submit(user=alice, model="sim-chat", content="gone")
    ended = chat_prompt_submit(user=alice, model="sim-chat", content="ended")
    worn_out = chat_prompt_submit(user=alice, model="sim-chat", content="worn out")
    answering = chat_prompt_submit(user=alice, model="sim-chat", content="answering")
    recent = chat_prompt_submit(user=alice, model="sim-chat", content="recent")
    # Embeddings a web process is still waiting for: no job, and never given one.
    embedding = PromptRequest.objects.create(
        owner=alice, model="sim-embed", kind="embeddings", messages=[], status="running"
    )
    redis.flushdb()  # Redis came back empty
    redis.hset(f"rq:job:{ended.id}", mapping={"status": "failed", "origin": "interactive"})
    PromptRequest.objects.filter(id__in=[gone.id, ended.id, answering.id, embedding.id]).update(
        status="running", started_at=a_while_ago, queued_at=a_while_ago, attempts=1
    )
    PromptRequest.objects.filter(id=worn_out.id).update(
        status="running", started_at=a_while_ago, queued_at=a_while_ago, attempts=4
    )
    PromptRequest.objects.filter(id=recent.id).update(
        status="running", started_at=timezone.now(), attempts=1
    )
    # A live worker is still streaming this one: its heartbeat re-creates its execution.
    with redis.pipeline() as pipe:
        Execution("e1", str(answering.id), connection=redis).heartbeat(
            StartedJobRegistry("interactive", connection=redis), ttl=20, pipeline=pipe
        )
        pipe.execute()

    # Abandoned-looking rows are only suspects at first: a worker alive through a
    # Redis restart re-creates its executions at its next heartbeat.
    first = reconciler.reconcile(redis)
    assert (first.requeued, first.failed) == (0, 0)
    age_suspects(redis, seconds=settings.BARISTA_WORKER_HEARTBEAT + 1)

    second = reconciler.reconcile(redis)
    assert (second.requeued, second.failed) == (2, 1)
    for request in (gone, ended):
        row = PromptRequest.objects.get(id=request.id)
        assert row.status == "queued" and row.attempts == 1
        job = Job.fetch(str(request.id), connection=redis)
        assert job.get_status() == "queued" and job.retries_left == 2  # 4 starts in all
    assert sorted(queued_ids(redis)) == sorted([str(gone.id), str(ended.id)])
    row = PromptRequest.objects.get(id=worn_out.id)
    assert row.status == "failed" and row.error == reconciler.stopped_too_often(4)
    assert "4 times" in row.error
    for request_id in (answering.id, recent.id, embedding.id):  # may still answer
        assert PromptRequest.objects.get(id=request_id).status == "running"
    assert reconciler.reconcile(redis).requeued == 0  # and not twice
    assert redis.hlen(reconciler.SUSPECTS_KEY) == 0  # none left to suspect


def test_a_follower_whose_leader_finished_gets_a_job_of_its_own(alice, bob, settings):
    redis = connection()
    leader = chat_prompt_submit(user=alice, model="sim-chat", content="same")
    follower = chat_prompt_submit(user=bob, model="sim-chat", content="other")
    waiting_on_live_leader = chat_prompt_submit(user=bob, model="sim-chat", content="third")
    redis.flushdb()
    PromptRequest.objects.filter(id=leader.id).update(status="done")
    aged(
        follower.id,
        seconds=settings.BARISTA_RECONCILE_AFTER + 5,
        coalesced_with=leader.id,
        cache_outcome="coalesced",
    )
    aged(
        waiting_on_live_leader.id,
        seconds=settings.BARISTA_RECONCILE_AFTER + 5,
        coalesced_with=uuid.uuid4(),  # a leader still answering (not final)
    )
    PromptRequest.objects.create(
        id=PromptRequest.objects.get(id=waiting_on_live_leader.id).coalesced_with,
        owner=alice,
        model="sim-chat",
        messages=[],
        status="running",
    )
    assert reconciler.reconcile(redis).requeued == 1
    row = PromptRequest.objects.get(id=follower.id)
    assert row.coalesced_with is None and row.cache_outcome == "miss"
    assert queued_ids(redis) == [str(follower.id)]
