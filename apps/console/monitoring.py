"""Monitoring doors: liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from rq import Worker

from apps.core import clients
from apps.gateway import queues


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """200 only when Redis (each role's server), the database and at least one worker
    are reachable."""
    checks: dict[str, object] = {}
    missing: list[str] = []
    redis, queue_redis = clients.sync_redis(), queues.connection()
    if queue_redis is not redis:
        try:
            redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # any failure to talk to Redis means not ready
            checks["redis"] = f"unreachable ({type(exc).__name__})"
            missing.append("redis")
    name = "redis" if queue_redis is redis else "redis_queues"
    try:
        queue_redis.ping()
        checks[name] = "ok"
        workers = Worker.count(connection=queue_redis)
        checks["workers"] = workers
        if workers < 1:
            missing.append("workers")
    except Exception as exc:  # any failure to talk to Redis means not ready
        checks[name] = f"unreachable ({type(exc).__name__})"
        checks["workers"] = "unknown"
        missing += [name, "workers"]
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
