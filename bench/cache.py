"""The AI thinks once: cache hits against misses on the chat websocket, hit throughput,
and the seed scenario — N people ask the same question at once — with and without
coalescing, in the same run."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import websockets

from bench.harness import cookie_header, fleet, median, ms, percentile, record, setup_django

RUNS = 60
WARMUP = 8
CROWD = 100  # people asking the same question at once
HIT_CLIENTS, HIT_SECONDS = 10, 5.0


async def ask(
    socket: websockets.ClientConnection, content: str, fresh: bool = False
) -> dict[str, Any]:
    frame = {"type": "prompt", "model": "bench", "content": content, "fresh": fresh}
    await socket.send(json.dumps(frame))
    while True:
        reply = json.loads(await socket.recv())
        if reply["type"] in {"done", "failed", "error"}:
            if reply["type"] != "done":
                raise RuntimeError(f"prompt failed: {reply}")
            return reply


async def sequential(ws_url: str, headers: dict[str, str], prompts: list[str]) -> list[float]:
    timings = []
    async with websockets.connect(ws_url, additional_headers=headers) as socket:
        for index, prompt in enumerate(prompts):
            started = time.perf_counter()
            reply = await ask(socket, prompt)
            if index >= WARMUP:
                timings.append(time.perf_counter() - started)
                expected = "hit" if len(set(prompts)) == 1 else "miss"
                assert reply["cache"] == expected, reply["cache"]
    return timings


async def hit_throughput(ws_url: str, headers: dict[str, str]) -> float:
    done = 0
    deadline = time.perf_counter() + HIT_SECONDS

    async def client() -> None:
        nonlocal done
        async with websockets.connect(ws_url, additional_headers=headers) as socket:
            while time.perf_counter() < deadline:
                await ask(socket, "the popular question")
                done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(HIT_CLIENTS)))
    return done / (time.perf_counter() - started)


async def crowd(ws_url: str, cookies: list[str], origin: str, fresh: bool) -> list[float]:
    """Everyone connects, then everyone asks the same question at the same moment."""
    sockets = [
        await websockets.connect(ws_url, additional_headers={"Cookie": c, "Origin": origin})
        for c in cookies
    ]
    question = f"What makes a flat white different? ({'fresh' if fresh else 'shared'})"
    go = asyncio.Event()

    async def person(socket: websockets.ClientConnection) -> float:
        await go.wait()
        started = time.perf_counter()
        await ask(socket, question, fresh=fresh)
        return time.perf_counter() - started

    tasks = [asyncio.create_task(person(s)) for s in sockets]
    await asyncio.sleep(0.2)
    go.set()
    timings = await asyncio.gather(*tasks)
    for socket in sockets:
        await socket.close()
    return list(timings)


def main() -> dict[str, float]:
    env = setup_django()
    from django.contrib.auth.models import User

    from apps.backends.models import Backend
    from apps.gateway.localrun import free_port

    with fleet(env) as running:
        instant = running.simulator(free_port(), "--ttft", "0", "--tps", "0", "--tokens", "60")
        backend = Backend.objects.create(
            name="bench-sim",
            alias="bench",
            model_name="sim-model",
            base_url=instant,
            simulated=True,
            share_answers=True,  # a crowd asking the same question shares one answer
        )
        people = [User.objects.create_user(f"person{i}") for i in range(CROWD)]
        cookies = [cookie_header(person) for person in people]
        running.worker()
        web_url = running.web(free_port())
        ws_url = web_url.replace("http://", "ws://") + "/ws/chat/"
        headers = {"Cookie": cookies[0], "Origin": web_url}

        misses = asyncio.run(
            sequential(ws_url, headers, [f"question number {i}" for i in range(WARMUP + RUNS)])
        )
        hits = asyncio.run(sequential(ws_url, headers, ["the popular question"] * (WARMUP + RUNS)))
        throughput = asyncio.run(hit_throughput(ws_url, headers))

        # The seed scenario, against a backend that takes its time (~1.4 s an answer).
        slow = running.simulator(free_port(), "--ttft", "0.2", "--tps", "50", "--tokens", "60")
        Backend.objects.filter(pk=backend.pk).update(base_url=slow)
        time.sleep(1.5)  # workers see row changes within a second
        slow_stats = slow.removesuffix("/v1") + "/stats"

        def calls() -> int:
            return int(httpx.get(slow_stats).json()["requests_total"])

        before = calls()
        shared = asyncio.run(crowd(ws_url, cookies, web_url, fresh=False))
        shared_calls = calls() - before
        before = calls()
        alone = asyncio.run(crowd(ws_url, cookies, web_url, fresh=True))
        alone_calls = calls() - before

    result = {
        "miss_p50": median(misses),
        "hit_p50": median(hits),
        "hit_throughput": throughput,
        "shared_calls": shared_calls,
        "alone_calls": alone_calls,
    }
    table = f"""## Cache and coalescing

`bench/cache.py` — one gateway worker, daphne, the chat websocket.

**Hits against misses** ({RUNS} sequential prompts after {WARMUP} warm-ups, instant
simulator, 60 tokens): a miss goes through the queue, a worker and the backend; a hit is
answered by the web process from Redis and replayed as a stream.

| path | p50 | p90 |
|---|---|---|
| miss (a new question each time) | {ms(median(misses))} | {ms(percentile(misses, 0.9))} |
| hit (the same question again) | {ms(median(hits))} | {ms(percentile(hits, 0.9))} |

A hit takes **{median(hits) / median(misses):.2f}×** the time of a miss. Hit throughput,
{HIT_CLIENTS} sockets asking the cached question for {HIT_SECONDS:.0f} s:
**{throughput:.0f} answers/s** (one daphne process).

**The seed scenario**: {CROWD} people, each on their own socket, ask the same question at
the same moment; the backend takes about 1.4 s per answer (TTFT 0.2 s, 60 tokens at 50/s).
Baseline: the same crowd with *Fresh answer* ticked (no cache, no coalescing).

| | backend calls | p50 | p99 |
|---|---|---|---|
| coalesced (default) | **{shared_calls}** | {ms(median(shared))} | {ms(percentile(shared, 0.99))} |
| fresh (baseline) | {alone_calls} | {ms(median(alone))} | {ms(percentile(alone, 0.99))} |

Goal: 1 backend call for the crowd. The crowd's time is mostly the web process taking
{CROWD} prompts in turn (each a conversation, a ledger row and a message in SQLite), not the
backend: the coalesced crowd waits for one 1.4 s answer."""
    print(table)
    record("cache", table)
    return result


if __name__ == "__main__":
    main()
