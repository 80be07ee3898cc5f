"""The metrics store: what every process saw, added up in Redis.

Each process counts in memory and, once a second, adds its counts to two Redis hashes in
one pipelined round trip — however many prompts it handled — so recording costs a few
dictionary updates per prompt, not Redis commands:

* ``barista:metrics:total`` — counters since the store began (Prometheus' ``/metrics``);
* ``barista:metrics:s:<unix second>`` — the same counts for that second, kept 24 hours
  (the live metrics page draws from them).

Field names are ``kind|label|label…``. Latencies are histograms with fixed buckets; each
bucket is stored on its own and made cumulative when read.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import threading
import time
from collections import Counter

from django.conf import settings

logger = logging.getLogger(__name__)

TOTAL_KEY = "barista:metrics:total"
SECOND_KEY = "barista:metrics:s:{second}"
KEEP_SECONDS = 24 * 3600
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, float("inf"))
OUTCOMES = ("hit", "miss", "coalesced", "failed", "cancelled", "rejected")


def bucket(seconds: float) -> str:
    """The histogram bucket a duration falls in, as its upper bound."""
    upper = BUCKETS[min(bisect.bisect_left(BUCKETS, seconds), len(BUCKETS) - 1)]
    return "+Inf" if upper == float("inf") else f"{upper:g}"


class Recorder:
    """Counts of this process since its last flush; a daemon thread flushes every second."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._total: Counter[str] = Counter()
        self._seconds: dict[int, Counter[str]] = {}
        self._thread: threading.Thread | None = None

    def _add(self, field: str, amount: float, second_field: str | None = None) -> None:
        second = int(time.time())
        with self._lock:
            self._total[field] += amount  # type: ignore[assignment]
            per_second = self._seconds.setdefault(second, Counter())
            per_second[second_field or field] += amount  # type: ignore[assignment]
        if self._thread is None:
            self._start()

    def request(
        self,
        *,
        outcome: str,
        model: str,
        latency: float | None = None,
        ttft: float | None = None,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
    ) -> None:
        """One request ended (or was refused) with this outcome."""
        if not settings.BARISTA_METRICS_ENABLED:
            return
        self._add(f"req|{outcome}|{model}", 1, f"req|{outcome}")
        if latency is not None:
            self._add(f"lat|{bucket(latency)}", 1)
            self._add("lat_sum", latency)
        if ttft is not None:
            self._add(f"ttft|{bucket(ttft)}", 1)
            self._add("ttft_sum", ttft)
        if tokens_in:
            self._add("tokens_in", tokens_in)
        if tokens_out:
            self._add("tokens_out", tokens_out)

    def backend_call(self, *, backend: str, model: str, status: str) -> None:
        """One call to a backend ended: ``status`` is its HTTP status, or ``error``."""
        if not settings.BARISTA_METRICS_ENABLED:
            return
        self._add(f"breq|{backend}|{model}|{status}", 1, f"breq|{backend}|{status}")

    def flush(self) -> None:
        with self._lock:
            total, self._total = self._total, Counter()
            seconds, self._seconds = self._seconds, {}
        if not total:
            return
        from apps.gateway.queues import connection

        try:
            with connection().pipeline(transaction=False) as pipe:
                for field, amount in total.items():
                    _increment(pipe, TOTAL_KEY, field, amount)
                for second, counts in seconds.items():
                    key = SECOND_KEY.format(second=second)
                    for field, amount in counts.items():
                        _increment(pipe, key, field, amount)
                    pipe.expire(key, KEEP_SECONDS)
                pipe.execute()
        except Exception:  # metrics must never break the request path
            logger.warning("could not write metrics; %d counts dropped", len(total))

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
            self._thread.start()
        atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()


def _increment(pipe: object, key: str, field: str, amount: float) -> None:
    if float(amount).is_integer():
        pipe.hincrby(key, field, int(amount))  # type: ignore[attr-defined]
    else:
        pipe.hincrbyfloat(key, field, amount)  # type: ignore[attr-defined]


recorder = Recorder()


def totals(connection: object) -> dict[str, float]:
    raw = connection.hgetall(TOTAL_KEY)  # type: ignore[attr-defined]
    return {k.decode(): float(v) for k, v in raw.items()}
