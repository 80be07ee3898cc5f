from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Q, QuerySet

from apps.chat.models import Conversation, Message
from apps.gateway.models import PromptRequest

Status = PromptRequest.Status


def conversation_list(*, user: User, search: str = "") -> QuerySet[Conversation]:
    """The person's conversations, newest first; ``search`` matches titles, prompts and
    answers."""
    conversations = Conversation.objects.filter(owner=user)
    search = search.strip()
    if search:
        conversations = conversations.filter(
            Q(title__icontains=search)
            | Q(
                pk__in=Message.objects.filter(conversation__owner=user)
                .filter(Q(content__icontains=search) | Q(request__answer__icontains=search))
                .values("conversation_id")
            )
        )
    return conversations


def conversation_get(*, user: User, pk: int) -> Conversation | None:
    """The conversation if ``user`` owns it; None whether it is missing or someone else's."""
    return Conversation.objects.filter(owner=user, pk=pk).first()


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a conversation as the page shows it: what the person wrote, or the
    answer to it — read from the ledger row, which owns answers."""

    role: str
    content: str
    request: PromptRequest | None
    images: tuple[str, ...] = ()

    @property
    def request_id(self) -> Any:
        return self.request.id if self.request is not None else None

    @property
    def stopped(self) -> bool:
        """An answer its person stopped part-way: kept as far as it got."""
        return self.request is not None and self.request.status == PromptRequest.Status.CANCELLED


def message_list(
    *, conversation: Conversation, latest: int | None = None, images: bool = True
) -> list[Line]:
    """The conversation in order: each prompt, then its answer once there is one — or
    only its ``latest`` prompts and their answers; without their images if not ``images``."""
    lines: list[Line] = []
    messages = conversation.messages.select_related("request").defer(
        "request__messages", "request__params", "request__error"
    )
    if not images:
        messages = messages.defer("images")
    if latest is not None:
        newest_first = messages.order_by("-created_at", "-id")[:latest]
        messages = messages.filter(pk__in=[m.pk for m in newest_first])
    for message in messages:
        request = message.request
        attached = tuple(message.images) if images else ()
        lines.append(Line("user", message.content, request, attached))
        if request is not None and request.status == PromptRequest.Status.DONE:
            lines.append(Line("assistant", request.answer, request))
        elif request is not None and request.status == Status.CANCELLED and request.answer:
            lines.append(Line("assistant", request.answer, request))  # stopped part-way
    return lines


def conversation_export(*, conversation: Conversation) -> dict[str, Any]:
    """The whole conversation as a document: what the page shows, with each answer's
    model and whether it was stopped part-way."""
    lines = message_list(conversation=conversation)
    return {
        "title": conversation.title,
        "model": conversation.model,
        "system_prompt": conversation.system_prompt,
        "params": conversation.params,
        "created_at": conversation.created_at.isoformat(),
        "messages": [
            {
                "role": line.role,
                "content": line.content,
                **(
                    {"model": line.request.model}
                    if line.role == "assistant" and line.request
                    else {}
                ),
                **({"stopped": True} if line.role == "assistant" and line.stopped else {}),
            }
            for line in lines
        ],
    }


def export_markdown(export: dict[str, Any]) -> str:
    parts = [f"# {export['title'] or 'Untitled'}\n"]
    if export["system_prompt"]:
        parts.append(f"**System prompt:**\n\n{export['system_prompt']}\n")
    for message in export["messages"]:
        if message["role"] == "user":
            parts.append(f"## You\n\n{message['content']}\n")
        else:
            stopped = " (stopped)" if message.get("stopped") else ""
            parts.append(
                f"## {message.get('model') or 'Assistant'}{stopped}\n\n{message['content']}\n"
            )
    return "\n".join(parts)


def conversation_history(
    *, conversation: Conversation, latest: int | None = None
) -> list[dict[str, str]]:
    """The conversation as chat messages for the model: prompts and their answers (of
    the ``latest`` prompts only, if given). Text only: an image goes with its own prompt,
    not with every later one."""
    return [
        {"role": line.role, "content": line.content}
        for line in message_list(conversation=conversation, latest=latest, images=False)
    ]


def request_list_pending(*, conversation: Conversation) -> QuerySet[PromptRequest]:
    return (
        PromptRequest.objects.filter(chat_message__conversation=conversation)
        .pending()
        .order_by("queued_at")
    )
