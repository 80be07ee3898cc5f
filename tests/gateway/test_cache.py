"""The AI thinks once: the response cache and request coalescing, with a real Redis, real
worker processes and a slow simulator whose /stats counts the backend calls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import pytest
import redis
from channels.db import database_sync_to_async
from hypothesis import given
from hypothesis import strategies as st

from apps.chat.models import Message
from apps.chat.selectors import conversation_history
from apps.core import clients
from apps.gateway import cache
from apps.gateway.admission import Principal
from apps.gateway.localrun import free_port
from apps.gateway.models import PromptRequest
from apps.gateway.operations import request_cancel
from apps.gateway.services import request_submit
from tests.conftest import make_user, wait_for
from tests.gateway.test_end_to_end import collect, open_socket, send_prompt, streamed_text

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("lifted_limits")]

QUESTION = [{"role": "user", "content": "What is a cortado?"}]


def ask(owner, messages=QUESTION, **fields):
    return request_submit(
        principal=Principal(owner.pk), model="sim-chat", messages=messages, **fields
    )


def all_final(count: int, timeout: float = 30) -> None:
    wait_for(
        lambda: (
            PromptRequest.objects.filter(status__in=["done", "failed", "cancelled"]).count()
            == count
        ),
        timeout=timeout,
    )


def outcomes() -> Counter[str]:
    return Counter(PromptRequest.objects.values_list("cache_outcome", flat=True))


def test_100_identical_prompts_cost_one_backend_call_late_joiners_included(
    start_simulator, start_worker
):
    simulator = start_simulator("--ttft", "0.5", "--tps", "20", "--tokens", "40")  # ~2.5 s
    simulator.register(share_answers=True)  # staff share its answers
    people = [make_user(f"person{i}") for i in range(100)]
    start_worker()
    for person in people[:50]:
        ask(person)
    wait_for(lambda: simulator.stats()["in_flight"] == 1)
    time.sleep(1.0)  # tokens are flowing: the other fifty join late
    for person in people[50:]:
        ask(person)
    all_final(100)

    assert simulator.stats()["requests_total"] == 1
    rows = list(PromptRequest.objects.all())
    assert {row.status for row in rows} == {"done"}
    assert len({row.answer for row in rows}) == 1
    assert '"What is a cortado?"' in rows[0].answer
    assert outcomes() == {"miss": 1, "coalesced": 99}
    # The next asker is answered from the cache, still without a backend call.
    hit = ask(make_user("late-comer"))
    assert hit.status == "done" and hit.cache_outcome == "hit" and hit.answer == rows[0].answer
    assert simulator.stats()["requests_total"] == 1
    counted = cache.counters(clients.sync_redis())
    assert (counted["miss"], counted["coalesced"], counted["hit"]) == (1, 99, 1)
    assert counted["tokens_saved"] > 0


def test_by_default_each_persons_answers_are_their_own(start_simulator, start_worker):
    """Private by default: identical questions from three people are three backend calls
    (a person's own repeats still share one), and no one's key is anyone else's."""
    simulator = start_simulator("--ttft", "0.5", "--tps", "0")
    simulator.register()
    people = [make_user(f"person{i}") for i in range(3)]
    for person in people:
        for _ in range(3):
            ask(person)
    start_worker()
    all_final(9)
    assert simulator.stats()["requests_total"] == 3
    assert outcomes() == {"miss": 3, "coalesced": 6}
    for person in people:  # each person's three share one answer, made for them
        answers = set(PromptRequest.objects.filter(owner=person).values_list("answer", flat=True))
        assert len(answers) == 1
        followed = PromptRequest.objects.filter(owner=person).exclude(coalesced_with=None)
        leaders = {str(leader) for leader in followed.values_list("coalesced_with", flat=True)}
        assert set(
            PromptRequest.objects.filter(id__in=leaders).values_list("owner", flat=True)
        ) == {person.pk}
    # A repeat later: a hit on the person's own answer, not a backend call.
    assert ask(people[0]).cache_outcome == "hit"
    assert simulator.stats()["requests_total"] == 3


def test_a_failed_leader_hands_over_to_a_follower_who_is_not_given_the_error(
    start_simulator, start_worker
):
    simulator = start_simulator("--fail-first", "1", "--ttft", "0.2", "--tps", "0")
    simulator.register(share_answers=True)  # staff share its answers
    people = [make_user(f"person{i}") for i in range(5)]
    leader, *followers = [ask(person) for person in people]
    start_worker()
    all_final(5)

    assert simulator.stats()["requests_total"] == 2  # the failed call, and the new leader's
    leader.refresh_from_db()
    assert leader.status == "failed" and "HTTP 500" in leader.error
    rows = PromptRequest.objects.filter(id__in=[f.id for f in followers])
    assert {row.status for row in rows} == {"done"}
    assert Counter(row.cache_outcome for row in rows) == {"miss": 1, "coalesced": 3}
    assert not any(row.error for row in rows)


def test_the_leaders_owner_cancelling_does_not_stop_the_followers(start_simulator, start_worker):
    simulator = start_simulator("--ttft", "0.3", "--tps", "10", "--tokens", "20")
    simulator.register(share_answers=True)  # staff share its answers
    alice, bob, carol = (make_user(name) for name in ("alice2", "bob2", "carol2"))
    start_worker()
    leader = ask(alice)
    wait_for(lambda: simulator.stats()["in_flight"] == 1)
    followers = [ask(bob), ask(carol)]
    cancelled = request_cancel(owner_id=alice.pk, request_id=leader.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    all_final(3)
    assert simulator.stats()["requests_total"] == 1
    assert simulator.stats()["disconnects_total"] == 0  # the call went on, for them
    leader.refresh_from_db()
    assert leader.status == "cancelled" and leader.answer == ""
    for follower in followers:
        follower.refresh_from_db()
        assert follower.status == "done" and '"What is a cortado?"' in follower.answer


def test_a_leader_cancelled_before_it_ran_hands_over(start_simulator, start_worker):
    simulator = start_simulator("--ttft", "0.2", "--tps", "0")
    simulator.register(share_answers=True)  # staff share its answers
    alice, bob, carol = (make_user(name) for name in ("alice3", "bob3", "carol3"))
    leader, *followers = ask(alice), ask(bob), ask(carol)
    request_cancel(owner_id=alice.pk, request_id=leader.id)
    start_worker()
    all_final(3)
    assert simulator.stats()["requests_total"] == 1
    assert [PromptRequest.objects.get(id=f.id).status for f in followers] == ["done", "done"]


def test_failed_cancelled_and_truncated_answers_are_not_cached(
    alice, start_simulator, start_worker
):
    simulator = start_simulator("--error-rate", "1", "--ttft", "0", "--tps", "0")
    simulator.register(share_answers=True)  # staff share its answers
    start_worker()
    failed = ask(alice)
    all_final(1)
    assert PromptRequest.objects.get(id=failed.id).status == "failed"
    assert cache.lookup(failed.cache_key) is None

    simulator.control(error_rate=0)
    again = ask(alice)
    all_final(2)
    assert PromptRequest.objects.get(id=again.id).cache_outcome == "miss"
    assert simulator.stats()["requests_total"] == 2  # the failure was not replayed

    short = [{"role": "user", "content": "Be brief."}]
    ask(alice, short, params={"max_tokens": 3})
    all_final(3)
    ask(alice, short, params={"max_tokens": 3})
    all_final(4)
    assert simulator.stats()["requests_total"] == 4  # cut short by max_tokens: not kept


def test_bypass_asks_the_backend_again(alice, start_simulator, start_worker):
    simulator = start_simulator("--ttft", "0", "--tps", "0")
    simulator.register(share_answers=True)  # staff share its answers
    start_worker()
    ask(alice)
    all_final(1)
    assert ask(alice).cache_outcome == "hit"
    fresh = ask(alice, bypass_cache=True)
    all_final(3)
    fresh.refresh_from_db()
    assert fresh.cache_outcome == "miss" and fresh.cache_key == ""
    assert simulator.stats()["requests_total"] == 2


def test_policy_off_and_deterministic(alice, settings):
    def key(**params):
        return cache.cache_key(alias="a", messages=QUESTION, params=params, owner_id=1)

    settings.BARISTA_CACHE_POLICY = "deterministic"
    assert key() is None and key(temperature=0.7) is None
    assert key(temperature=0) is not None and key(seed=7, temperature=0.9) is not None
    settings.BARISTA_CACHE_POLICY = "off"
    assert key(temperature=0) is None


def test_the_key_ignores_what_does_not_change_the_answer():
    def key(messages=QUESTION, owner=1, **params):
        return cache.cache_key(alias="a", messages=messages, params=params, owner_id=owner)

    assert key(stream=True, user="x", stream_options={"include_usage": True}) == key()
    assert key(owner=2) != key()  # private by default: the owner is part of the key
    # Strings are kept as sent: these are different requests, not one.
    assert key(messages=[{"role": "user", "content": "  What is a cortado?\n"}]) != key()
    assert len({key(stop="\n"), key(stop="\n\n"), key(stop=" "), key()}) == 4
    assert key(temperature=0.5) != key(temperature=0.6)
    assert key(max_tokens=5) != key()
    assert key(messages=[{"role": "system", "content": "What is a cortado?"}]) != key()


def test_answers_are_shared_only_where_staff_share_them_or_the_scope_is_global(settings):
    from apps.backends.enabled import enabled_backends
    from apps.backends.models import Backend

    def key(owner, alias="faq"):
        return cache.cache_key(alias=alias, messages=QUESTION, params={}, owner_id=owner)

    Backend.objects.create(
        name="faq-1", alias="faq", base_url="http://127.0.0.1:9/v1", model_name="m"
    )
    enabled_backends.expire()
    assert key(1) != key(2) and not cache.shared("faq")
    Backend.objects.update(share_answers=True)
    enabled_backends.expire()
    assert key(1) == key(2) and cache.shared("faq")
    assert key(1, "other") != key(2, "other")
    settings.BARISTA_CACHE_SCOPE = "global"
    assert key(1, "other") == key(2, "other")


@given(st.dictionaries(st.sampled_from(["temperature", "top_p", "seed", "stop"]), st.integers()))
def test_the_key_does_not_depend_on_parameter_order(params):
    forward = cache.cache_key(alias="a", messages=QUESTION, params=params, owner_id=1)
    backward = dict(reversed(list(params.items())))
    assert cache.cache_key(alias="a", messages=QUESTION, params=backward, owner_id=1) == forward


async def test_a_hit_streams_back_in_the_same_shape_as_a_live_answer(
    alice, bob, start_simulator, start_worker
):
    simulator = start_simulator("--ttft", "0.1", "--tps", "100", "--tokens", "40")
    await database_sync_to_async(simulator.register)(share_answers=True)
    start_worker()
    first, second = await open_socket(alice), await open_socket(bob)
    await send_prompt(first, "Tell me about crema")
    live = [f for f in await collect(first) if f["type"] != "queue"]
    await send_prompt(second, "Tell me about crema")
    replayed = await collect(second)

    def shape(frames):
        kinds = [f["type"] for f in frames]
        return [kinds[0], kinds[1], "tokens", kinds[-1]], set(kinds[2:-1])

    assert shape(live) == shape(replayed) == (["accepted", "status", "tokens", "done"], {"tokens"})
    assert replayed[-1]["content"] == live[-1]["content"]
    assert streamed_text(replayed) == replayed[-1]["content"]
    assert (live[-1]["cache"], replayed[-1]["cache"]) == ("miss", "hit")
    assert set(live[-1]) == set(replayed[-1])  # the same fields in the final frame
    stats = await asyncio.to_thread(simulator.stats)
    assert stats["requests_total"] == 1
    # Bob's conversation holds the answer, like any other.

    def conversation_of(request_id):
        conversation = Message.objects.get(request_id=request_id).conversation
        return [(m["role"], m["content"]) for m in conversation_history(conversation=conversation)]

    messages = await database_sync_to_async(conversation_of)(replayed[-1]["request"])
    assert messages == [("user", "Tell me about crema"), ("assistant", live[-1]["content"])]
    await first.disconnect()
    await second.disconnect()


async def test_a_late_follower_on_the_chat_socket_gets_every_token_from_the_start(
    alice, bob, start_simulator, start_worker
):
    simulator = start_simulator("--ttft", "0.2", "--tps", "20", "--tokens", "40")
    await database_sync_to_async(simulator.register)(share_answers=True)
    start_worker()
    first, second = await open_socket(alice), await open_socket(bob)
    await send_prompt(first, "Why does milk foam?")
    seen: list[dict[str, Any]] = []
    while sum(len(f.get("text", "")) for f in seen) < 40:  # the leader's person reads a bit
        seen.append(await first.receive_json_from(timeout=10))
    await send_prompt(second, "Why does milk foam?")
    leader_frames, follower_frames = await asyncio.gather(collect(first), collect(second))
    leader_frames = seen + leader_frames

    tokens = [f for f in follower_frames if f["type"] == "tokens"]
    assert tokens[0]["offset"] == 0 and len(tokens[0]["text"]) >= 40  # caught up at once
    assert follower_frames[-1]["content"].startswith(streamed_text(follower_frames))
    assert follower_frames[-1]["content"] == leader_frames[-1]["content"]
    assert follower_frames[-1]["cache"] == "coalesced"
    assert {f["request"] for f in follower_frames if "request" in f} == {
        follower_frames[0]["request"]
    }
    stats = await asyncio.to_thread(simulator.stats)
    assert stats["requests_total"] == 1
    await first.disconnect()
    await second.disconnect()


def test_counts_from_many_threads_reach_redis_once_each_without_being_read(redis_conn):
    """Counted in the process, added to the shared hash within a moment, whoever reads."""
    saved = cache.CachedAnswer("an answer", None, 3, 4, cost="0.5")

    def count_some() -> None:
        for _ in range(50):
            cache.count("hit", saved=saved)
        cache.count("miss")

    threads = [threading.Thread(target=count_some) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cache.add_saved(saved, 10)
    wait_for(lambda: redis_conn.hget(cache.COUNTERS_KEY, "hit") == b"200", timeout=5)
    wait_for(lambda: redis_conn.hget(cache.COUNTERS_KEY, "tokens_saved") == b"1470", timeout=5)
    counted = cache.counters(redis_conn)
    assert (counted["hit"], counted["miss"], counted["coalesced"]) == (200, 4, 0)
    assert counted["cost_saved"] == pytest.approx(105.0)


def test_counts_made_while_redis_is_away_are_added_when_it_is_back(redis_conn, monkeypatch):
    away = redis.Redis(port=free_port(), socket_connect_timeout=0.5)  # nothing listens there
    monkeypatch.setattr(clients, "sync_redis", lambda url=None: away)
    cache.count("miss")
    cache.counts.flush()  # refused: kept
    assert redis_conn.hget(cache.COUNTERS_KEY, "miss") is None
    monkeypatch.undo()
    cache.count("miss")
    cache.counts.flush()
    assert redis_conn.hget(cache.COUNTERS_KEY, "miss") == b"2"
