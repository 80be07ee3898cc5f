"""Monitoring doors: liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from redis import Redis
from rq import Worker

from apps.core import clients
from apps.gateway import queues


def redis_servers() -> dict[str, Redis]:
    """Each Redis role's client, by the name /readyz gives it — one entry per URL: the
    roles on REDIS_URL's are all "redis"."""
    servers = {"redis": clients.sync_redis()}
    for name, client in (
        ("redis_live", clients.live_sync_redis()),
        ("redis_queues", queues.connection()),
    ):
        if all(client is not other for other in servers.values()):
            servers[name] = client
    return servers


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """200 only when Redis (each role's server), the database and at least one worker
    are reachable."""
    checks: dict[str, object] = {}
    missing: list[str] = []
    queue_redis = queues.connection()
    for name, server in redis_servers().items():
        try:
            server.ping()
            checks[name] = "ok"
        except Exception as exc:  # any failure to talk to Redis means not ready
            checks[name] = f"unreachable ({type(exc).__name__})"
            missing.append(name)
            if server is queue_redis:
                checks["workers"] = "unknown"
                missing.append("workers")
            continue
        if server is queue_redis:
            try:
                checks["workers"] = workers = Worker.count(connection=queue_redis)
            except Exception as exc:
                checks["workers"], workers = f"unknown ({type(exc).__name__})", 0
            if workers < 1:
                missing.append("workers")
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
