"""The chat pages: conversations (list, search, open, rename, delete), the model picker's
health, the person's settings and usage, and optional self sign-up."""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.text import slugify
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from apps.backends.selectors import alias_health
from apps.chat import selectors, services
from apps.core import clients
from apps.gateway.cache import shared


class AuthenticatedHttpRequest(HttpRequest):
    user: User


@login_required
def home(request: AuthenticatedHttpRequest, pk: int | None = None) -> HttpResponse:
    conversation = None
    messages: list[object] = []
    pending: list[dict[str, str]] = []
    if pk is not None:
        conversation = selectors.conversation_get(user=request.user, pk=pk)
        if conversation is None:
            raise Http404("Conversation not found.")
        messages = list(selectors.message_list(conversation=conversation))
        pending = [
            {"id": str(r.id), "status": r.status}
            for r in selectors.request_list_pending(conversation=conversation)
        ]
    models = alias_health(clients.live_sync_redis())
    up = [str(m["alias"]) for m in models if m["up"]]
    selected = (
        conversation.model
        if conversation and conversation.model
        else (up[0] if up else (str(models[0]["alias"]) if models else ""))
    )
    # The health dot's label as the page's script would set it, so it is right before
    # the script runs too (and never a bare "Model status" beside the model picker).
    health = next((m for m in models if m["alias"] == selected), None)
    if health is None:
        health_label = "No model"
    else:
        health_label = f"{selected} is answering" if health["up"] else str(health["reason"])
    search = request.GET.get("q", "")[:200]
    return render(
        request,
        "chat/home.html",
        {
            "conversations": selectors.conversation_list(user=request.user, search=search)[:100],
            "search": search,
            "conversation": conversation,
            "chat_messages": messages,
            "pending": pending,
            "models": models,
            "selected_model": selected,
            "health_label": health_label,
            "params": conversation.params if conversation else {},
            "max_tokens_limit": settings.BARISTA_API_MAX_TOKENS,
            "image_limits": {
                "each": settings.BARISTA_CHAT_IMAGE_BYTES,
                "total": settings.BARISTA_CHAT_IMAGES_BYTES,
                "most": settings.BARISTA_CHAT_IMAGES_PER_PROMPT,
            },
            # Models whose answers are shared between people: said so, and badges shown.
            "shared_models": {str(m["alias"]) for m in models if shared(str(m["alias"]))},
        },
    )


@never_cache
@login_required
def model_health(request: HttpRequest) -> JsonResponse:
    """The picker's health dots, polled by the chat page."""
    return JsonResponse({"models": alias_health(clients.live_sync_redis())})


@require_POST
@login_required
def conversation_rename(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    try:
        services.conversation_rename(user=request.user, pk=pk, title=request.POST.get("title", ""))
    except services.ConversationNotFound:
        raise Http404("Conversation not found.") from None
    except ValueError as exc:
        flash.error(request, str(exc))
    return redirect("chat:conversation", pk=pk)


@require_POST
@login_required
def conversation_delete(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    try:
        services.conversation_delete(user=request.user, pk=pk)
    except services.ConversationNotFound:
        raise Http404("Conversation not found.") from None
    flash.success(request, "Conversation deleted.")
    return redirect("chat:home")


@require_POST
@login_required
def conversation_system_prompt(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    try:
        services.conversation_set_system_prompt(
            user=request.user, pk=pk, text=request.POST.get("system_prompt", "")
        )
    except services.ConversationNotFound:
        raise Http404("Conversation not found.") from None
    except ValueError as exc:
        flash.error(request, str(exc))
    else:
        flash.success(request, "System prompt saved: the next prompt uses it.")
    return redirect("chat:conversation", pk=pk)


@login_required
def conversation_export(request: AuthenticatedHttpRequest, pk: int, fmt: str) -> HttpResponse:
    """The owner's conversation as a Markdown or JSON file, as the page shows it."""
    conversation = selectors.conversation_get(user=request.user, pk=pk)
    if conversation is None or fmt not in ("md", "json"):
        raise Http404("Conversation not found.")
    export = selectors.conversation_export(conversation=conversation)
    if fmt == "json":
        response = HttpResponse(
            json.dumps(export, indent=2, ensure_ascii=False), content_type="application/json"
        )
    else:
        response = HttpResponse(
            selectors.export_markdown(export), content_type="text/markdown; charset=utf-8"
        )
    name = slugify(conversation.title)[:60] or f"conversation-{pk}"
    response["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return response


def signup(request: HttpRequest) -> HttpResponse:
    """Self sign-up, when ``BARISTA_SIGNUP`` is on (off by default: staff add people)."""
    if not settings.BARISTA_SIGNUP:
        raise Http404("Sign-up is closed; ask an administrator for an account.")
    if request.user.is_authenticated:
        return redirect("chat:home")
    form: UserCreationForm[User] = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("chat:home")
    return render(request, "registration/signup.html", {"form": form})
