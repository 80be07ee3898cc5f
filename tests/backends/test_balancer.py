"""The balancer's ranking (pure), and the balancer with live state against real simulators."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest
from django.core.exceptions import ValidationError

from apps.backends import live
from apps.backends.balancer import rank
from apps.backends.models import Backend
from apps.backends.validators import validate_backend_url
from apps.chat.services import chat_prompt_submit
from apps.gateway.models import PromptRequest
from tests.conftest import wait_for


def backend(pk, *, weight=1, cap=100, tier="primary"):
    return Backend(
        pk=pk,
        name=f"b{pk}",
        alias="a",
        model_name="m",
        base_url="http://x/v1",
        weight=weight,
        max_concurrency=cap,
        tier=tier,
    )


def state(in_flight=0, ttft=None):
    return live.BackendLive(in_flight, ttft)


def test_the_lowest_ewma_times_load_over_weight_comes_first():
    fast, slow = backend(1), backend(2)
    order = rank([slow, fast], {1: state(0, 0.05), 2: state(0, 0.5)}, "peak_ewma")
    assert [b.pk for b in order] == [1, 2]
    # Load counts: the fast one with 20 in flight scores 0.05 x 21 = 1.05 > 0.5 x 1.
    order = rank([slow, fast], {1: state(20, 0.05), 2: state(0, 0.5)}, "peak_ewma")
    assert [b.pk for b in order] == [2, 1]
    # Weight divides: at the same speed, weight 2 with 2 in flight (0.1 x 3 / 2 = 0.15)
    # still beats weight 1 with 1 in flight (0.1 x 2 = 0.2).
    heavy, light = backend(3, weight=2), backend(4)
    order = rank([light, heavy], {3: state(2, 0.1), 4: state(1, 0.1)}, "peak_ewma")
    assert [b.pk for b in order] == [3, 4]


def test_backends_at_their_cap_are_not_offered():
    full, free = backend(1, cap=2), backend(2, cap=2)
    assert rank([full, free], {1: state(2, 0.01), 2: state(1, 9.0)}, "peak_ewma") == [free]
    assert rank([full], {1: state(2)}, "peak_ewma") == []


def test_the_fallback_tier_is_used_only_when_no_primary_can_take_the_prompt():
    primary, fallback = backend(1, cap=1), backend(2, tier="fallback")
    assert rank([fallback, primary], {1: state(0, 5.0), 2: state(0, 0.01)}, "peak_ewma") == [
        primary,
        fallback,
    ]
    assert rank([fallback, primary], {1: state(1), 2: state(0)}, "peak_ewma") == [fallback]


def test_unmeasured_backends_are_tried_with_the_best_known_time():
    known, new = backend(1), backend(2)
    order = rank([known, new], {1: state(3, 0.2), 2: state(0, None)}, "peak_ewma")
    assert order[0] == new  # 0.2 x 1 beats 0.2 x 4


def test_large_pools_compare_two_random_backends():
    pool = [backend(i) for i in range(1, 21)]
    states = {i: state(0, 0.01 * i) for i in range(1, 21)}
    firsts = Counter(
        rank(pool, states, "peak_ewma", random.Random(seed))[0].pk for seed in range(300)
    )
    assert firsts[20] == 0  # the slowest can never win a comparison
    assert len(firsts) > 10  # not a full scan: many backends get picked


def test_the_other_strategies():
    a, b = backend(1, weight=1), backend(2, weight=3)
    assert rank([a, b], {1: state(5), 2: state(1)}, "least_inflight")[0] == b
    firsts = Counter(rank([a, b], {}, "weighted", random.Random(s))[0].pk for s in range(400))
    assert 250 < firsts[2] < 350  # about three in four
    rotations = {tuple(x.pk for x in rank([a, b], {}, "round_robin")) for _ in range(4)}
    assert rotations == {(1, 2), (2, 1)}


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/v1",
        "http://169.254.169.254/latest",
        "http://[fe80::1]/v1",
        "http://metadata.google.internal/v1",
        "http://user:pw@example.com/v1",
        "http://100.100.100.200/",
        "file:///etc/passwd",
    ],
)
def test_unsafe_backend_urls_are_refused(url):
    with pytest.raises(ValidationError):
        validate_backend_url(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9101/v1", "https://api.openai.com/v1"])
def test_ordinary_backend_urls_are_accepted(url):
    validate_backend_url(url)


async def test_leases_respect_the_cap_and_a_dead_holders_leases_expire():
    first = await live.try_acquire(991, cap=2, ttl=1.0)
    second = await live.try_acquire(991, cap=2, ttl=1.0)
    assert first and second
    assert await live.try_acquire(991, cap=2, ttl=1.0) is None
    assert (await live.snapshot([991]))[991].in_flight == 2
    await asyncio.sleep(1.2)  # nobody renewed them: the holder is presumed dead
    assert (await live.snapshot([991]))[991].in_flight == 0
    assert await live.try_acquire(991, cap=2, ttl=1.0)


async def test_the_ewma_jumps_up_at_once_and_comes_down_gradually():
    assert await live.observe_ttft(992, 0.1) == pytest.approx(0.1)
    assert await live.observe_ttft(992, 2.0) == pytest.approx(2.0)  # peak: at once
    lowered = await live.observe_ttft(992, 0.1)
    assert 0.1 < lowered < 2.0  # decays, does not drop


pytestmark_db = pytest.mark.django_db(transaction=True)


@pytestmark_db
def test_the_fast_backend_gets_most_prompts_and_caps_hold(
    alice, lifted_limits, start_simulator, start_worker
):
    fast = start_simulator("--ttft", "0.05", "--tps", "0", "--tokens", "10")
    slow = start_simulator("--ttft", "0.6", "--tps", "0", "--tokens", "10")
    fast.register(name="fast", max_concurrency=4)
    slow.register(name="slow", max_concurrency=4)
    for index in range(60):
        chat_prompt_submit(user=alice, model="sim-chat", content=f"p{index}")
    start_worker()
    wait_for(lambda: PromptRequest.objects.filter(status="done").count() == 60, timeout=60)
    served = Counter(PromptRequest.objects.values_list("backend__name", flat=True))
    assert served["fast"] > 2 * served["slow"]
    # The caps held: each simulator never had more than 4 at once, and nothing failed.
    assert fast.stats()["max_in_flight"] <= 4
    assert slow.stats()["max_in_flight"] <= 4


@pytestmark_db
def test_a_draining_backend_finishes_what_it_has_and_takes_nothing_new(
    alice, lifted_limits, start_simulator, start_worker
):
    first = start_simulator("--ttft", "1.5", "--tps", "0")
    second = start_simulator("--ttft", "0", "--tps", "0")
    draining = first.register(name="first")
    for index in range(5):
        chat_prompt_submit(user=alice, model="sim-chat", content=f"early {index}")
    start_worker()
    wait_for(lambda: first.stats()["in_flight"] == 5, timeout=15)
    draining.state = Backend.State.DRAINING
    draining.save()
    second.register(name="second")
    time.sleep(1.2)  # row changes reach workers within about a second (BackendDirectory)
    for index in range(5):
        chat_prompt_submit(user=alice, model="sim-chat", content=f"late {index}")
    wait_for(lambda: PromptRequest.objects.filter(status="done").count() == 10, timeout=30)
    assert first.stats()["completed_total"] == 5  # its in-flight prompts finished
    assert first.stats()["requests_total"] == 5  # and it took nothing new
    assert second.stats()["requests_total"] == 5


def test_a_backend_whose_cool_down_is_over_gets_one_probe_first():
    healthy, recovering = backend(1), backend(2)
    after_cooldown = live.BackendLive(0, 5.0, failures=3, probe_in=0.0, circuit="open")
    order = rank([healthy, recovering], {1: state(0, 0.01), 2: after_cooldown}, "peak_ewma")
    assert order == [recovering, healthy]
    probing = live.BackendLive(1, 5.0, failures=3, probe_in=0.0, circuit="open")
    assert rank([healthy, recovering], {1: state(0, 0.01), 2: probing}, "peak_ewma") == [healthy]
    cooling = live.BackendLive(0, 5.0, failures=3, probe_in=2.0, circuit="open")
    assert rank([healthy, recovering], {1: state(0, 0.01), 2: cooling}, "peak_ewma") == [healthy]
