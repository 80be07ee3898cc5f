"""What Barista's API adds to a chat completion, beside the floors it is judged against.

Targets, all answering ``POST /v1/chat/completions`` on loopback, measured in interleaved
rounds in one run:

* **direct** — the instant simulator itself (the backend every other target calls);
* **django** — a trivial Django view under daphne, with Django's default middleware
  (``bench/trivial``): what any Django app pays per request;
* **miss** / **hit** — Barista on its embedded defaults (SQLite, embedded Redis, two
  workers), with a new question every time, or the same one answered from the cache;
* **miss-pg** / **hit-pg** — the same on PostgreSQL and the machine's Redis, when both
  answer on 127.0.0.1.

For each: latency of one client asking in sequence (p50, p99), time to the first byte of
a streamed answer, requests per second with 64 clients at once, CPU per request of the
server's processes (daphne, workers and Redis for Barista; the simulator is not counted),
and Redis commands per request (``INFO commandstats``).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.harness import (
    BASE_DIR,
    Fleet,
    command_calls,
    fleet,
    median,
    percentile,
    record,
    setup_django,
)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
SEQUENTIAL = 100
STREAMED = 30
CONCURRENT_CLIENTS = 64
CONCURRENT_REQUESTS = 640
WARMUP = 10
PG_URL = "postgres://postgres@127.0.0.1:5432/barista_bench"
PG_REDIS_URL = "redis://127.0.0.1:6379/9"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# BENCH_BASELINE=/path/to/a/checkout measures that commit's Barista in the same rounds.
BASELINE_TREE = Path(os.environ["BENCH_BASELINE"]) if os.environ.get("BENCH_BASELINE") else None
BASELINE_NAME = os.environ.get("BENCH_BASELINE_NAME", "base")


@dataclass
class Target:
    name: str
    url: str
    key: str = ""
    model: str = "sim-model"
    same_question: bool = False  # a cache hit: the same question every time
    pids: list[int] = field(default_factory=list)  # whose CPU is counted
    redis_url: str | None = None  # whose commands are counted
    streams: bool = True

    def body(self, stream: bool = False) -> dict[str, Any]:
        question = "How long does one cup take?" if self.same_question else str(uuid.uuid4())
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": question}],
            "stream": stream,
        }

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


@dataclass
class Sample:
    p50: float = 0.0
    p99: float = 0.0
    ttfb: float | None = None
    rps: float = 0.0
    cpu_ms: float = 0.0
    redis_commands: float | None = None


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def redis_calls(url: str | None) -> int:
    if url is None:
        return 0
    return sum(command_calls(redis.Redis.from_url(url)).values())


def sequential(target: Target) -> list[float]:
    timings = []
    with httpx.Client(base_url=target.url, headers=target.headers, timeout=30) as client:
        for index in range(WARMUP + SEQUENTIAL):
            started = time.perf_counter()
            response = client.post("/v1/chat/completions", json=target.body())
            response.raise_for_status()
            if index >= WARMUP:
                timings.append(time.perf_counter() - started)
    return timings


def first_bytes(target: Target) -> list[float]:
    timings = []
    with httpx.Client(base_url=target.url, headers=target.headers, timeout=30) as client:
        for _ in range(STREAMED):
            started = time.perf_counter()
            with client.stream(
                "POST", "/v1/chat/completions", json=target.body(stream=True)
            ) as response:
                response.raise_for_status()
                first = None
                for _chunk in response.iter_bytes():
                    first = first or time.perf_counter() - started
            assert first is not None
            timings.append(first)
    return timings


async def crowd(target: Target) -> float:
    """Requests per second with CONCURRENT_CLIENTS asking at once."""
    limits = httpx.Limits(max_connections=CONCURRENT_CLIENTS)
    async with httpx.AsyncClient(
        base_url=target.url, headers=target.headers, limits=limits, timeout=120
    ) as client:
        left = CONCURRENT_REQUESTS

        async def one_client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                response = await client.post("/v1/chat/completions", json=target.body())
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(CONCURRENT_CLIENTS)))
        return CONCURRENT_REQUESTS / (time.perf_counter() - started)


def measure(target: Target) -> Sample:
    timings = sequential(target)
    sample = Sample(p50=median(timings), p99=percentile(timings, 0.99))
    if target.streams:
        sample.ttfb = median(first_bytes(target))
    cpu, calls = cpu_seconds(target.pids), redis_calls(target.redis_url)
    sample.rps = asyncio.run(crowd(target))
    sample.cpu_ms = (cpu_seconds(target.pids) - cpu) * 1000 / CONCURRENT_REQUESTS
    if target.redis_url is not None:
        # Less the one INFO command this function sends itself.
        sample.redis_commands = (redis_calls(target.redis_url) - calls - 1) / CONCURRENT_REQUESTS
    return sample


# --- Setting up Barista -----------------------------------------------------------------


def prepare(env: dict[str, str], simulator_url: str, tree: Path = BASE_DIR) -> str:
    """Migrate ``env``'s database, register the simulator, make an API key; returns it."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.api_overhead", "prepare", simulator_url],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def _prepare(simulator_url: str) -> None:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from apps.api.services import api_key_create
    from apps.backends.models import Backend

    call_command("migrate", verbosity=0)
    Backend.objects.get_or_create(
        name="bench-sim",
        defaults={
            "alias": "bench",
            "model_name": "sim-model",
            "base_url": simulator_url,
            "max_concurrency": 1000,
        },
    )
    user, _ = User.objects.get_or_create(username="bench")
    _, key = api_key_create(owner=user, name="bench")
    print(key)


def postgres_env(env: dict[str, str]) -> dict[str, str] | None:
    """The environment for Barista on the machine's PostgreSQL and Redis, or None when
    either does not answer."""
    try:
        import psycopg

        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/test", autocommit=True, connect_timeout=3
        ) as connection:
            connection.execute("DROP DATABASE IF EXISTS barista_bench")
            connection.execute("CREATE DATABASE barista_bench")
        redis.Redis.from_url(PG_REDIS_URL, socket_timeout=3).flushdb()
    except Exception as exc:  # not there: this part is skipped, and says so
        print(f"PostgreSQL or the machine's Redis unavailable ({exc}); skipping them")
        return None
    return {**env, "DATABASE_URL": PG_URL, "REDIS_URL": PG_REDIS_URL}


def barista(
    running: Fleet,
    extra_env: dict[str, str],
    port: int,
    simulator_url: str,
    tree: Path = BASE_DIR,
) -> Target:
    """Barista as ``make up`` runs it: one worker per core and daphne — this checkout's,
    or another commit's checked out in ``tree``."""
    from apps.gateway.localrun import wait_http, web_argv

    key = prepare({**running.env, **extra_env}, simulator_url, tree)
    worker = [sys.executable, str(tree / "manage.py"), "run_worker"]
    workers = [running.spawn(worker, cwd=tree, **extra_env) for _ in range(os.cpu_count() or 1)]
    web = running.spawn(web_argv(port), cwd=tree, **extra_env)
    wait_http(f"http://127.0.0.1:{port}/healthz", process=web)
    redis_url = extra_env.get("REDIS_URL") or running.env["REDIS_URL"]
    redis_pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
    return Target(
        name="miss",
        url=f"http://127.0.0.1:{port}",
        key=key,
        model="bench",
        pids=[web.pid, *(w.pid for w in workers), redis_pid],
        redis_url=redis_url,
    )


def main() -> None:
    from apps.gateway.localrun import free_port, web_argv

    env = setup_django()
    with fleet(env) as running:
        simulator = running.simulator(free_port(), "--ttft", "0", "--tps", "0", "--tokens", "20")
        port = free_port()
        trivial = running.spawn(
            web_argv(port, app="bench.trivial.asgi:application"),
            DJANGO_SETTINGS_MODULE="bench.trivial.settings",
        )
        simulator_pid = running.processes[0].pid
        targets = [
            Target("direct", simulator.removesuffix("/v1"), pids=[simulator_pid]),
            Target("django", f"http://127.0.0.1:{port}", pids=[trivial.pid], streams=False),
        ]
        miss = barista(running, {}, free_port(), simulator)
        targets += [miss, _as_hit(miss, "hit")]
        if BASELINE_TREE is not None:
            # Another commit's Barista, beside this one in the same rounds: its own
            # Redis and database, so the two never take each other's jobs.
            from apps.gateway.localrun import EmbeddedRedis

            workdir = Path(tempfile.mkdtemp(prefix="barista-bench-base-"))
            base_redis = EmbeddedRedis(port=free_port(), data_dir=workdir, persist=False)
            base_redis.start()
            atexit.register(base_redis.stop)
            base_env = {
                "REDIS_URL": base_redis.url,
                "DATABASE_URL": f"sqlite:///{workdir / 'base.sqlite3'}",
                "BARISTA_VAR_DIR": str(workdir),
            }
            base = barista(running, base_env, free_port(), simulator, BASELINE_TREE)
            base.name = f"miss@{BASELINE_NAME}"
            targets += [base, _as_hit(base, f"hit@{BASELINE_NAME}")]
        pg = postgres_env(env)
        if pg is not None:
            miss_pg = barista(
                running, {k: pg[k] for k in ("DATABASE_URL", "REDIS_URL")}, free_port(), simulator
            )
            miss_pg.name = "miss-pg"
            targets += [miss_pg, _as_hit(miss_pg, "hit-pg")]
        from apps.gateway.localrun import wait_http

        wait_http(f"http://127.0.0.1:{port}/v1/chat/completions", process=trivial)
        samples: dict[str, list[Sample]] = {t.name: [] for t in targets}
        for round_ in range(ROUNDS):
            for target in targets:
                samples[target.name].append(measure(target))
                print(f"round {round_ + 1}: {target.name} {samples[target.name][-1]}", flush=True)
    write(samples)


def _as_hit(miss: Target, name: str) -> Target:
    return Target(
        name=name,
        url=miss.url,
        key=miss.key,
        model=miss.model,
        same_question=True,
        pids=miss.pids,
        redis_url=miss.redis_url,
    )


def _med(samples: list[Sample], name: str) -> float | None:
    values = [getattr(s, name) for s in samples if getattr(s, name) is not None]
    return median(values) if values else None


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.1f} ms"


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def write(samples: dict[str, list[Sample]]) -> None:
    names = list(samples)
    med: dict[str, dict[str, Any]] = {
        name: {f: _med(samples[name], f) for f in Sample.__dataclass_fields__} for name in names
    }
    direct, django = med["direct"], med["django"]
    rows = [
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| latency p50, one client | " + " | ".join(_ms(med[n]["p50"]) for n in names) + " |",
        "| latency p99, one client | " + " | ".join(_ms(med[n]["p99"]) for n in names) + " |",
        "| added to a direct call, p50 | "
        + " | ".join(_ms((med[n]["p50"] or 0) - (direct["p50"] or 0)) for n in names)
        + " |",
        "| streamed first byte p50 | " + " | ".join(_ms(med[n]["ttfb"]) for n in names) + " |",
        "| requests/s, 64 at once | " + " | ".join(f"{med[n]['rps']:.0f}" for n in names) + " |",
        "| server CPU per request | "
        + " | ".join(f"{med[n]['cpu_ms']:.1f} ms" for n in names)
        + " |",
        "| Redis commands per request | "
        + " | ".join(
            "—" if med[n]["redis_commands"] is None else f"{med[n]['redis_commands']:.1f}"
            for n in names
        )
        + " |",
    ]
    rounds = "; ".join(f"{n}: " + ", ".join(f"{s.rps:.0f}" for s in samples[n]) for n in names)
    goals = []
    for miss, hit in (("miss", "hit"), ("miss-pg", "hit-pg")):
        if miss not in med:
            continue
        m, h = med[miss], med[hit]
        added = (m["p50"] or 0) - (direct["p50"] or 0)
        added99 = (m["p99"] or 0) - (direct["p99"] or 0)
        added_ttfb = (m["ttfb"] or 0) - (direct["ttfb"] or 0)
        hit_added = (h["p50"] or 0) - (direct["p50"] or 0)
        d50, d99 = django["p50"] or 0, django["p99"] or 0
        checks = [
            (
                f"{miss}: added p50 ≤ 1× the Django view's p50",
                added <= d50,
                f"{_ms(added)} vs {_ms(d50)} ({added / d50:.1f}×)",
            ),
            (
                f"{miss}: added p99 ≤ 2× the Django view's p99",
                added99 <= 2 * d99,
                f"{_ms(added99)} vs {_ms(d99)} ({added99 / d99:.1f}×)",
            ),
            (
                f"{miss}: streamed first byte, added ≤ the Django view's p50",
                added_ttfb <= d50,
                f"{_ms(added_ttfb)} vs {_ms(d50)}",
            ),
            (
                f"{hit}: added p50 ≤ 1.2× the Django view's p50",
                hit_added <= 1.2 * d50,
                f"{_ms(hit_added)} vs {_ms(d50)} ({hit_added / d50:.1f}×)",
            ),
            (
                f"{miss}: req/s ≥ 1× the Django view's",
                m["rps"] >= django["rps"],
                f"{m['rps']:.0f} vs {django['rps']:.0f} ({m['rps'] / django['rps']:.2f}×)",
            ),
            (
                f"{hit}: req/s ≥ 2× the Django view's",
                h["rps"] >= 2 * django["rps"],
                f"{h['rps']:.0f} vs {django['rps']:.0f} ({h['rps'] / django['rps']:.2f}×)",
            ),
            (f"{miss}: CPU ≤ 8 ms", m["cpu_ms"] <= 8, f"{m['cpu_ms']:.1f} ms"),
            (f"{hit}: CPU ≤ 3 ms", h["cpu_ms"] <= 3, f"{h['cpu_ms']:.1f} ms"),
            (
                f"{miss}: Redis commands ≤ 30",
                (m["redis_commands"] or 0) <= 30,
                f"{m['redis_commands']:.1f}",
            ),
            (
                f"{hit}: Redis commands ≤ 5",
                (h["redis_commands"] or 0) <= 5,
                f"{h['redis_commands']:.1f}",
            ),
        ]
        goals += [f"| {goal} | {figure} | {_verdict(ok)} |" for goal, ok, figure in checks]
    compared = []
    for kind in ("miss", "hit"):
        base = med.get(f"{kind}@{BASELINE_NAME}")
        if base is not None:
            now = med[kind]
            compared.append(
                f"| {kind} | {_ms(base['p50'])} → {_ms(now['p50'])} | "
                f"{base['rps']:.0f} → {now['rps']:.0f} | "
                f"{base['cpu_ms']:.1f} → {now['cpu_ms']:.1f} ms | "
                f"{base['redis_commands']:.1f} → {now['redis_commands']:.1f} |"
            )
    if compared:
        compared = [
            "",
            f"Against {BASELINE_NAME} (another commit's Barista, measured in the same rounds):",
            "",
            "| | p50, one client | req/s, 64 at once | CPU per request | Redis commands |",
            "|---|---|---|---|---|",
            *compared,
        ]
    table = "\n".join(rows + compared)
    goal_table = "\n".join(["| goal (issue 15) | measured, same run | |", "|---|---|---|", *goals])
    markdown = f"""## API overhead: Barista beside a direct call and a trivial Django view

`python -m bench api_overhead`. Every target answers `POST /v1/chat/completions` on
loopback; the simulator is instant (20 tokens, no delay). **direct** is the simulator
itself, **django** a trivial Django view under daphne with Django's default middleware
(`bench/trivial/`), **miss**/**hit** Barista on its embedded defaults (a new question each
time / the same one, answered from the cache), **-pg** the same on PostgreSQL and the
machine's Redis. Medians of {ROUNDS} interleaved rounds: {SEQUENTIAL} sequential requests,
{STREAMED} streamed ones, then {CONCURRENT_REQUESTS} from {CONCURRENT_CLIENTS} clients at
once. CPU is the server's processes over the 64-client phase (Barista: daphne, one worker
per core and Redis; the simulator is not counted); Redis commands from `INFO commandstats`
over the same phase.

{table}

Requests/s per round: {rounds}.

{goal_table}
"""
    print(markdown)
    record("api_overhead", markdown)


if __name__ == "__main__":
    if sys.argv[1:2] == ["prepare"]:
        _prepare(sys.argv[2])
    else:
        main()
