"""Writes for conversations: a prompt from the chat page, and its recorded answer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from apps.chat.images import content_with
from apps.chat.models import Conversation, Message
from apps.chat.selectors import conversation_history, request_list_pending
from apps.gateway.admission import Principal
from apps.gateway.models import PromptRequest
from apps.gateway.operations import request_cancel
from apps.gateway.services import request_submit


class ConversationNotFound(Exception):
    """Raised for a conversation that does not exist *or belongs to someone else*: the two
    are indistinguishable to the caller on purpose."""


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= 60 else line[:59].rstrip() + "…"


class ConversationBusy(Exception):
    """The conversation's last prompt is still being answered: it cannot be replaced."""


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    """A prompt sent in a conversation: its ledger row and the conversation it joined."""

    request: PromptRequest
    conversation: Conversation

    @property
    def id(self) -> uuid.UUID:
        return self.request.id

    @property
    def status(self) -> str:
        return self.request.status

    @property
    def conversation_id(self) -> int:
        return self.conversation.pk


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
    system_prompt: str | None = None,
    images: list[str] | None = None,
) -> ChatPrompt:
    """Send a prompt in a conversation (a new one when ``conversation_id`` is None).

    ``params`` (temperature, max_tokens) become the conversation's and go with this and
    later prompts. ``replace_last`` swaps the conversation's last prompt and everything
    after it for this one: "regenerate" sends the same text, "edit" a new one.
    ``system_prompt`` is a new conversation's (set later with
    ``conversation_set_system_prompt``). ``images`` (checked by ``apps.chat.images``) go
    with this prompt; later prompts carry its text only."""
    if conversation_id is None:
        conversation = Conversation.objects.create(
            owner=user,
            title=_title_from(content),
            model=model,
            params=params or {},
            system_prompt=_system_prompt(system_prompt or ""),
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
    # Read no more prompts than the bound could send (each is at least one message).
    latest = settings.BARISTA_CHAT_HISTORY_MESSAGES
    history: list[dict[str, Any]] = _bounded(
        conversation_history(conversation=conversation, latest=latest)
    )
    if conversation.system_prompt:
        history.insert(0, {"role": "system", "content": conversation.system_prompt})
    history.append({"role": "user", "content": content_with(content, images or [])})
    request = request_submit(
        principal=Principal(user.pk),
        model=model,
        messages=history,
        params=dict(conversation.params),
        request_id=request_id,
        bypass_cache=bypass_cache,
    )
    Message.objects.create(
        conversation=conversation, content=content, images=images or [], request=request
    )
    if request.status == PromptRequest.Status.DONE:
        request.backend  # noqa: B018 - a hit is replayed at once: load what it names here
    return ChatPrompt(request=request, conversation=conversation)


def _bounded(history: list[dict[str, str]]) -> list[dict[str, str]]:
    """The newest whole exchanges of ``history`` within the history bounds: what a
    prompt sends and its ledger row stores, however long the conversation has grown.
    It starts with a prompt, never with an answer cut from its question."""
    most_messages = settings.BARISTA_CHAT_HISTORY_MESSAGES
    most_chars = settings.BARISTA_CHAT_HISTORY_CHARS
    start, chars = len(history), 0
    while start > 0:
        chars += len(history[start - 1]["content"])
        if len(history) - start + 1 > most_messages or chars > most_chars:
            break
        start -= 1
    while start < len(history) and history[start]["role"] != "user":
        start += 1
    return history[start:]


def _drop_last_exchange(conversation: Conversation) -> None:
    if request_list_pending(conversation=conversation).exists():
        raise ConversationBusy
    last_prompt = conversation.messages.last()
    if last_prompt is not None:
        last_prompt.delete()  # its answer stays in the ledger, no longer in the conversation


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


def _system_prompt(text: str) -> str:
    text = text.strip()
    if len(text) > SYSTEM_PROMPT_MAX:
        raise ValueError(f"A system prompt can be at most {SYSTEM_PROMPT_MAX:,} characters.")
    return text


SYSTEM_PROMPT_MAX = 8000


def conversation_set_system_prompt(*, user: User, pk: int, text: str) -> Conversation:
    """Set (or clear, with blank ``text``) the instructions sent first with every prompt
    of the owner's conversation from now on."""
    text = _system_prompt(text)
    updated = Conversation.objects.filter(pk=pk, owner=user).update(
        system_prompt=text, updated_at=timezone.now()
    )
    if not updated:
        raise ConversationNotFound
    return Conversation.objects.get(pk=pk)


def conversation_delete(*, user: User, pk: int) -> None:
    """Delete the owner's conversation and its messages; prompts still in flight for it
    are cancelled first, so no answer arrives for a conversation that is gone. The
    ledger keeps its rows (without the conversation) for usage and audit."""
    conversation = Conversation.objects.filter(pk=pk, owner=user).first()
    if conversation is None:
        raise ConversationNotFound
    pending = request_list_pending(conversation=conversation).values_list("id", flat=True)
    for request_id in list(pending):
        request_cancel(owner_id=user.pk, request_id=request_id)
    conversation.delete()
