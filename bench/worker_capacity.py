"""The gateway worker: (a) prompts in flight at once in one process, and its memory;
(b) completed prompts per second with an instant backend, beside RQ's SimpleWorker running
no-op jobs in the same run; (c) Redis commands per completed prompt, beside RQ's per job."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import redis

from bench.harness import BASE_DIR, command_stats, fleet, record, setup_django

IN_FLIGHT = 600
CAPACITY_CONCURRENCY = 1000
THROUGHPUT_PROMPTS = 2000
NOOP_JOBS = 2000
SIMPLE_PROMPTS = 300


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def command_calls(conn: redis.Redis) -> int:
    return sum(command_breakdown(conn).values())


def command_breakdown(conn: redis.Redis) -> dict[str, int]:
    """Calls per command so far (commands run inside scripts count one by one)."""
    calls, _ = command_stats(conn)
    return {name: n for name, n in calls.items() if name != "info"}


def simple_worker_seconds(env: dict[str, str], queues_code: str) -> float:
    """Run RQ's SimpleWorker in burst mode in a fresh process on the queues that
    ``queues_code`` puts in ``qs``; returns the seconds its work loop took."""
    code = (
        "import django, time; django.setup(); from redis import Redis;"
        f"from rq import Queue, SimpleWorker; {queues_code};"
        "t = time.perf_counter();"
        " SimpleWorker(qs, connection=qs[0].connection, serializer=qs[0].serializer)"
        ".work(burst=True, logging_level='WARNING'); print(time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def submit(user, count: int) -> None:
    from django.db import transaction

    from apps.gateway.admission import Principal
    from apps.gateway.services import request_submit

    with transaction.atomic():
        for index in range(count):
            request_submit(
                principal=Principal(user.pk),
                model="bench",
                # Each prompt its own: a repeated one would be a cache hit, not a job.
                messages=[{"role": "user", "content": f"bench prompt {uuid.uuid4()} {index}"}],
            )


def wait_done(count: int, timeout: float) -> float:
    from apps.gateway.models import PromptRequest

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        done = PromptRequest.objects.filter(status__in=["done", "failed"]).count()
        if done >= count:
            return time.perf_counter()
        time.sleep(0.02)
    raise RuntimeError(f"only {done} of {count} prompts finished in {timeout} s")


def main() -> dict[str, float]:
    env = setup_django()
    from django.conf import settings
    from django.contrib.auth.models import User

    from apps.backends.models import Backend
    from apps.gateway.localrun import free_port, worker_argv
    from apps.gateway.models import PromptRequest

    conn = redis.Redis.from_url(settings.REDIS_URL)
    user = User.objects.create_user("bench")
    results: dict[str, float] = {}
    with fleet(env) as running:
        # (a) capacity: a backend that answers in 5 s; how many prompts can one process hold?
        slow_port = free_port()
        slow = running.simulator(slow_port, "--ttft", "5", "--tps", "0", "--tokens", "20")
        backend = Backend.objects.create(
            name="bench-slow",
            alias="bench",
            model_name="sim-model",
            base_url=slow,
            simulated=True,
            max_concurrency=10_000,
        )
        submit(user, IN_FLIGHT)
        worker = running.spawn(
            worker_argv() + ["--name", "bench-capacity"],
            BARISTA_WORKER_CONCURRENCY=str(CAPACITY_CONCURRENCY),
        )
        peak, peak_rss = 0, 0.0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = httpx.get(f"http://127.0.0.1:{slow_port}/stats").json()
            peak = max(peak, stats["in_flight"])
            peak_rss = max(peak_rss, rss_mb(worker.pid))
            if stats["completed_total"] >= IN_FLIGHT:
                break
            time.sleep(0.1)
        results["in_flight_peak"] = peak
        results["in_flight_rss_mb"] = peak_rss
        worker.terminate()
        worker.wait()

        # (b, c) throughput and Redis commands with an instant backend.
        PromptRequest.objects.all().delete()
        fast = running.simulator(free_port(), "--ttft", "0", "--tps", "0", "--tokens", "20")
        backend.base_url = fast
        backend.save()
        conn.config_resetstat()
        calls_before = command_calls(conn)
        submit(user, THROUGHPUT_PROMPTS)
        enqueue_calls = command_calls(conn) - calls_before
        worker = running.spawn(worker_argv() + ["--name", "bench-throughput"])
        # Time from the worker's first start (not process start-up) to the last answer.
        while PromptRequest.objects.exclude(status="queued").count() == 0:
            time.sleep(0.005)
        began = time.perf_counter()
        ended = wait_done(THROUGHPUT_PROMPTS, timeout=300)
        results["gateway_per_s"] = THROUGHPUT_PROMPTS / (ended - began)
        time.sleep(1.5)  # let the last finished-job pipeline flush
        worker.terminate()
        worker.wait()
        breakdown = command_breakdown(conn)
        total_calls = sum(breakdown.values()) - calls_before
        results["gateway_cmds"] = total_calls / THROUGHPUT_PROMPTS
        results["gateway_enqueue_cmds"] = enqueue_calls / THROUGHPUT_PROMPTS
        assert PromptRequest.objects.filter(status="done").count() == THROUGHPUT_PROMPTS

        # Like for like: RQ's SimpleWorker running the same prompts (one at a time).
        PromptRequest.objects.all().delete()
        submit(user, SIMPLE_PROMPTS)
        seconds = simple_worker_seconds(
            env, "from apps.gateway.queues import queues; qs = queues()"
        )
        results["rq_prompts_per_s"] = SIMPLE_PROMPTS / seconds
        assert PromptRequest.objects.filter(status="done").count() == SIMPLE_PROMPTS

        # Baseline: RQ's SimpleWorker, no-op jobs, same Redis.
        from rq import Queue

        queue = Queue("rq-baseline", connection=conn)
        conn.config_resetstat()
        calls_before = command_calls(conn)
        for _ in range(NOOP_JOBS):
            queue.enqueue("bench.noop.noop", result_ttl=60)
        rq_enqueue_calls = command_calls(conn) - calls_before
        elapsed = simple_worker_seconds(
            env, f"qs = [Queue('rq-baseline', connection=Redis.from_url({settings.REDIS_URL!r}))]"
        )
        results["rq_per_s"] = NOOP_JOBS / elapsed
        results["rq_cmds"] = (command_calls(conn) - calls_before) / NOOP_JOBS
        results["rq_enqueue_cmds"] = rq_enqueue_calls / NOOP_JOBS

    ratio = results["gateway_per_s"] / results["rq_per_s"]
    top = "\n".join(
        f"| `{name}` | {calls / THROUGHPUT_PROMPTS:.1f} |"
        for name, calls in sorted(breakdown.items(), key=lambda item: -item[1])[:10]
    )
    r = results
    table = f"""## Gateway worker: in flight, throughput, Redis commands

`bench/worker_capacity.py` — one gateway worker process, SQLite ledger, embedded Redis.

**(a) In flight at once.** {IN_FLIGHT} prompts queued, simulator answering each in 5 s,
`BARISTA_WORKER_CONCURRENCY={CAPACITY_CONCURRENCY}`: peak
**{results["in_flight_peak"]:.0f}** prompts in flight in one process, peak RSS
**{results["in_flight_rss_mb"]:.0f} MB**.

**(b) Dispatch throughput** with an instant simulator (20 tokens, non-streaming delivery
of 3 events per prompt to a channel group nobody listens to), {THROUGHPUT_PROMPTS} prompts,
time from the first start to the last recorded answer:

| worker | completed/s |
|---|---|
| RQ `SimpleWorker`, no-op jobs (the issue's baseline) | {r["rq_per_s"]:.0f} |
| RQ `SimpleWorker`, the same prompts | {r["rq_prompts_per_s"]:.0f} |
| Barista gateway worker, prompts | {r["gateway_per_s"]:.0f} |

Ratio to no-op jobs: **{ratio:.2f}×** (goal ≥ 4×, not met). Ratio to RQ running the same
prompts: **{r["gateway_per_s"] / r["rq_prompts_per_s"]:.1f}×** — with an instant backend;
with a backend that takes seconds, `SimpleWorker` completes one prompt per answer time,
while this worker holds hundreds at once (a).

**(c) Redis commands** (`INFO commandstats`, all clients):

| | enqueue | total per job/prompt |
|---|---|---|
| RQ `SimpleWorker`, no-op job | {r["rq_enqueue_cmds"]:.1f} | {r["rq_cmds"]:.1f} |
| Barista, one prompt (enqueue, worker, channel layer) | {r["gateway_enqueue_cmds"]:.1f} \
| {r["gateway_cmds"]:.1f} |

Where Barista's commands go, per prompt (the ten most called; the bench's own polling of
the database is not Redis):

| command | per prompt |
|---|---|
{top}
"""
    print(table)
    record("worker_capacity", table)
    return results


if __name__ == "__main__":
    main()
