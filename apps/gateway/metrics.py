"""The metrics store: what every process saw, added up in Redis.

Each process counts in memory and, once a second, adds its counts to two Redis hashes in
one pipelined round trip — however many prompts it handled — so recording costs a few
dictionary updates per prompt, not Redis commands:

* ``barista:metrics:total`` — counters since the store began (Prometheus' ``/metrics``);
* ``barista:metrics:s:<unix second>`` — the same counts for that second, kept 24 hours
  (the live metrics page draws from them).

Field names are ``kind|label|label…``. Latencies are histograms with fixed buckets; each
bucket is stored on its own and made cumulative when read.

A second's hash keeps filling for up to a flush interval after the second ends (each
process adds its counts when its next flush comes): readers of the live page read the
last ``SETTLE_SECONDS`` again (``apps.console.live_metrics``).
"""

from __future__ import annotations

import atexit
import bisect
import datetime
import logging
import threading
import time
from collections import Counter
from typing import Any

from django.conf import settings
from redis.typing import EncodableT, FieldT
from rq import Queue
from rq.job import Job
from rq.worker_registration import REDIS_WORKER_KEYS

from apps.backends import live
from apps.core import clients
from apps.gateway import fairness

logger = logging.getLogger(__name__)

TOTAL_KEY = "barista:metrics:total"
SECOND_KEY = "barista:metrics:s:{second}"
KEEP_SECONDS = 24 * 3600
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, float("inf"))
OUTCOMES = ("hit", "miss", "coalesced", "failed", "cancelled", "rejected")
FLUSH_INTERVAL = 1.0
# How many of the last seconds the live page reads again: a second's hash is complete a
# flush interval after the second ends, give or take the flush's own round trip and
# clocks a little apart.
SETTLE_SECONDS = int(FLUSH_INTERVAL) + 2

# The codes of admission's refusals (``apps.gateway.admission.Rejection``): counted there,
# by reason, so a door that answers one with an error must not count it again as the
# client's. (A test keeps this list in step with admission's.)
REFUSALS = frozenset(
    {"busy", "rate_limited", "rate_limit_exceeded", "too_many_pending", "model_not_allowed"}
)
# Not the client's mistake either: a cancelled request (counted as cancelled) and Redis
# not answering.
NOT_CLIENT_ERRORS = REFUSALS | {"cancelled", "unavailable"}


def bucket(seconds: float) -> str:
    """The histogram bucket a duration falls in, as its upper bound."""
    upper = BUCKETS[min(bisect.bisect_left(BUCKETS, seconds), len(BUCKETS) - 1)]
    return "+Inf" if upper == float("inf") else f"{upper:g}"


class Recorder:
    """Counts of this process since its last flush; a daemon thread flushes every second."""

    def __init__(self, interval: float = FLUSH_INTERVAL) -> None:
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

    def rejected(self, *, model: str, reason: str) -> None:
        """Admission refused a request: an outcome of its model, and a count by ``reason``
        (the refusal's code: ``rate_limited``, ``busy``, ``too_many_pending``…)."""
        if not settings.BARISTA_METRICS_ENABLED:
            return
        self.request(outcome="rejected", model=model)
        self._add(f"rej|{reason}", 1)

    def client_error(self, *, door: str, kind: str) -> None:
        """A door answered a request with an error that is the client's: a 4xx on the API
        (``kind`` its status), an error frame on the chat socket (``kind`` its code).
        Refusals are not among them: admission counts those (``rejected``)."""
        if not settings.BARISTA_METRICS_ENABLED:
            return
        self._add(f"cerr|{door}|{kind}", 1)

    def api_error(self, *, status: int, code: str | None) -> None:
        """The API answered with an error (every one passes here): a 4xx counts as a
        client error by status, unless it is a refusal or a cancellation."""
        if 400 <= status < 500 and code not in NOT_CLIENT_ERRORS:
            self.client_error(door="api", kind=str(status))

    def socket_error(self, *, code: str) -> None:
        """The chat socket answered a frame with an error: the client's, by code, unless
        it is a refusal or Redis not answering."""
        if code not in NOT_CLIENT_ERRORS:
            self.client_error(door="chat", kind=code)

    def backend_call(
        self,
        *,
        backend: str,
        model: str,
        status: str,
        seconds: float | None = None,
        ttft: float | None = None,
    ) -> None:
        """One call to a backend ended: ``status`` is its HTTP status, or ``error``;
        ``seconds`` and ``ttft`` time an answered call from the moment it was sent."""
        if not settings.BARISTA_METRICS_ENABLED:
            return
        self._add(f"breq|{backend}|{model}|{status}", 1, f"breq|{backend}|{status}")
        if seconds is not None:
            self._add(f"bsec|{backend}", seconds)
            self._add(f"bn|{backend}", 1)
        if ttft is not None:
            self._add(f"bttft|{backend}", ttft)

    def caught_up(self) -> None:
        """A final frame lost on the way and sent from the ledger instead (chat sockets)."""
        self._add("caught_up", 1)

    def refused_frame(self) -> None:
        """A frame the delivery guard refused: its owner was not the socket's user.
        Counted even with metrics off — it must never go unnoticed."""
        self._add("refused", 1)

    def flush(self) -> None:
        with self._lock:
            total, self._total = self._total, Counter()
            seconds, self._seconds = self._seconds, {}
        if not total:
            return
        try:
            with clients.sync_redis().pipeline(transaction=False) as pipe:
                for field, amount in total.items():
                    _increment(pipe, TOTAL_KEY, field, amount)
                for second, counts in seconds.items():
                    key = SECOND_KEY.format(second=second)
                    for field, amount in counts.items():
                        _increment(pipe, key, field, amount)
                    pipe.expire(key, KEEP_SECONDS)
                pipe.execute()
        except Exception as exc:  # metrics must never break the request path
            logger.warning(
                "could not write metrics (%s: %s); %d counts dropped",
                type(exc).__name__,
                exc,
                len(total),
            )

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
    # By type, not by value: a sum of seconds that happens to be 0.0 this time must not
    # go through HINCRBY, which Redis refuses once the field holds "0.25".
    if isinstance(amount, int):
        pipe.hincrby(key, field, amount)  # type: ignore[attr-defined]
    else:
        pipe.hincrbyfloat(key, field, amount)  # type: ignore[attr-defined]


recorder = Recorder()


def record_gauges(connection: Any, backends: list[tuple[int, str]], second: int) -> None:
    """Write this second's gauges — queue depth and oldest wait per queue, calls in
    flight per backend, workers alive — into the second's hash. One process of the fleet
    does it per second (the gauges are the same whoever reads them): see
    ``apps.gateway.chores``. Four round trips: two to the queues' Redis (``connection``),
    two to live state's."""
    names = settings.BARISTA_QUEUES
    lines = [Queue(name, connection=connection) for name in names]
    with connection.pipeline(transaction=False) as pipe:
        for queue in lines:
            fairness.count_waiting(pipe, queue)
        for queue in lines:
            fairness.read_head(pipe, connection, queue)
        pipe.scard(REDIS_WORKER_KEYS)
        replies = pipe.execute()
    count = 2 * len(lines)
    depths = fairness.waiting_counts(replies[:count])
    heads = [
        fairness.head_from(*replies[count + 2 * i : count + 2 * i + 2]) for i in range(len(lines))
    ]
    with connection.pipeline(transaction=False) as pipe:
        for head in heads:
            pipe.hget(Job.key_for(head), "enqueued_at") if head else pipe.echo("")
        enqueued = pipe.execute()
    redis = clients.sync_redis()
    states = live.snapshot_sync(clients.live_sync_redis(), [pk for pk, _ in backends])
    fields: dict[FieldT, EncodableT] = {"workers": int(replies[-1])}
    wall = time.time()
    for index, name in enumerate(names):
        fields[f"depth|{name}"] = depths[index]
        fields[f"oldest|{name}"] = round(seconds_since(enqueued[index], wall), 3)
    for pk, name in backends:
        fields[f"inflight|{name}"] = states[pk].in_flight
    key = SECOND_KEY.format(second=second)
    with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, KEEP_SECONDS)
        pipe.execute()


def seconds_since(enqueued_at: bytes | str | None, wall: float) -> float:
    """Seconds since an RQ ``enqueued_at`` stamp (UTC, ISO 8601); 0 when there is none."""
    if not enqueued_at:
        return 0.0
    text = enqueued_at.decode() if isinstance(enqueued_at, bytes) else enqueued_at
    try:
        stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return max(0.0, wall - stamp.timestamp())


def totals(connection: object) -> dict[str, float]:
    raw = connection.hgetall(TOTAL_KEY)  # type: ignore[attr-defined]
    return {k.decode(): float(v) for k, v in raw.items()}
