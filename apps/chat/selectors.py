from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import Count, Q, QuerySet, Sum

from apps.chat.models import Conversation, Message
from apps.gateway.models import PromptRequest


def conversation_list(*, user: User, search: str = "") -> QuerySet[Conversation]:
    """The person's conversations, newest first; ``search`` matches titles and the text
    of any message in them."""
    conversations = Conversation.objects.filter(owner=user)
    search = search.strip()
    if search:
        conversations = conversations.filter(
            Q(title__icontains=search)
            | Q(
                pk__in=Message.objects.filter(
                    conversation__owner=user, content__icontains=search
                ).values("conversation_id")
            )
        )
    return conversations


def conversation_get(*, user: User, pk: int) -> Conversation | None:
    """The conversation if ``user`` owns it; None whether it is missing or someone else's."""
    return Conversation.objects.filter(owner=user, pk=pk).first()


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    # The row's cache outcome labels the answer; its history and answer are not needed.
    return conversation.messages.select_related("request").defer(
        "request__messages", "request__answer", "request__params"
    )


def request_list_pending(*, conversation: Conversation) -> QuerySet[PromptRequest]:
    return conversation.requests.filter(
        status__in=[PromptRequest.Status.QUEUED, PromptRequest.Status.RUNNING]
    ).order_by("queued_at")


def usage_summary(*, user: User) -> dict[str, int]:
    """What the person has asked of Barista, from the ledger: prompts, tokens, and what the
    cache and coalescing saved them."""
    rows = PromptRequest.objects.filter(owner=user)
    totals = rows.aggregate(
        prompts=Count("id"),
        answered=Count("id", filter=Q(status=PromptRequest.Status.DONE)),
        failed=Count("id", filter=Q(status=PromptRequest.Status.FAILED)),
        tokens_in=Sum("prompt_tokens"),
        tokens_out=Sum("completion_tokens"),
        from_api=Count("id", filter=Q(source=PromptRequest.Source.API)),
    )
    saved = rows.filter(
        status=PromptRequest.Status.DONE,
        cache_outcome__in=[PromptRequest.CacheOutcome.HIT, PromptRequest.CacheOutcome.COALESCED],
    ).aggregate(answers=Count("id"), tokens=Sum("completion_tokens"))
    return {
        **{key: int(value or 0) for key, value in totals.items()},
        "saved_answers": int(saved["answers"] or 0),
        "saved_tokens": int(saved["tokens"] or 0),
    }
