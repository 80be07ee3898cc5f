"""The fair lane on a real Redis: people take turns, and within a person their sources
(API keys, the chat page) take turns; the place in line shown is the turn a prompt runs in."""

from __future__ import annotations

import asyncio

import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rq import Queue

from apps.core.fairlock import FairLock
from apps.gateway import fairness


def lane(redis_conn: redis.Redis) -> Queue:
    return Queue("interactive", connection=redis_conn)


def push(redis_conn: redis.Redis, job_id: str, person: int, source: int | str = "") -> None:
    assert fairness.push(
        redis_conn, queue_name="interactive", job_id=job_id, person=person, source=source
    )


def take_all(redis_conn: redis.Redis, queue: Queue, *, blocking: bool = False) -> list[str]:
    taken: list[str] = []
    while True:
        if blocking:
            popped = fairness.wait_pop(redis_conn, [queue], timeout=0.01)
            ids = [popped[1]] if popped else []
        else:
            ids = fairness.take(redis_conn, queue, 1)
        if not ids:
            return taken
        taken.extend(ids)


def test_people_take_turns_and_a_latecomer_is_not_behind_a_backlog(redis_conn):
    queue = lane(redis_conn)
    for i in range(5):
        push(redis_conn, f"a{i}", person=1)
    push(redis_conn, "b0", person=2)
    assert fairness.position(redis_conn, [queue], "b0") == 2
    assert take_all(redis_conn, queue) == ["a0", "b0", "a1", "a2", "a3", "a4"]


def test_a_persons_keys_take_turns_within_their_share(redis_conn):
    """Alice's program floods key 7; her prompt from key 8 runs in her next turn, not
    after the flood — and her two keys together still get one person's share next to
    Bob's."""
    queue = lane(redis_conn)
    for i in range(6):
        push(redis_conn, f"k7-{i}", person=1, source=7)
    push(redis_conn, "k8-0", person=1, source=8)
    push(redis_conn, "bob-0", person=2)
    push(redis_conn, "bob-1", person=2)
    order = fairness.waiting_ids(redis_conn, queue, 100)
    # The place shown is the turn each prompt runs in.
    for place, job_id in enumerate(order, start=1):
        assert fairness.position(redis_conn, [queue], job_id) == place, (job_id, order)
    assert order[:4] == ["k7-0", "bob-0", "k8-0", "bob-1"]
    assert take_all(redis_conn, queue) == order
    assert order == ["k7-0", "bob-0", "k8-0", "bob-1", "k7-1", "k7-2", "k7-3", "k7-4", "k7-5"]


def test_the_blocking_pop_runs_the_same_order(redis_conn):
    queue = lane(redis_conn)
    for i in range(4):
        push(redis_conn, f"k7-{i}", person=1, source=7)
    push(redis_conn, "chat-0", person=1)
    push(redis_conn, "bob-0", person=2)
    expected = fairness.waiting_ids(redis_conn, queue, 100)
    assert expected[:4] == ["k7-0", "bob-0", "chat-0", "k7-1"]
    assert take_all(redis_conn, queue, blocking=True) == expected


def test_a_cancelled_prompt_leaves_no_turn_behind(redis_conn):
    queue = lane(redis_conn)
    for i in range(3):
        push(redis_conn, f"k7-{i}", person=1, source=7)
    push(redis_conn, "k8-0", person=1, source=8)
    push(redis_conn, "bob-0", person=2)
    fairness.remove(redis_conn, queue, "k8-0")
    fairness.remove(redis_conn, queue, "k7-0")
    assert fairness.position(redis_conn, [queue], "k8-0") is None
    order = fairness.waiting_ids(redis_conn, queue, 100)
    assert order == ["bob-0", "k7-1", "k7-2"]
    assert [fairness.position(redis_conn, [queue], j) for j in order] == [1, 2, 3]
    assert take_all(redis_conn, queue) == order
    # Nothing of Alice's waits: none of her bookkeeping is left.
    assert not redis_conn.keys("barista:fair:interactive:*:1")
    assert fairness.waiting_for(redis_conn, [queue], 1) == 0


async def test_the_backend_slot_line_takes_people_then_their_keys_in_turns():
    """FairLock, the line for a backend slot inside a worker: round robin by person,
    within a person by source, first come first served within a source; a waiter that
    gives up (cancelled) is passed over."""
    lock = FairLock()
    await lock.acquire("holder")
    granted: list[str] = []

    async def wait(name: str, party: str, source: object = None) -> None:
        async with lock.hold(party, source):
            granted.append(name)

    names = [("k7-0", 7), ("k7-1", 7), ("k7-2", 7), ("k8-0", 8)]
    tasks = [asyncio.create_task(wait(name, "alice", key)) for name, key in names]
    tasks.append(asyncio.create_task(wait("bob-0", "bob")))
    gives_up = asyncio.create_task(wait("bob-1", "bob"))
    await asyncio.sleep(0)  # every waiter is in line
    assert lock.waiting == 6
    gives_up.cancel()
    lock.release()
    await asyncio.gather(*tasks)
    assert granted == ["k7-0", "bob-0", "k8-0", "k7-1", "k7-2"]
    assert not lock.locked() and lock.waiting == 0


def test_a_prompt_cancelled_between_the_blocking_pop_and_its_script_is_not_put_back(
    redis_conn,
):
    queue = lane(redis_conn)
    for i in range(3):
        push(redis_conn, f"k7-{i}", person=1, source=7)
    push(redis_conn, "k8-0", person=1, source=8)
    assert fairness.take(redis_conn, queue, 1) == ["k7-0"]
    # What wait_pop does, in two steps, with a cancel between them. The turn popped is
    # held by k7-1, but k8-0 runs in it (her keys take turns): the script would swap them.
    popped = redis_conn.bzpopmin([fairness.lane("interactive")], timeout=1)
    assert popped[1] == b"k7-1"
    fairness.remove(redis_conn, queue, "k7-1")
    chosen = fairness._ADVANCE(
        redis_conn, keys=[], args=[fairness.lane("interactive"), "k7-1", popped[2]]
    )
    assert chosen == b"k7-1"  # handed on as it is (the worker finds it cancelled)
    assert fairness.waiting_ids(redis_conn, queue, 10) == ["k8-0", "k7-2"]
    assert fairness.waiting_for(redis_conn, [queue], 1) == 2
    assert take_all(redis_conn, queue) == ["k8-0", "k7-2"]
    assert fairness.waiting_for(redis_conn, [queue], 1) == 0


# Random pushes (four people, each from the chat page or one of three keys), takes of a
# few at a time, blocking pops and cancels; after each step the line is checked whole.
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(1, 4), st.sampled_from(["", 7, 8, 9])),
        st.tuples(st.just("take"), st.integers(1, 3)),
        st.tuples(st.just("pop")),
        st.tuples(st.just("cancel"), st.integers(0, 1000)),
    ),
    max_size=60,
)


@hypothesis_settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=STEPS)
def test_every_prompt_is_taken_once_in_the_order_shown(redis_conn, steps):
    """Whatever people send, take and cancel: each prompt is taken once unless cancelled,
    in the order the line shows, each shown at its place; the counts per person are
    right; and when the line is empty nobody's bookkeeping is left behind."""
    redis_conn.flushdb()
    queue = lane(redis_conn)
    waiting: dict[str, int] = {}  # job -> person
    sent_by: dict[str, tuple[int, object]] = {}  # job -> (person, source)
    taken: list[str] = []
    for number, step in enumerate(steps):
        shown = fairness.waiting_ids(redis_conn, queue, 1000)
        assert sorted(shown) == sorted(waiting)
        got: list[str] = []
        if step[0] == "push":
            job_id = f"j{number}"
            push(redis_conn, job_id, person=step[1], source=step[2])
            waiting[job_id] = step[1]
            sent_by[job_id] = (step[1], step[2])
        elif step[0] == "take":
            got = fairness.take(redis_conn, queue, step[1])
            assert got == shown[: step[1]]
        elif step[0] == "pop":
            popped = fairness.wait_pop(redis_conn, [queue], timeout=0.01)
            got = [popped[1]] if popped else []
            assert got == shown[:1]
        elif waiting:
            job_id = sorted(waiting)[step[1] % len(waiting)]
            fairness.remove(redis_conn, queue, job_id)
            del waiting[job_id]
        for job_id in got:
            del waiting[job_id]
        taken += got
        for person in range(1, 5):
            mine = sum(1 for owner in waiting.values() if owner == person)
            assert fairness.waiting_for(redis_conn, [queue], person) == mine
    shown = fairness.waiting_ids(redis_conn, queue, 1000)
    for place, job_id in enumerate(shown, start=1):
        assert fairness.position(redis_conn, [queue], job_id) == place
    assert fairness.take(redis_conn, queue, 1000) == shown
    taken += shown
    assert len(taken) == len(set(taken))
    # One person's prompts from one source run in the order they were sent.
    for sender in set(sent_by.values()):
        theirs = [int(job_id[1:]) for job_id in taken if sent_by[job_id] == sender]
        assert theirs == sorted(theirs)
    left = {key.decode() for key in redis_conn.keys("barista:fair:interactive*")}
    assert left <= {"barista:fair:interactive:clock"}
