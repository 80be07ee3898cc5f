"""``GET /metrics`` in Prometheus' text format, for the whole deployment: read from the
metrics store in Redis (every process's counts), not from this process's memory."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from redis.exceptions import RedisError
from rq import Worker

from apps.backends import live
from apps.backends.models import Backend
from apps.core import clients
from apps.gateway import fairness, metrics
from apps.gateway.queues import connection, queue


def _histogram(
    name: str, documentation: str, totals: dict[str, float], kind: str
) -> HistogramMetricFamily:
    running, buckets = 0.0, []
    for upper in metrics.BUCKETS:
        label = "+Inf" if upper == float("inf") else f"{upper:g}"
        running += totals.get(f"{kind}|{label}", 0.0)
        buckets.append((label, running))
    return HistogramMetricFamily(
        name, documentation, buckets=buckets, sum_value=totals.get(f"{kind}_sum", 0.0)
    )


class BaristaCollector:
    def collect(self) -> Iterator[Metric]:
        redis, queue_redis = clients.sync_redis(), connection()
        totals = metrics.totals(redis)
        requests = CounterMetricFamily(
            "barista_requests", "Requests by how they ended.", labels=["outcome", "model"]
        )
        calls = CounterMetricFamily(
            "barista_backend_requests",
            "Calls to backends by HTTP status (or 'error').",
            labels=["backend", "model", "status"],
        )
        tokens = CounterMetricFamily("barista_tokens", "Tokens in and out.", labels=["direction"])
        refused = CounterMetricFamily(
            "barista_refused_requests",
            "Requests admission refused, by reason (rate_limited, busy, too_many_pending, "
            "rate_limit_exceeded, model_not_allowed). Also in barista_requests{outcome="
            '"rejected"}, by model.',
            labels=["reason"],
        )
        client_errors = CounterMetricFamily(
            "barista_client_errors",
            "Requests a door answered with the client's error: the HTTP status on the API "
            "(4xx), the error code on the chat socket. Refusals and cancellations are not "
            "among them.",
            labels=["door", "status"],
        )
        for field, value in sorted(totals.items()):
            kind, _, rest = field.partition("|")
            if kind == "req":
                requests.add_metric(rest.split("|", 1), value)
            elif kind == "breq":
                calls.add_metric(rest.split("|", 2), value)
            elif kind == "rej":
                refused.add_metric([rest], value)
            elif kind == "cerr":
                client_errors.add_metric(rest.split("|", 1), value)
        for direction in ("in", "out"):
            tokens.add_metric([direction], totals.get(f"tokens_{direction}", 0.0))
        yield requests
        yield refused
        yield client_errors
        yield calls
        yield tokens
        yield CounterMetricFamily(
            "barista_caught_up_answers",
            "Final frames the channel layer never delivered, sent from the ledger instead.",
            value=totals.get("caught_up", 0.0),
        )
        yield CounterMetricFamily(
            "barista_refused_frames",
            "Frames the delivery guard refused because their owner was not the socket's "
            "user. Anything but zero means something upstream is broken.",
            value=totals.get("refused", 0.0),
        )
        yield _histogram(
            "barista_request_duration_seconds",
            "Time from submission to the recorded answer.",
            totals,
            "lat",
        )
        yield _histogram(
            "barista_time_to_first_token_seconds",
            "Time from submission to the first token.",
            totals,
            "ttft",
        )
        lines = [queue(name) for name in settings.BARISTA_QUEUES]
        try:
            depths: list[int] | None = fairness.depths(queue_redis, lines)
            workers: int | None = Worker.count(connection=queue_redis)
        except RedisError:  # the queues' Redis (another server) away: leave out its gauges
            depths = workers = None
        if depths is not None:
            depth = GaugeMetricFamily("barista_queue_depth", "Prompts waiting.", labels=["queue"])
            for line, waiting in zip(lines, depths, strict=True):
                depth.add_metric([line.name], waiting)
            yield depth
        backends = list(Backend.objects.exclude(state=Backend.State.DISABLED))
        states = live.snapshot_sync(clients.live_sync_redis(), [b.pk for b in backends])
        inflight = GaugeMetricFamily(
            "barista_inflight", "Calls in flight per backend.", labels=["backend"]
        )
        for backend in backends:
            inflight.add_metric([backend.name], states[backend.pk].in_flight)
        yield inflight
        if workers is not None:
            yield GaugeMetricFamily("barista_workers", "Gateway workers alive.", value=workers)


def _allowed(request: HttpRequest) -> bool:
    token = settings.BARISTA_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(header.encode(), f"Bearer {token}".encode()):
        return True
    return bool(request.user.is_authenticated and request.user.is_staff)


@never_cache
def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        response = HttpResponse(
            "Metrics need 'Authorization: Bearer <BARISTA_METRICS_TOKEN>' or a staff sign-in.\n",
            status=401,
            content_type="text/plain",
        )
        response["WWW-Authenticate"] = 'Bearer realm="barista-metrics"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BaristaCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
