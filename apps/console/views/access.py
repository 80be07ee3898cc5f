"""Who may call Barista and what staff did: API keys and the audit log."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from apps.api import shown_once
from apps.api.forms import PersonLimitsForm, StaffApiKeyForm
from apps.api.models import ApiKey, PersonLimits
from apps.api.services import TooManyKeys, api_key_revoke, person_limits_set
from apps.console.decorators import staff_required
from apps.console.selectors import audit_log
from apps.console.services import audit


@staff_required
def key_list(request: HttpRequest) -> HttpResponse:
    form = StaffApiKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            key, plain = form.create(form.cleaned_data["owner"])
        except TooManyKeys as exc:
            form.add_error(None, str(exc))
        else:
            audit(request, "key.create", f"{key.owner} / {key.name}", detail=f"{key.prefix}…")
            return shown_once.stash(request, redirect("console:keys"), plain)  # shown next
    created = shown_once.take(request)
    keys = ApiKey.objects.select_related("owner")[:500]
    response = render(
        request,
        "console/keys.html",
        {
            "form": form,
            "limits_form": PersonLimitsForm(),
            "limits": PersonLimits.objects.select_related("owner").order_by("owner__username"),
            "keys": keys,
            "created": created,
            "section": "keys",
        },
    )
    return shown_once.forget(request, response)


@staff_required
@require_POST
def person_limits(request: HttpRequest) -> HttpResponse:
    """Staff's limits on all of one person's keys together."""
    form = PersonLimitsForm(request.POST)
    if not form.is_valid():
        for field, errors in form.errors.items():
            messages.error(request, f"{field}: {' '.join(str(e) for e in errors)}")
        return redirect("console:keys")
    data = form.cleaned_data
    person_limits_set(
        owner=data["owner"],
        requests_per_minute=data["requests_per_minute"],
        tokens_per_minute=data["tokens_per_minute"],
        max_concurrent=data["max_concurrent"],
    )
    detail = ", ".join(
        f"{name}={data[name] or '—'}"
        for name in ("requests_per_minute", "tokens_per_minute", "max_concurrent")
    )
    audit(request, "person.limits", str(data["owner"]), detail=detail)
    messages.success(request, f"Limits on {data['owner']}'s keys saved; they apply at once.")
    return redirect("console:keys")


@staff_required
@require_POST
def key_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(ApiKey.objects.select_related("owner"), pk=pk)
    api_key_revoke(key=key)
    audit(request, "key.revoke", f"{key.owner} / {key.name}", detail=f"{key.prefix}…")
    messages.success(request, f"Revoked {key.owner}'s key “{key.name}”.")
    return redirect("console:keys")


@staff_required
def audit_list(request: HttpRequest) -> HttpResponse:
    entries = audit_log(limit=200)
    return render(request, "console/audit.html", {"entries": entries, "section": "audit"})
