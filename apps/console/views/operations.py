"""Running the system: overview, queues, jobs, workers, the answer cache, live metrics."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from redis.exceptions import RedisError

from apps.backends.models import Backend
from apps.console import selectors
from apps.console.decorators import staff_required
from apps.console.services import audit
from apps.core import clients
from apps.gateway import cache
from apps.gateway import operations as gateway_operations
from apps.gateway.models import PromptRequest
from apps.gateway.queues import connection as redis_connection


@staff_required
def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "console/overview.html", {**selectors.overview(), "section": "overview"})


@staff_required
def queue_list(request: HttpRequest) -> HttpResponse:
    try:
        rows: list[selectors.QueueRow] | None = selectors.queue_rows(redis_connection())
    except RedisError:
        rows = None
    return render(request, "console/queues.html", {"queues": rows, "section": "queues"})


@staff_required
@require_POST
def queue_pause(request: HttpRequest, name: str) -> HttpResponse:
    if name not in settings.BARISTA_QUEUES:
        messages.error(request, f"There is no queue named {name!r}.")
        return redirect("console:queues")
    paused = request.POST.get("action") == "pause"
    gateway_operations.queue_pause(name=name, paused=paused)
    audit(request, "queue.pause" if paused else "queue.resume", name)
    messages.success(
        request,
        f"Paused {name}: its prompts wait until you resume it."
        if paused
        else f"Resumed {name}: workers take from it within a second.",
    )
    return redirect("console:queues")


# The jobs page's buttons: the service each calls, what to say when that service finds
# nothing to act on, and what to say when it acted.
JOB_ACTIONS: dict[str, tuple[Callable[..., PromptRequest | None], str, str]] = {
    "retry": (
        gateway_operations.request_retry,
        "Nothing to retry: only a failed prompt can be retried.",
        "Retrying {owner}'s prompt: it is back in its queue.",
    ),
    "cancel": (
        gateway_operations.request_discard_job,
        "No prompt has that id.",
        "Cancelled the job for {owner}'s prompt.",
    ),
    # A cancelled prompt's job: only taken off the list (the prompt stays cancelled).
    "remove": (
        gateway_operations.request_discard_job,
        "No prompt has that id.",
        "Removed the job of {owner}'s cancelled prompt from the list.",
    ),
}


@staff_required
def job_list(request: HttpRequest) -> HttpResponse:
    kind = request.GET.get("kind", "failed")
    if kind not in selectors.JOB_KINDS:
        kind = "failed"
    try:
        rows: list[selectors.JobRow] | None = selectors.job_rows(redis_connection(), kind=kind)
    except RedisError:
        rows = None
    return render(
        request,
        "console/jobs.html",
        {"jobs": rows, "kind": kind, "kinds": selectors.JOB_KINDS, "section": "jobs"},
    )


@staff_required
@require_POST
def job_action(request: HttpRequest, job_id: str) -> HttpResponse:
    action = request.POST.get("action", "")
    kind = request.POST.get("kind", "failed")
    back = redirect(
        f"{reverse('console:jobs')}?kind={kind if kind in selectors.JOB_KINDS else 'failed'}"
    )
    try:
        request_id = uuid.UUID(job_id)
    except ValueError:
        messages.error(request, "That is not a prompt's job.")
        return back
    if action not in JOB_ACTIONS:
        messages.error(request, f"Unknown action {action!r}.")
        return back
    act, nothing_done, done = JOB_ACTIONS[action]
    row = act(request_id=request_id)
    if row is None:
        messages.error(request, nothing_done)
        return back
    messages.success(request, done.format(owner=row.owner))
    audit(request, f"job.{action}", str(request_id), detail=str(row.owner))
    return back


@staff_required
def worker_list(request: HttpRequest) -> HttpResponse:
    try:
        rows: list[selectors.WorkerRow] | None = selectors.worker_rows(redis_connection())
        suspended = gateway_operations.workers_suspended()
    except RedisError:
        rows, suspended = None, False
    return render(
        request,
        "console/workers.html",
        {
            "workers": rows,
            "suspended": suspended,
            "stale_after": settings.BARISTA_WORKER_HEARTBEAT_TTL,
            "section": "workers",
        },
    )


@staff_required
@require_POST
def worker_action(request: HttpRequest) -> HttpResponse:
    action = request.POST.get("action", "")
    target = "all workers"
    if action == "suspend":
        gateway_operations.workers_suspend()
        messages.success(request, "Suspended: workers finish what they hold and take nothing new.")
    elif action == "resume":
        gateway_operations.workers_resume()
        messages.success(request, "Resumed: workers take prompts again.")
    elif action == "shutdown":
        target = request.POST.get("name", "")
        if not gateway_operations.worker_shutdown(name=target):
            messages.error(request, "No worker by that name is running.")
            return redirect("console:workers")
        messages.success(request, f"Asked {target} to stop: it finishes its prompts, then exits.")
    else:
        messages.error(request, f"Unknown action {action!r}.")
        return redirect("console:workers")
    audit(request, f"workers.{action}", target)
    return redirect("console:workers")


@staff_required
def cache_overview(request: HttpRequest) -> HttpResponse:
    try:
        connection = clients.sync_redis()
        counted: dict[str, float] | None = cache.counters(connection)
        stored: int | None = cache.size(connection)
    except RedisError:
        counted, stored = None, None
    aliases = sorted(set(Backend.objects.values_list("alias", flat=True)))
    return render(
        request,
        "console/cache.html",
        {
            "counters": counted,
            "stored": stored,
            "aliases": aliases,
            "policy": settings.BARISTA_CACHE_POLICY,
            "scope": settings.BARISTA_CACHE_SCOPE,
            "shared": [alias for alias in aliases if cache.shared(alias)],
            "ttl": settings.BARISTA_CACHE_TTL,
            "section": "cache",
        },
    )


@staff_required
@require_POST
def cache_flush(request: HttpRequest) -> HttpResponse:
    alias = request.POST.get("alias", "").strip()
    if alias and not Backend.objects.filter(alias=alias).exists():
        messages.error(request, f"No backend serves the model {alias!r}.")
        return redirect("console:cache")
    dropped = cache.flush(alias or None)
    audit(request, "cache.flush", alias or "all models", detail=f"{dropped} answers dropped")
    messages.success(
        request, f"Flushed {dropped} stored answers{f' for {alias}' if alias else ''}."
    )
    return redirect("console:cache")


@staff_required
def metrics_page(request: HttpRequest) -> HttpResponse:
    return render(request, "console/metrics.html", {"section": "metrics"})
