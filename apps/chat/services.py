"""Writes for conversations: a prompt from the chat page, and its recorded answer."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from apps.chat.models import Conversation, Message
from apps.gateway.models import PromptRequest
from apps.gateway.services import request_submit


class ConversationNotFound(Exception):
    """Raised for a conversation that does not exist *or belongs to someone else*: the two
    are indistinguishable to the caller on purpose."""


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= 60 else line[:59].rstrip() + "…"


@transaction.atomic
def chat_prompt_submit(
    *,
    user: User,
    model: str,
    content: str,
    conversation_id: int | None = None,
    request_id: uuid.UUID | None = None,
    bypass_cache: bool = False,
) -> PromptRequest:
    if conversation_id is None:
        conversation = Conversation.objects.create(
            owner=user, title=_title_from(content), model=model
        )
    else:
        try:
            conversation = Conversation.objects.select_for_update().get(
                pk=conversation_id, owner=user
            )
        except Conversation.DoesNotExist:
            raise ConversationNotFound from None
        conversation.model = model
        conversation.save(update_fields=["model", "updated_at"])
    history = [
        {"role": role, "content": text}
        for role, text in conversation.messages.values_list("role", "content")
    ]
    history.append({"role": Message.Role.USER, "content": content})
    request = request_submit(
        owner=user,
        model=model,
        messages=history,
        conversation_id=conversation.pk,
        request_id=request_id,
        bypass_cache=bypass_cache,
    )
    Message.objects.create(
        conversation=conversation, role=Message.Role.USER, content=content, request=request
    )
    if request.status == PromptRequest.Status.DONE:  # answered from the cache
        message_record_answers(requests=[request])
    request.conversation = conversation  # callers in async code read it without a query
    return request


def message_record_answers(*, requests: list[PromptRequest]) -> None:
    """Add finished answers to their conversations (called inside request_complete_many's
    transaction, so the ledger and the conversations never disagree)."""
    messages, conversation_ids = [], set()
    for request in requests:
        conversation_id = request.conversation_id
        assert conversation_id is not None
        conversation_ids.add(conversation_id)
        messages.append(
            Message(
                conversation_id=conversation_id,
                role=Message.Role.ASSISTANT,
                content=request.answer,
                request=request,
            )
        )
    Message.objects.bulk_create(messages)
    Conversation.objects.filter(pk__in=conversation_ids).update(updated_at=timezone.now())
