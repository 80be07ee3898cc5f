"""Where a request's CPU goes: py-spy flame graphs of Barista's web process and a worker
while 64 clients send cache misses (or hits) to ``/v1/chat/completions``.

``python -m bench.profile LABEL [miss|hit]`` writes ``docs/perf/LABEL-{web,worker}.svg``
and prints py-spy's top functions by own time. Not part of ``make bench``: profiling
slows the processes it samples.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.api_overhead import Target, _as_hit, barista, crowd
from bench.harness import BASE_DIR, fleet, setup_django

SECONDS = 20
OUT = BASE_DIR / "docs" / "perf"
STACKS = Path(tempfile.mkdtemp(prefix="barista-profile-"))  # collapsed stacks, for own_time


def record(pid: int, output: Path, form: str) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(SECONDS),
            "--rate",
            "100",
            "--nonblocking",
            "--format",
            form,
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
    )


def own_time(collapsed: Path, top: int = 25) -> list[tuple[str, float]]:
    """The functions where the samples were taken (own time), as shares of all samples."""
    counts: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        counts[leaf] = counts.get(leaf, 0) + int(count)
        total += int(count)
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
    return [(name, count / max(total, 1)) for name, count in ranked]


# Where a busy sample is counted: the first area, in this order, whose marks its stack
# passes through (the channel layer's Redis calls are the channel layer's, a transaction's
# on-commit hook is what it calls). py-spy names a library's frames by its path within
# site-packages.
AREAS: dict[str, tuple[str, ...]] = {
    "database connect/close": (
        "BaseDatabaseWrapper.connect ",
        "BaseDatabaseWrapper.close ",
        "close_old_connections ",
    ),
    "RQ: enqueue / job bookkeeping": ("(rq/",),
    "database queries": ("(django/db/models/", "(django/db/backends/"),
    "channel layer (channels-redis)": ("(channels_redis/",),
    "Redis (admission, cache, live state, scripts)": ("(redis/", "(django_redis/"),
    "backend HTTP call (httpx)": ("(httpx/", "(httpcore/"),
    "thread hand-offs (asgiref, executor)": ("(asgiref/", "(concurrent/futures/"),
}
OTHER = "everything else (HTTP, JSON, asyncio, Barista's own code)"
IDLE = ("select (selectors.py", "bzpopmin ", "_worker (concurrent/futures/thread.py")
# Frames that only pass work on: on_commit runs its hook at once outside a transaction.
TRANSPARENT = ("BaseDatabaseWrapper.on_commit ",)


def by_area(collapsed: Path) -> tuple[dict[str, float], int]:
    """Share of busy samples in each area (``AREAS``, first match wins) and how many busy
    samples there were. Idle ones — waiting in ``select``, in the worker's blocking pop,
    an executor thread waiting for work — are left out."""
    shares = dict.fromkeys([*AREAS, OTHER], 0)
    busy = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        if any(mark in leaf for mark in IDLE) or "bzpopmin " in stack:
            continue
        busy += int(count)
        stack = ";".join(f for f in stack.split(";") if not f.startswith(TRANSPARENT))
        area = next(
            (name for name, marks in AREAS.items() if any(mark in stack for mark in marks)), OTHER
        )
        shares[area] += int(count)
    return {name: value / max(busy, 1) for name, value in shares.items()}, busy


def main(label: str, kind: str) -> None:
    from apps.gateway.localrun import free_port

    env = setup_django()
    OUT.mkdir(parents=True, exist_ok=True)
    with fleet(env) as running:
        simulator = running.simulator(free_port(), "--ttft", "0", "--tps", "0", "--tokens", "20")
        target: Target = barista(running, {}, free_port(), simulator)
        if kind == "hit":
            target = _as_hit(target, "hit")
        asyncio.run(crowd(target))  # warm up
        web, worker = target.pids[0], target.pids[1]
        spies = []
        for role, pid in (("web", web), ("worker", worker)):
            spies.append(record(pid, OUT / f"{label}-{role}.svg", "flamegraph"))
            spies.append(record(pid, STACKS / f"{label}-{role}.txt", "raw"))
        while any(spy.poll() is None for spy in spies):
            asyncio.run(crowd(target))
    for role in ("web", "worker"):
        print(f"\n== {label} {role}: own time ==")
        for name, share in own_time(STACKS / f"{label}-{role}.txt"):
            print(f"{share * 100:5.1f} %  {name}")
    print(f"\n| where the busy samples fell | {label}-web | {label}-worker |\n|---|---|---|")
    web_shares, web_busy = by_area(STACKS / f"{label}-web.txt")
    work_shares, work_busy = by_area(STACKS / f"{label}-worker.txt")
    for name, share in web_shares.items():
        print(f"| {name} | {share * 100:.0f} % | {work_shares[name] * 100:.0f} % |")
    print(f"| busy samples (100 Hz, {SECONDS} s) | {web_busy} | {work_busy} |")
    print(f"wrote {OUT}/{label}-web.svg and {label}-worker.svg; stacks in {STACKS}")


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "profile",
        sys.argv[2] if len(sys.argv) > 2 else "miss",
    )
