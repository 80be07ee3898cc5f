"""Monitoring doors: liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

import django_rq
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from rq import Worker


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """200 only when Redis, the database and at least one worker are reachable."""
    checks: dict[str, object] = {}
    missing: list[str] = []
    try:
        redis = django_rq.get_connection(settings.BARISTA_QUEUES[0])
        redis.ping()
        checks["redis"] = "ok"
        workers = Worker.count(connection=redis)
        checks["workers"] = workers
        if workers < 1:
            missing.append("workers")
    except Exception as exc:  # any failure to talk to Redis means not ready
        checks["redis"] = f"unreachable ({type(exc).__name__})"
        checks["workers"] = "unknown"
        missing += ["redis", "workers"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable ({type(exc).__name__})"
        missing.append("database")
    status = 503 if missing else 200
    return JsonResponse(
        {"status": "ready" if not missing else "not ready", "missing": missing, "checks": checks},
        status=status,
    )
