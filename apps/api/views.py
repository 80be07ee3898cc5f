"""A person's account page (usage and API keys) and their keys: make one (shown once),
see them, revoke one."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from apps.api import shown_once
from apps.api.forms import ApiKeyForm
from apps.api.models import ApiKey
from apps.api.services import TooManyKeys, api_key_revoke
from apps.gateway.selectors import usage_summary


@login_required
def account_settings(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "account/settings.html",
        {
            "usage": usage_summary(user=request.user),  # type: ignore[arg-type]
            "keys": ApiKey.objects.filter(owner=request.user.pk, revoked_at__isnull=True),
        },
    )


@never_cache
@login_required
def key_list(request: HttpRequest) -> HttpResponse:
    form = ApiKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            _, plain = form.create(request.user)  # type: ignore[arg-type]
        except TooManyKeys as exc:
            form.add_error(None, str(exc))
        else:
            # Post/redirect/get: a reload must not make a second key; the next page
            # shows it.
            return shown_once.stash(request, redirect("api:keys"), plain)
    created = shown_once.take(request)
    keys = ApiKey.objects.filter(owner=request.user.pk)
    response = render(
        request,
        "api/keys.html",
        {
            "form": form,
            "keys": keys,
            "created": created,
            "base_url": request.build_absolute_uri("/v1"),
        },
    )
    return shown_once.forget(request, response)


@require_POST
@login_required
def key_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    key = ApiKey.objects.filter(pk=pk, owner=request.user.pk).first()
    if key is None:
        raise Http404("No such key.")  # someone else's key is "not found" too
    api_key_revoke(key=key)
    messages.success(request, f"Revoked “{key.name}”. Programs using it now get 401.")
    return redirect("api:keys")
