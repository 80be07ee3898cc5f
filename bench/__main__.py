"""Run every benchmark, each in a process of its own (its own Redis, database and servers):
``make bench``, or ``python -m bench worker_capacity`` for one."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    "api_overhead",
    "e2e_latency",
    "worker_capacity",
    "cache",
    "fleet",
    "metrics_cost",
    "streams",
    "fairness",
    "capacity",
]


def main() -> None:
    chosen = sys.argv[1:] or BENCHMARKS
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        sys.exit(f"Unknown benchmark(s): {', '.join(sorted(unknown))}. Known: {BENCHMARKS}")
    failed = [
        name
        for name in chosen
        if subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False).returncode
    ]
    if failed:
        sys.exit(f"Failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
