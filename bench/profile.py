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


def by_area(collapsed: Path, areas: dict[str, str]) -> dict[str, float]:
    """Share of samples whose stack passes through each area (first match wins)."""
    shares = dict.fromkeys(areas, 0)
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for name, needle in areas.items():
            if needle in stack:
                shares[name] += int(count)
                break
    return {name: value / max(total, 1) for name, value in shares.items()}


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
    print(f"wrote {OUT}/{label}-web.svg and {label}-worker.svg; stacks in {STACKS}")


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "profile",
        sys.argv[2] if len(sys.argv) > 2 else "miss",
    )
