"""Run every benchmark: ``make bench`` (or ``python -m bench``)."""

from __future__ import annotations

from bench import e2e_latency
from bench.harness import _cleanup


def main() -> None:
    try:
        e2e_latency.main()
    finally:
        for stop in _cleanup:
            stop()  # type: ignore[operator]


if __name__ == "__main__":
    main()
