"""A thousand streaming chats at once: every one answered, and how evenly the tokens flow.

``STREAMS`` websockets on one daphne process ask at the same moment (each a new question,
so every one streams from the backend); the simulator writes 20 tokens a second. Two
workers (one per core, as ``make up`` runs them) answer. Reported: how many were answered,
the gaps between a stream's token frames (p50, p99, max), time to the first token, and
the memory of every process. The baseline is the same answer streamed by the simulator
alone: its gap between tokens is 50 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import websockets

from bench.harness import cookie_header, fleet, median, percentile, record, setup_django

STREAMS = int(os.environ.get("BENCH_STREAMS", 1000))
TOKENS = 60
TPS = 20
USERS = 20  # the streams are shared among this many people


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def one_stream(ws_url: str, cookie: str, origin: str, index: int) -> dict[str, object]:
    async with websockets.connect(
        ws_url,
        additional_headers={"Cookie": cookie, "Origin": origin},
        open_timeout=120,
        max_size=2**22,
    ) as socket:
        started = time.perf_counter()
        frame = {"type": "prompt", "model": "bench", "content": f"stream {index}", "fresh": True}
        await socket.send(json.dumps(frame))
        arrivals: list[float] = []
        while True:
            frame = json.loads(await asyncio.wait_for(socket.recv(), timeout=300))
            if frame["type"] == "tokens":
                arrivals.append(time.perf_counter())
            elif frame["type"] in {"done", "failed", "error", "cancelled"}:
                arrivals.append(time.perf_counter())
                break
        return {
            "ok": frame["type"] == "done",
            "error": f"{frame['type']}: {frame.get('error') or frame.get('code') or ''}",
            "first": arrivals[0] - started if arrivals else None,
            "gaps": [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)],
        }


async def crowd(ws_url: str, cookies: list[str], origin: str) -> list[dict[str, object]]:
    results = await asyncio.gather(
        *(one_stream(ws_url, cookies[i % len(cookies)], origin, i) for i in range(STREAMS)),
        return_exceptions=True,
    )
    return [r if isinstance(r, dict) else {"ok": False, "error": repr(r)} for r in results]


def main() -> None:
    env = setup_django()
    from django.contrib.auth.models import User

    from apps.backends.models import Backend
    from apps.gateway.localrun import free_port, worker_argv

    with fleet(env) as running:
        sim_url = running.simulator(
            free_port(), "--ttft", "0.2", "--tps", str(TPS), "--tokens", str(TOKENS)
        )
        Backend.objects.create(
            name="bench-sim",
            alias="bench",
            model_name="sim-model",
            base_url=sim_url,
            max_concurrency=STREAMS,
            simulated=True,
        )
        cookies = [
            cookie_header(User.objects.create_user(f"streamer{i}", password="bench-pw"))  # noqa: S106
            for i in range(USERS)
        ]
        concurrency = str(max(256, STREAMS // (os.cpu_count() or 1) + 1))
        simulator = running.processes[0]
        workers = [
            running.spawn(worker_argv(), BARISTA_WORKER_CONCURRENCY=concurrency)
            for _ in range(os.cpu_count() or 1)
        ]
        web_url = running.web(free_port())
        daphne = running.processes[-1]
        ws_url = web_url.replace("http://", "ws://") + "/ws/chat/"
        began = time.perf_counter()
        results = asyncio.run(crowd(ws_url, cookies, web_url))
        elapsed = time.perf_counter() - began
        memory = {"daphne": rss_mb(daphne.pid), "simulator": rss_mb(simulator.pid)}
        for number, worker in enumerate(workers, 1):
            memory[f"worker {number}"] = rss_mb(worker.pid)
        memory[f"the client ({STREAMS:,} sockets)"] = rss_mb(os.getpid())

    answered = sum(1 for r in results if r["ok"])
    gaps = [g for r in results if r["ok"] for g in r["gaps"]]  # type: ignore[attr-defined]
    firsts = [float(r["first"]) for r in results if r["ok"] and r["first"] is not None]  # type: ignore[arg-type]
    errors = sorted({str(r.get("error", ""))[:120] for r in results if not r["ok"]})[:5]
    p99 = percentile(gaps, 0.99) if gaps else float("nan")
    verdict = "met" if p99 <= 0.25 and answered == STREAMS else "not met"
    table = f"""## {STREAMS:,} streaming chats at once

`python -m bench streams`. {STREAMS:,} chat websockets on one daphne process (shared by
{USERS} people) ask at the same moment, each a new question; the simulator answers
{TOKENS} tokens at {TPS} tokens/s after 0.2 s (so, alone, 50 ms between tokens); two
workers. Token frames are batched by the worker (every
{env.get("BARISTA_FLUSH_INTERVAL", "0.05")} s or 16 tokens), so a frame gap near the
simulator's own 50 ms is the floor.

| | |
|---|---|
| answered | **{answered:,} of {STREAMS:,}** |
| gap between token frames, p50 | {median(gaps) * 1000:.0f} ms |
| gap between token frames, p99 (goal ≤ 250 ms) | **{p99 * 1000:.0f} ms** ({verdict}) |
| gap between token frames, max | {max(gaps) * 1000:.0f} ms |
| time to first token frame, p50 / p99 | {median(firsts):.2f} s / {percentile(firsts, 0.99):.2f} s |
| all {STREAMS:,} answered within | {elapsed:.1f} s |

Memory (RSS) at the end: """ + ", ".join(f"{name}: {mb:.0f} MB" for name, mb in memory.items())
    if errors:
        table += "\n\nFailures seen: " + "; ".join(errors)
    print(table)
    record("streams", table)


if __name__ == "__main__":
    main()
