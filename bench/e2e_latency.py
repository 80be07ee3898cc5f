"""End-to-end latency of one prompt: through Barista (chat websocket → queue → worker →
simulator → channel layer → socket) against the same prompt sent straight to the
simulator, both with the simulator on instant settings. Medians of repeated runs."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import websockets

from bench.harness import cookie_header, fleet, median, ms, percentile, record, setup_django

RUNS = 60
WARMUP = 8
PROMPT = "How long does one cup take?"


async def direct(base_url: str) -> list[float]:
    body = {
        "model": "sim-model",
        "stream": True,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    timings: list[float] = []
    async with httpx.AsyncClient() as client:
        for index in range(WARMUP + RUNS):
            started = time.perf_counter()
            async with client.stream("POST", f"{base_url}/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        break
            if index >= WARMUP:
                timings.append(time.perf_counter() - started)
    return timings


async def through_barista(web_url: str, cookie: str) -> list[float]:
    timings: list[float] = []
    ws_url = web_url.replace("http://", "ws://") + "/ws/chat/"
    headers = {"Cookie": cookie, "Origin": web_url}
    async with websockets.connect(ws_url, additional_headers=headers) as socket:
        for index in range(WARMUP + RUNS):
            started = time.perf_counter()
            # "fresh": every run asks the backend (the cache benchmark measures hits).
            frame = {"type": "prompt", "model": "bench", "content": PROMPT, "fresh": True}
            await socket.send(json.dumps(frame))
            while True:
                frame = json.loads(await socket.recv())
                if frame["type"] in {"done", "failed", "error"}:
                    break
            if frame["type"] != "done":
                raise RuntimeError(f"prompt failed: {frame}")
            if index >= WARMUP:
                timings.append(time.perf_counter() - started)
    return timings


def ledger_stages() -> dict[str, float]:
    """Median time in each stage, from the ledger's own timestamps."""
    from apps.gateway.models import PromptRequest

    rows = list(PromptRequest.objects.order_by("queued_at"))[WARMUP:]
    pairs = {
        "queued → worker started": ("queued_at", "started_at"),
        "started → first token": ("started_at", "first_token_at"),
        "first token → recorded": ("first_token_at", "finished_at"),
    }
    return {
        label: median([(getattr(r, b) - getattr(r, a)).total_seconds() for r in rows])
        for label, (a, b) in pairs.items()
    }


def main() -> dict[str, float]:
    env = setup_django()
    from django.contrib.auth.models import User

    from apps.backends.models import Backend
    from apps.gateway.localrun import free_port

    with fleet(env) as running:
        sim_url = running.simulator(free_port(), "--ttft", "0", "--tps", "0", "--tokens", "60")
        Backend.objects.create(
            name="bench-sim",
            alias="bench",
            model_name="sim-model",
            base_url=sim_url,
            simulated=True,
        )
        user = User.objects.create_user("bench", password="bench-pw")  # noqa: S106
        cookie = cookie_header(user)
        running.worker()
        web_url = running.web(free_port())

        baseline = asyncio.run(direct(sim_url))
        barista = asyncio.run(through_barista(web_url, cookie))
        stages = ledger_stages()

    result = {
        "direct_p50": median(baseline),
        "direct_p90": percentile(baseline, 0.9),
        "barista_p50": median(barista),
        "barista_p90": percentile(barista, 0.9),
    }
    ratio = result["barista_p50"] / result["direct_p50"]
    added = ms(result["barista_p50"] - result["direct_p50"])
    table = f"""## One prompt, end to end

`bench/e2e_latency.py` — one streamed prompt (60 tokens, simulator on instant settings),
{RUNS} sequential runs after {WARMUP} warm-up runs, one client. *Direct* streams the same
request straight from the simulator with httpx; *through Barista* sends it on the chat
websocket (daphne) and waits for the `done` frame: admission, ledger write, RQ enqueue,
one gateway worker process, HTTP to the simulator, token batches over the Redis channel
layer.

| path | p50 | p90 |
|---|---|---|
| direct to the simulator (baseline) | {ms(result["direct_p50"])} | {ms(result["direct_p90"])} |
| through Barista | {ms(result["barista_p50"])} | {ms(result["barista_p90"])} |

Ratio of medians: **{ratio:.1f}×**; Barista adds {added} at the median.

Where the time goes (medians of the ledger's timestamps):

| stage | p50 |
|---|---|
""" + "\n".join(f"| {label} | {ms(value)} |" for label, value in stages.items())
    print(table)
    record("e2e_latency", table)
    return result


if __name__ == "__main__":
    main()
