"""Backends: the list with live state, add/edit with a connection test, enable/drain/disable."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST
from redis.exceptions import RedisError

from apps.backends import health, live
from apps.backends import services as backend_services
from apps.backends.forms import BackendForm
from apps.backends.models import Backend
from apps.console.decorators import staff_required
from apps.console.services import audit
from apps.core import clients


def _live_rows(backends: list[Backend]) -> tuple[list[dict[str, Any]], bool]:
    """Each backend with its live state; the flag says whether Redis answered."""
    try:
        states = live.snapshot_sync(clients.live_sync_redis(), [b.pk for b in backends])
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
