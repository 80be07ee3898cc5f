"""Writes for conversations: a prompt from the chat page, and its recorded answer."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.chat.models import Conversation, Message
from apps.chat.selectors import request_list_pending
from apps.gateway.models import PromptRequest
from apps.gateway.services import request_submit


class ConversationNotFound(Exception):
    """Raised for a conversation that does not exist *or belongs to someone else*: the two
    are indistinguishable to the caller on purpose."""


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= 60 else line[:59].rstrip() + "…"


class ConversationBusy(Exception):
    """The conversation's last prompt is still being answered: it cannot be replaced."""


@transaction.atomic
def chat_prompt_submit(
    *,
    user: User,
    model: str,
    content: str,
    conversation_id: int | None = None,
    request_id: uuid.UUID | None = None,
    bypass_cache: bool = False,
    params: dict[str, Any] | None = None,
    replace_last: bool = False,
) -> PromptRequest:
    """Send a prompt in a conversation (a new one when ``conversation_id`` is None).

    ``params`` (temperature, max_tokens) become the conversation's and go with this and
    later prompts. ``replace_last`` swaps the conversation's last prompt and everything
    after it for this one: "regenerate" sends the same text, "edit" a new one."""
    if conversation_id is None:
        conversation = Conversation.objects.create(
            owner=user, title=_title_from(content), model=model, params=params or {}
        )
    else:
        try:
            conversation = Conversation.objects.select_for_update().get(
                pk=conversation_id, owner=user
            )
        except Conversation.DoesNotExist:
            raise ConversationNotFound from None
        conversation.model = model
        if params is not None:
            conversation.params = params
        conversation.save(update_fields=["model", "params", "updated_at"])
        if replace_last:
            _drop_last_exchange(conversation)
    history = [
        {"role": role, "content": text}
        for role, text in conversation.messages.values_list("role", "content")
    ]
    history.append({"role": Message.Role.USER, "content": content})
    request = request_submit(
        owner=user,
        model=model,
        messages=history,
        params=dict(conversation.params),
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


def _drop_last_exchange(conversation: Conversation) -> None:
    if request_list_pending(conversation=conversation).exists():
        raise ConversationBusy
    last_prompt = conversation.messages.filter(role=Message.Role.USER).last()
    if last_prompt is not None:
        conversation.messages.filter(
            Q(created_at__gt=last_prompt.created_at)
            | Q(created_at=last_prompt.created_at, pk__gte=last_prompt.pk)
        ).delete()


def conversation_rename(*, user: User, pk: int, title: str) -> Conversation:
    title = " ".join(title.split())[:200]
    if not title:
        raise ValueError("A title cannot be empty.")
    updated = Conversation.objects.filter(pk=pk, owner=user).update(
        title=title, updated_at=timezone.now()
    )
    if not updated:
        raise ConversationNotFound
    return Conversation.objects.get(pk=pk)


def conversation_delete(*, user: User, pk: int) -> None:
    """Delete the owner's conversation and its messages; prompts still in flight for it
    are cancelled first, so no answer arrives for a conversation that is gone. The
    ledger keeps its rows (without the conversation) for usage and audit."""
    from apps.gateway.services import request_cancel

    conversation = Conversation.objects.filter(pk=pk, owner=user).first()
    if conversation is None:
        raise ConversationNotFound
    pending = request_list_pending(conversation=conversation).values_list("id", flat=True)
    for request_id in list(pending):
        request_cancel(owner=user, request_id=request_id)
    conversation.delete()


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
