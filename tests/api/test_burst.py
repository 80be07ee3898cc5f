"""A burst is queued, not refused. With the default settings one program's 150 prompts
on one key are all answered; another person's single prompt sent mid-burst takes its
turn instead of waiting behind the burst; identical requests share one slot."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from apps.api.services import api_key_create
from apps.gateway.models import PromptRequest

pytestmark = pytest.mark.django_db(transaction=True)

BURST = 150
SLOTS = 4  # the backend's concurrency cap: the burst waits in line for these


def client(url: str, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{url}/v1",
        timeout=120,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=0),
    )


async def ask(http: httpx.AsyncClient, key: str, content: str) -> httpx.Response:
    return await http.post(
        "/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "sim-chat", "messages": [{"role": "user", "content": content}]},
    )


def test_a_burst_on_one_key_is_answered_in_full_and_another_persons_prompt_takes_its_turn(
    alice, bob, start_simulator, start_worker, start_web
):
    # About a quarter of a second per answer, four at a time: the burst takes ~10 s.
    sim = start_simulator("--ttft", "0.05", "--tps", "40", "--tokens", "8")
    sim.register(alias="sim-chat", max_concurrency=SLOTS)
    _, alices_key = api_key_create(owner=alice, name="batch job")
    _, bobs_key = api_key_create(owner=bob, name="one question")
    start_worker()
    url = start_web()

    async def run() -> tuple[list[httpx.Response], httpx.Response, int]:
        async with client(url, BURST + 10) as http:
            burst = [
                asyncio.create_task(ask(http, alices_key, f"burst {i:03d}")) for i in range(BURST)
            ]
            while sum(task.done() for task in burst) < BURST // 5:  # mid-burst
                await asyncio.sleep(0.05)
            bobs = await ask(http, bobs_key, "just one")
            answered_meanwhile = sum(task.done() for task in burst)
            return await asyncio.gather(*burst), bobs, answered_meanwhile

    responses, bobs, _ = asyncio.run(run())

    for index, response in enumerate(responses):  # all answered, none refused
        assert response.status_code == 200, (index, response.text)
        assert f'"burst {index:03d}"' in response.json()["choices"][0]["message"]["content"]
    assert bobs.status_code == 200, bobs.text
    assert '"just one"' in bobs.json()["choices"][0]["message"]["content"]

    bobs_row = PromptRequest.objects.get(owner=bob)
    alices = PromptRequest.objects.filter(owner=alice)
    assert alices.filter(status="done").count() == BURST
    # Bob's prompt took its turn. Of the burst, the only ones that got their first token
    # between his arrival and his: those already holding the backend's slots, the one at
    # the head of the line, one turn of Alice's, and one the worker may have taken before
    # it saw his — not the 100-odd still waiting (first come, first served).
    cut_in = alices.filter(
        first_token_at__gt=bobs_row.queued_at, first_token_at__lt=bobs_row.first_token_at
    ).count()
    assert cut_in <= SLOTS + 3, cut_in
    # ... so he was answered before the burst's tail: most of it finished after him.
    assert alices.filter(finished_at__gt=bobs_row.finished_at).count() >= BURST // 2


def test_fifty_identical_requests_use_one_slot(alice, start_simulator, start_worker, start_web):
    sim = start_simulator("--ttft", "1.0", "--tps", "40", "--tokens", "8")
    sim.register(alias="sim-chat")
    # Staff allow this key one request at a time: merged requests share that one.
    _, key = api_key_create(owner=alice, name="retries a lot", max_concurrent=1)
    start_worker()
    url = start_web()

    async def run() -> list[httpx.Response]:
        async with client(url, 60) as http:
            return await asyncio.gather(*(ask(http, key, "the same question") for _ in range(50)))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 50, responses[0].text
    answers = {r.json()["choices"][0]["message"]["content"] for r in responses}
    assert len(answers) == 1
    assert sim.stats()["requests_total"] == 1
    outcomes = list(PromptRequest.objects.values_list("cache_outcome", flat=True))
    assert outcomes.count("miss") == 1 and len(outcomes) == 50
