"""The reconciler: rows Redis lost track of are queued again or failed, never left."""

from __future__ import annotations

import datetime
import uuid

import pytest
from django.utils import timezone

from apps.chat.services import chat_prompt_submit
from apps.gateway import reconciler
from apps.gateway.models import PromptRequest
from apps.gateway.queues import connection

pytestmark = pytest.mark.django_db(transaction=True)


def aged(request_id, *, seconds: float, **fields) -> None:
    then = timezone.now() - datetime.timedelta(seconds=seconds)
    PromptRequest.objects.filter(id=request_id).update(queued_at=then, **fields)


def queued_ids(redis) -> list[str]:
    return [i.decode() for i in redis.lrange("rq:queue:interactive", 0, -1)]


def test_waiting_rows_whose_jobs_are_gone_or_ended_are_queued_again(alice, settings):
    redis = connection()
    lost = chat_prompt_submit(user=alice, model="sim-chat", content="lost")
    ended = chat_prompt_submit(user=alice, model="sim-chat", content="ended")
    fine = chat_prompt_submit(user=alice, model="sim-chat", content="fine")
    young = chat_prompt_submit(user=alice, model="sim-chat", content="young")
    popped = chat_prompt_submit(user=alice, model="sim-chat", content="popped")
    redis.flushdb()  # Redis came back empty
    # Three whose jobs did come back: one ended, one waiting in its queue, and one a
    # worker popped from the queue and died holding before it started it.
    for request in (ended, fine, popped):
        redis.hset(f"rq:job:{request.id}", mapping={"status": "queued", "origin": "interactive"})
    redis.hset(f"rq:job:{ended.id}", "status", "failed")
    redis.rpush("rq:queue:interactive", str(fine.id))
    for request in (lost, ended, fine, popped):
        aged(request.id, seconds=settings.BARISTA_RECONCILE_AFTER + 5)

    done = reconciler.reconcile(redis)
    assert done.requeued == 3 and done.failed == 0
    assert sorted(queued_ids(redis)) == sorted(
        [str(fine.id), str(lost.id), str(ended.id), str(popped.id)]
    )
    assert str(young.id) not in queued_ids(redis)  # too young to judge
    assert redis.hget(f"rq:job:{ended.id}", "status") == b"queued"  # a fresh job
    assert reconciler.reconcile(redis).requeued == 0  # and not twice


def test_running_rows_lost_past_their_timeout_fail_with_a_reason(alice, settings):
    redis = connection()
    stale = timezone.now() - datetime.timedelta(
        seconds=settings.BARISTA_JOB_TIMEOUT + settings.BARISTA_RECONCILE_AFTER + 5
    )
    gone = chat_prompt_submit(user=alice, model="sim-chat", content="gone")
    ended = chat_prompt_submit(user=alice, model="sim-chat", content="ended")
    recent = chat_prompt_submit(user=alice, model="sim-chat", content="recent")
    redis.flushdb()
    redis.hset(f"rq:job:{ended.id}", "status", "failed")
    PromptRequest.objects.filter(id__in=[gone.id, ended.id]).update(
        status="running", started_at=stale, queued_at=stale
    )
    PromptRequest.objects.filter(id=recent.id).update(status="running", started_at=timezone.now())

    assert reconciler.reconcile(redis).failed == 2
    for request in (gone, ended):
        row = PromptRequest.objects.get(id=request.id)
        assert row.status == "failed" and row.error == reconciler.LOST_WHILE_RUNNING
    assert PromptRequest.objects.get(id=recent.id).status == "running"  # may still answer


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
