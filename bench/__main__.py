"""Run every benchmark: ``make bench`` (or ``python -m bench``)."""

from __future__ import annotations

import sys

from bench import e2e_latency, worker_capacity
from bench.harness import _cleanup


def main() -> None:
    chosen = set(sys.argv[1:])  # e.g. `python -m bench worker_capacity`
    try:
        for name, bench in [("e2e_latency", e2e_latency), ("worker_capacity", worker_capacity)]:
            if not chosen or name in chosen:
                bench.main()
    finally:
        for stop in _cleanup:
            stop()  # type: ignore[operator]


if __name__ == "__main__":
    main()
