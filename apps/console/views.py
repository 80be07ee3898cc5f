"""The staff console."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST
from redis.exceptions import RedisError

from apps.api.forms import StaffApiKeyForm
from apps.api.models import ApiKey
from apps.api.services import api_key_revoke
from apps.api.views import NEW_KEY_SESSION
from apps.backends import health, live
from apps.backends import services as backend_services
from apps.backends.forms import BackendForm
from apps.backends.models import Backend
from apps.console import selectors
from apps.console.models import AuditEntry
from apps.console.services import audit
from apps.gateway import cache, operations
from apps.gateway import services as gateway_services
from apps.gateway.queues import connection as redis_connection

View = Callable[..., HttpResponse]


def staff_required(view: View) -> View:
    """Signed-out visitors go to the sign-in page; signed-in non-staff get 403."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff:
            raise PermissionDenied("The console is for staff.")
        return view(request, *args, **kwargs)

    return never_cache(wrapped)


# --- Backends ---------------------------------------------------------------------------


def _live_rows(backends: list[Backend]) -> tuple[list[dict[str, Any]], bool]:
    """Each backend with its live state; the flag says whether Redis answered."""
    try:
        states = live.snapshot_sync(redis_connection(), [b.pk for b in backends])
        reachable = True
    except RedisError:
        states, reachable = {}, False
    rows = []
    for backend in backends:
        state = states.get(backend.pk)
        rows.append({"backend": backend, "live": state, "json": _live_json(backend, state)})
    return rows, reachable


def _live_json(backend: Backend, state: live.BackendLive | None) -> dict[str, Any]:
    if state is None:
        return {"id": backend.pk, "known": False}
    if state.up is None:
        health_text = "not checked yet"
    elif state.up:
        health_text = f"up · {state.check_ms:.0f} ms" if state.check_ms is not None else "up"
    else:
        health_text = f"down · {state.check_error}"
    return {
        "id": backend.pk,
        "known": True,
        "in_flight": state.in_flight,
        "cap": backend.max_concurrency,
        "ttft_ms": round(state.ttft_ewma * 1000) if state.ttft_ewma is not None else None,
        "circuit": state.circuit,
        "failures": state.failures,
        "probe_in": round(state.probe_in, 1),
        "retry_after": round(state.retry_after, 1),
        "up": state.up,
        "health": health_text,
        "waiting": state.waiting,
        "kv_cache": state.kv_cache,
    }


@staff_required
def backend_list(request: HttpRequest) -> HttpResponse:
    backends = list(Backend.objects.all())
    rows, reachable = _live_rows(backends)
    return render(
        request,
        "console/backends.html",
        {"rows": rows, "redis_ok": reachable, "states": Backend.State, "section": "backends"},
    )


@staff_required
def backend_live(request: HttpRequest) -> JsonResponse:
    """The live columns of the backend list, polled by the page every two seconds."""
    rows, reachable = _live_rows(list(Backend.objects.all()))
    return JsonResponse({"redis": reachable, "backends": [row["json"] for row in rows]})


@staff_required
def backend_edit(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    backend = get_object_or_404(Backend, pk=pk) if pk is not None else None
    form = BackendForm(request.POST or None, instance=backend)
    test_result: health.CheckResult | None = None
    if request.method == "POST" and form.is_valid():
        api_key, clear_api_key = form.cleaned_data["api_key"], form.cleaned_data["clear_api_key"]
        if request.POST.get("action") == "test":
            test_result = backend_services.backend_test_connection(
                backend=form.instance, api_key=api_key, clear_api_key=clear_api_key
            )
            audit(request, "backend.test", form.instance.name, detail=test_result.message)
        else:
            saved = backend_services.backend_save(
                backend=form.instance, api_key=api_key, clear_api_key=clear_api_key
            )
            action = "backend.add" if backend is None else "backend.edit"
            audit(request, action, saved.name, detail=form.change_summary)
            messages.success(request, f"Saved {saved.name}. Workers use it within a second.")
            return redirect("console:backends")
    return render(
        request,
        "console/backend_form.html",
        {"form": form, "backend": backend, "test": test_result, "section": "backends"},
    )


@staff_required
@require_POST
def backend_set_state(request: HttpRequest, pk: int) -> HttpResponse:
    backend = get_object_or_404(Backend, pk=pk)
    state = request.POST.get("state", "")
    if state not in Backend.State.values:
        messages.error(request, f"Unknown state {state!r}.")
        return redirect("console:backends")
    before = backend.state
    backend_services.backend_set_state(backend=backend, state=Backend.State(state))
    audit(request, f"backend.{state}", backend.name, detail=f"was {before}")
    messages.success(request, f"{backend.name} is now {state}.")
    return redirect("console:backends")


# --- Cache ------------------------------------------------------------------------------


@staff_required
def cache_overview(request: HttpRequest) -> HttpResponse:
    try:
        connection = redis_connection()
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


# --- API keys -----------------------------------------------------------------------


@staff_required
def key_list(request: HttpRequest) -> HttpResponse:
    form = StaffApiKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        key, plain = form.create(form.cleaned_data["owner"])
        audit(request, "key.create", f"{key.owner} / {key.name}", detail=f"{key.prefix}…")
        request.session[NEW_KEY_SESSION] = plain  # shown once, by the next page
        return redirect("console:keys")
    created = request.session.pop(NEW_KEY_SESSION, None)
    keys = ApiKey.objects.select_related("owner")[:500]
    return render(
        request,
        "console/keys.html",
        {"form": form, "keys": keys, "created": created, "section": "keys"},
    )


@staff_required
@require_POST
def key_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(ApiKey.objects.select_related("owner"), pk=pk)
    api_key_revoke(key=key)
    audit(request, "key.revoke", f"{key.owner} / {key.name}", detail=f"{key.prefix}…")
    messages.success(request, f"Revoked {key.owner}'s key “{key.name}”.")
    return redirect("console:keys")


# --- Overview, queues, jobs, workers -------------------------------------------------


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
    operations.queue_pause(name=name, paused=paused)
    audit(request, "queue.pause" if paused else "queue.resume", name)
    messages.success(
        request,
        f"Paused {name}: its prompts wait until you resume it."
        if paused
        else f"Resumed {name}: workers take from it within a second.",
    )
    return redirect("console:queues")


JOB_KINDS = ("failed", "waiting")


@staff_required
def job_list(request: HttpRequest) -> HttpResponse:
    kind = request.GET.get("kind", "failed")
    if kind not in JOB_KINDS:
        kind = "failed"
    try:
        rows: list[selectors.JobRow] | None = selectors.job_rows(redis_connection(), kind=kind)
    except RedisError:
        rows = None
    return render(
        request,
        "console/jobs.html",
        {"jobs": rows, "kind": kind, "kinds": JOB_KINDS, "section": "jobs"},
    )


@staff_required
@require_POST
def job_action(request: HttpRequest, job_id: str) -> HttpResponse:
    action = request.POST.get("action", "")
    kind = request.POST.get("kind", "failed")
    back = redirect(f"{reverse('console:jobs')}?kind={kind if kind in JOB_KINDS else 'failed'}")
    try:
        request_id = uuid.UUID(job_id)
    except ValueError:
        messages.error(request, "That is not a prompt's job.")
        return back
    if action == "retry":
        row = gateway_services.request_retry(request_id=request_id)
        if row is None:
            messages.error(request, "Nothing to retry: only a failed prompt can be retried.")
            return back
        messages.success(request, f"Retrying {row.owner}'s prompt: it is back in its queue.")
    elif action == "cancel":
        row = gateway_services.request_discard_job(request_id=request_id)
        if row is None:
            messages.error(request, "No prompt has that id.")
            return back
        messages.success(request, f"Cancelled the job for {row.owner}'s prompt.")
    else:
        messages.error(request, f"Unknown action {action!r}.")
        return back
    audit(request, f"job.{action}", str(request_id), detail=str(row.owner))
    return back


@staff_required
def worker_list(request: HttpRequest) -> HttpResponse:
    try:
        rows: list[selectors.WorkerRow] | None = selectors.worker_rows(redis_connection())
        suspended = operations.workers_suspended()
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
        operations.workers_suspend()
        messages.success(request, "Suspended: workers finish what they hold and take nothing new.")
    elif action == "resume":
        operations.workers_resume()
        messages.success(request, "Resumed: workers take prompts again.")
    elif action == "shutdown":
        target = request.POST.get("name", "")
        if not operations.worker_shutdown(name=target):
            messages.error(request, "No worker by that name is running.")
            return redirect("console:workers")
        messages.success(request, f"Asked {target} to stop: it finishes its prompts, then exits.")
    else:
        messages.error(request, f"Unknown action {action!r}.")
        return redirect("console:workers")
    audit(request, f"workers.{action}", target)
    return redirect("console:workers")


# --- Live metrics ---------------------------------------------------------------------


@staff_required
def metrics_page(request: HttpRequest) -> HttpResponse:
    return render(request, "console/metrics.html", {"section": "metrics"})


# --- Audit log --------------------------------------------------------------------------


@staff_required
def audit_list(request: HttpRequest) -> HttpResponse:
    entries = AuditEntry.objects.select_related("actor")[:200]
    return render(request, "console/audit.html", {"entries": entries, "section": "audit"})
