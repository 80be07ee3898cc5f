"""Queue, don't refuse: a heavy user's burst beside light users' single prompts, and how
soon a backend that comes back is used again. Same run, interleaved rounds.

**Fairness.** One backend with ``SLOTS`` slots answers in about ``SERVICE`` s. In each
round a heavy user sends ``BURST`` prompts at once on one API key; a moment later
``LIGHT`` light users send one prompt each. Each light prompt's wait is set beside

* its *fair share*: with the heavy user and the light users each taking a turn in round
  robin, a light prompt waits for at most one turn of every other party, i.e. about
  ``ceil((LIGHT + 1) / SLOTS)`` answers' time before its own — plus its own answer;
* what first come, first served would have cost it: the burst still ahead of it when it
  arrived, at the backend's rate;
* the same prompt on an idle system (the baseline, measured in the same run).

**Recovery.** The backend is stopped; prompts sent meanwhile wait; it is started again on
its port. Measured from the moment it answers ``/stats`` again: when the first waiting
prompt gets its first token, and how long a new prompt sent then takes.
"""

from __future__ import annotations

import asyncio
import math
import time

import httpx

from bench.harness import fleet, median, record, setup_django

BURST = 300
LIGHT = 4
SLOTS = 4
ROUNDS = 3
WAITING_WHILE_DOWN = 10
SIM_FLAGS = ("--ttft", "0.05", "--tps", "40", "--tokens", "8")  # ~0.25 s an answer


async def ask(client: httpx.AsyncClient, key: str, content: str) -> float:
    started = time.perf_counter()
    response = await client.post(
        "/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "bench", "messages": [{"role": "user", "content": content}]},
    )
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
    return time.perf_counter() - started


def client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{url}/v1",
        timeout=300,
        limits=httpx.Limits(max_connections=BURST + LIGHT + 10, max_keepalive_connections=0),
    )


async def alone(url: str, keys: list[str], round_: int) -> list[float]:
    async with client(url) as http:
        return [await ask(http, key, f"alone {round_} {i}") for i, key in enumerate(keys)]


async def burst_round(
    url: str, heavy: str, light: list[str], round_: int
) -> tuple[list[float], float, int]:
    """Light prompts' waits; the burst's own duration; how much of it was still ahead of
    the light prompts when they were sent."""
    async with client(url) as http:
        started = time.perf_counter()
        tasks = [asyncio.create_task(ask(http, heavy, f"burst {round_} {i}")) for i in range(BURST)]
        while sum(t.done() for t in tasks) < BURST // 4:
            await asyncio.sleep(0.02)
        ahead = BURST - sum(t.done() for t in tasks)
        waits = await asyncio.gather(
            *(ask(http, key, f"light {round_} {i}") for i, key in enumerate(light))
        )
        await asyncio.gather(*tasks)
        return list(waits), time.perf_counter() - started, ahead


def recovery_round(url: str, key: str, running, port: int, round_: int) -> tuple[float, float]:
    from apps.gateway.models import PromptRequest

    running.processes[-1].kill()  # the simulator, started last
    running.processes[-1].wait()
    time.sleep(1.0)

    async def while_down() -> list[float]:
        async with client(url) as http:
            return await asyncio.gather(
                *(ask(http, key, f"down {round_} {i}") for i in range(WAITING_WHILE_DOWN))
            )

    async def scenario() -> tuple[float, float]:
        waiting = asyncio.create_task(while_down())
        await asyncio.sleep(2.0)  # they are waiting for the model to come back
        running.simulator(port, *SIM_FLAGS)
        back = time.time()
        async with client(url) as http:
            fresh = await ask(http, key, f"after {round_}")
        await waiting
        return back, fresh

    back, fresh = asyncio.run(scenario())
    first = (
        PromptRequest.objects.filter(messages__0__content__startswith=f"down {round_} ")
        .exclude(first_token_at=None)
        .order_by("first_token_at")
        .values_list("first_token_at", flat=True)
        .first()
    )
    assert first is not None
    return first.timestamp() - back, fresh


def main() -> dict[str, float]:
    env = setup_django()
    from django.contrib.auth.models import User

    from apps.api.services import api_key_create
    from apps.backends.models import Backend
    from apps.gateway.localrun import free_port

    with fleet(env) as running:
        running.worker()
        url = running.web(free_port())
        port = free_port()
        base = running.simulator(port, *SIM_FLAGS)
        Backend.objects.create(
            name="bench-sim",
            alias="bench",
            model_name="sim-model",
            base_url=base,
            simulated=True,
            max_concurrency=SLOTS,
        )
        heavy = api_key_create(owner=User.objects.create_user("heavy"), name="batch")[1]
        light = [
            api_key_create(owner=User.objects.create_user(f"light{i}"), name="one")[1]
            for i in range(LIGHT)
        ]
        asyncio.run(alone(url, light, -1))  # warm-up
        baseline: list[float] = []
        waits: list[float] = []
        bursts: list[float] = []
        ahead: list[float] = []
        for round_ in range(ROUNDS):  # interleaved: idle, then under the burst
            baseline += asyncio.run(alone(url, light, round_))
            got, took, before = asyncio.run(burst_round(url, heavy, light, round_))
            waits += got
            bursts.append(took)
            ahead.append(before)
        back_to_first, after = [], []
        for round_ in range(ROUNDS):
            first, fresh = recovery_round(url, heavy, running, port, round_)
            back_to_first.append(first)
            after.append(fresh)

    service = median(baseline)
    rate = BURST / median(bursts)  # prompts per second the backend gives the burst
    fair = math.ceil((LIGHT + 1) / SLOTS) * service + service
    fifo = median(ahead) / rate + service
    result = {
        "light_wait_p50": median(waits),
        "light_wait_max": max(waits),
        "fair_share": fair,
        "fifo": fifo,
        "alone": service,
        "recovery_first": median(back_to_first),
        "recovery_fresh": median(after),
    }
    slower = median(waits) / service
    table = f"""## Fairness and recovery

`bench/fairness.py` — one gateway worker, daphne, the API; one simulated backend with
{SLOTS} slots answering in about a quarter of a second. {ROUNDS} interleaved rounds.

**One heavy user, {LIGHT} light users.** The heavy user sends {BURST} prompts at once on
one key; when a quarter of them are answered, each light user sends one prompt. A light
prompt's *fair share* is its turn in round robin among the {LIGHT + 1} parties — at most
one turn of each other party, {math.ceil((LIGHT + 1) / SLOTS)} answer(s) of the
{SLOTS} slots' time — plus its own answer; *first come, first served* is the
{median(ahead):.0f} burst prompts still ahead of it at the burst's rate
({rate:.1f}/s), plus its own answer.

| light user's prompt | wait |
|---|---|
| alone (baseline, same run) | {service:.2f} s |
| under the burst, median of {len(waits)} | **{median(waits):.2f} s** ({slower:.1f}× alone) |
| under the burst, slowest | {max(waits):.2f} s |
| fair share | {fair:.2f} s |
| first come, first served would be | {fifo:.2f} s |

The burst itself: all {BURST} answered, none refused, in {median(bursts):.1f} s (median).

**A backend that comes back.** It is stopped; {WAITING_WHILE_DOWN} prompts sent
meanwhile wait; it is started again on its port (health checks every
5 s, the default). From the moment it answers again:

| | median of {ROUNDS} |
|---|---|
| first token of the first prompt that waited | **{median(back_to_first):.2f} s** |
| a new prompt sent then, answered | {median(after):.2f} s |

Before this, a backend whose circuit had opened a few times was left out until its
cool-down ran out (it doubles per opening, up to 120 s): 77 s was seen."""
    print(table)
    record("fairness", table)
    return result


if __name__ == "__main__":
    main()
