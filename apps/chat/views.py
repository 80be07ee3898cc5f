from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from apps.backends.selectors import alias_list
from apps.chat import selectors


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
    models = alias_list()
    selected = conversation.model if conversation and conversation.model else None
    return render(
        request,
        "chat/home.html",
        {
            "conversations": selectors.conversation_list(user=request.user)[:100],
            "conversation": conversation,
            "chat_messages": messages,
            "pending": pending,
            "models": models,
            "selected_model": selected or (models[0]["alias"] if models else ""),
        },
    )
