from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import QuerySet

from apps.chat.models import Conversation, Message
from apps.gateway.models import PromptRequest


def conversation_list(*, user: User) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=user)


def conversation_get(*, user: User, pk: int) -> Conversation | None:
    """The conversation if ``user`` owns it; None whether it is missing or someone else's."""
    return Conversation.objects.filter(owner=user, pk=pk).first()


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.all()


def request_list_pending(*, conversation: Conversation) -> QuerySet[PromptRequest]:
    return conversation.requests.filter(
        status__in=[PromptRequest.Status.QUEUED, PromptRequest.Status.RUNNING]
    ).order_by("queued_at")
