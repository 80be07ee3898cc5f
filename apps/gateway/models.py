from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class PromptRequestQuerySet(models.QuerySet["PromptRequest"]):
    def pending(self) -> PromptRequestQuerySet:
        """Waiting in line or being answered: what admission counts as in flight."""
        return self.filter(status__in=PromptRequest.PENDING_STATUSES)


class PromptRequest(models.Model):
    """The ledger: one row per prompt, whichever door it came through.

    The id is an unguessable UUID: it names the channel group the answer streams to and
    is how an owner fetches a result again. Nothing a person must get back lives only in
    a channel (DESIGN.md, decision 2): the final answer is stored here, and only here —
    a conversation (apps.chat) links to its requests and reads answers from them.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class CacheOutcome(models.TextChoices):
        MISS = "miss"
        HIT = "hit"
        COALESCED = "coalesced"

    class Source(models.TextChoices):
        CHAT = "chat"
        API = "api"

    class Kind(models.TextChoices):
        CHAT = "chat", "chat completion"
        TEXT = "text", "text completion"
        EMBEDDINGS = "embeddings"

    FINAL_STATUSES = frozenset({Status.DONE, Status.FAILED, Status.CANCELLED})
    PENDING_STATUSES = frozenset({Status.QUEUED, Status.RUNNING})

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="prompt_requests"
    )
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.CHAT)
    # What was asked: a chat completion (messages), a text completion (the prompt is kept
    # as one user message), or embeddings (answered by the web process: only counts are
    # kept — apps.gateway.embeddings).
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.CHAT)
    # The API key (apps.api) a program sent it with. A plain id, not a foreign key: the
    # ledger sits below the doors and knows no door's models (DESIGN.md, "Layers").
    api_key_id = models.PositiveBigIntegerField(null=True, blank=True, db_index=True)
    model = models.CharField(max_length=100, help_text="Public alias asked for.")
    messages = models.JSONField()
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    backend = models.ForeignKey(
        "backends.Backend", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cache_outcome = models.CharField(
        max_length=16, choices=CacheOutcome.choices, default=CacheOutcome.MISS
    )
    # Hash of the normalized request (apps.gateway.cache); blank when not cacheable.
    cache_key = models.CharField(max_length=200, blank=True, default="")
    # The identical request in flight this one follows (apps.gateway.coalescing).
    coalesced_with = models.UUIDField(null=True, blank=True, db_index=True)
    # How many times a worker started it. A worker that dies mid-answer leaves the count
    # up; one that gives the prompt back (shutting down, Redis away) takes its start back.
    # The reconciler stops re-running a prompt after 1 + BARISTA_JOB_RETRIES starts.
    attempts = models.PositiveSmallIntegerField(default=0)
    answer = models.TextField(blank=True)
    # What the answer holds beyond its text: tool calls, logprobs, other choices, the
    # finish reason (apps.gateway.extras). {} for a plain text answer.
    extra = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    queued_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = PromptRequestQuerySet.as_manager()

    class Meta:
        ordering = ["-queued_at"]
        indexes = [models.Index(fields=["owner", "-queued_at"])]

    def __str__(self) -> str:
        return f"{self.id} {self.model} {self.status}"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL_STATUSES
