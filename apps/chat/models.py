from __future__ import annotations

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=100, blank=True, help_text="Alias last used.")
    # Sampling parameters chosen on the chat page (temperature, max_tokens), sent with
    # every prompt of this conversation.
    params = models.JSONField(default=dict, blank=True)
    # Sent first with every prompt of the conversation (never trimmed by the history
    # bounds); editable at any time, and the next prompt uses the new one.
    system_prompt = models.TextField(blank=True, max_length=8000)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["owner", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    """What the person wrote in a conversation, linked to the ledger row it started.

    The answer is not copied here: the ledger (``apps.gateway``) owns answers, and a
    conversation reads each one from its request (``apps.chat.selectors``). So the chat
    app depends on the gateway, never the other way round (DESIGN.md, "Layers")."""

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    content = models.TextField()
    # Images attached to the prompt, as the data: URLs the page sent (apps/chat/images.py).
    images = models.JSONField(default=list, blank=True)
    request = models.OneToOneField(
        "gateway.PromptRequest",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="chat_message",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.content[:40]
