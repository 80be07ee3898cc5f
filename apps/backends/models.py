from __future__ import annotations

import logging
import os
from decimal import Decimal
from typing import Any

from django.core.validators import (
    MaxValueValidator,
    MinValueValidator,
    RegexValidator,
    URLValidator,
)
from django.db import models

from apps.backends import secrets
from apps.backends.validators import key_variable_refusal, validate_backend_url

logger = logging.getLogger(__name__)

# Backend keys may be read only from variables named so: never SECRET_KEY, DATABASE_URL…
KEY_VARIABLE_PREFIX = "BARISTA_BACKEND_KEY_"


class Backend(models.Model):
    """An OpenAI-compatible AI server that workers may hand prompts to.

    Callers name a public ``alias``; many backends may serve one alias, each under the
    model name it expects (``model_name``). Only staff register backends: callers can
    never supply a URL.
    """

    class State(models.TextChoices):
        ENABLED = "enabled"
        DRAINING = "draining", "draining (finishes what it has, takes nothing new)"
        DISABLED = "disabled"

    class Kind(models.TextChoices):
        CHAT = "chat", "chat (chat completions; text completions where the server has them)"
        EMBEDDINGS = "embeddings"

    class Tier(models.TextChoices):
        PRIMARY = "primary"
        FALLBACK = "fallback", "fallback (only when no primary can take the prompt)"

    name = models.CharField(max_length=100, unique=True)
    base_url = models.CharField(
        max_length=500,
        validators=[URLValidator(schemes=["http", "https"]), validate_backend_url],
        help_text="Root of the OpenAI-compatible API, e.g. http://127.0.0.1:9101/v1",
    )
    model_name = models.CharField(max_length=200, help_text="Model name the backend expects.")
    alias = models.SlugField(
        max_length=100, help_text="Public model name callers use; many backends may share one."
    )
    api_key_env = models.CharField(
        "API key variable",
        max_length=100,
        blank=True,
        validators=[
            RegexValidator(
                rf"^{KEY_VARIABLE_PREFIX}[A-Z0-9_]+$",
                f"A variable whose name starts with {KEY_VARIABLE_PREFIX} (e.g. "
                f"{KEY_VARIABLE_PREFIX}OPENAI): no other setting of the server may be sent "
                "to a backend.",
            )
        ],
        help_text="Name of the environment variable holding this backend's API key (the key "
        f"is then never stored in the database); it starts with {KEY_VARIABLE_PREFIX}. Set "
        "NAME_ORIGIN beside it (e.g. https://api.openai.com) to send the key to that server "
        "only.",
    )
    # Or typed in the console: kept encrypted (apps.backends.secrets), never shown again.
    api_key_encrypted = models.TextField(blank=True, default="", editable=False)
    weight = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(1000)]
    )
    max_concurrency = models.PositiveIntegerField(
        default=32, validators=[MinValueValidator(1), MaxValueValidator(100_000)]
    )
    timeout = models.FloatField(
        default=120.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(3600)],
        help_text="Seconds per request.",
    )
    tier = models.CharField(max_length=10, choices=Tier.choices, default=Tier.PRIMARY)
    state = models.CharField(max_length=10, choices=State.choices, default=State.ENABLED)
    price_input_per_million = models.DecimalField(
        max_digits=10, decimal_places=4, default=Decimal(0), help_text="Per million input tokens."
    )
    price_output_per_million = models.DecimalField(
        max_digits=10, decimal_places=4, default=Decimal(0), help_text="Per million output tokens."
    )
    kind = models.CharField(
        max_length=10,
        choices=Kind.choices,
        default=Kind.CHAT,
        help_text="What it serves under its alias: chat, or embeddings (/v1/embeddings).",
    )
    drop_params = models.CharField(
        "fields it refuses",
        max_length=500,
        blank=True,
        default="",
        validators=[
            RegexValidator(
                r"^\s*([A-Za-z_][A-Za-z0-9_.-]*\s*(,\s*[A-Za-z_][A-Za-z0-9_.-]*\s*)*)?$",
                "Field names, separated by commas.",
            )
        ],
        help_text="Request fields to leave out of what is sent to this backend, separated "
        "by commas (e.g. 'logprobs, service_tier') — for a server that refuses what "
        "clients send.",
    )
    share_answers = models.BooleanField(
        "answers are shared between people",
        default=False,
        help_text="An identical question from anyone gets the same stored answer, and "
        "identical questions in flight are merged — and people are told so. For "
        "deterministic, FAQ-style models; applies to every backend of the alias. Off: each "
        "person's answers are theirs alone.",
    )
    accepts_images = models.BooleanField(
        "reads images",
        default=False,
        help_text="Its model reads images in prompts (vision). The chat page offers to attach "
        "images on a model only when every enabled backend of it reads them.",
    )
    simulated = models.BooleanField(
        default=False, help_text="Barista's own simulator; labelled 'simulated' in the UI."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["alias", "name"]
        indexes = [models.Index(fields=["alias", "state"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.alias})"

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_encrypted or self.api_key_env)

    def set_api_key(self, plain: str) -> None:
        self.api_key_encrypted = secrets.encrypt(plain)

    def without_dropped(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` less the fields this backend refuses (``drop_params``)."""
        dropped = {name.strip() for name in self.drop_params.split(",") if name.strip()}
        return {k: v for k, v in params.items() if k not in dropped} if dropped else params

    def api_key(self) -> str:
        """The key to send, read at call time: the stored one, else the named variable."""
        if self.api_key_encrypted:
            return secrets.decrypt(self.api_key_encrypted)
        if not self.api_key_env.startswith(KEY_VARIABLE_PREFIX):
            return ""  # (a row saved before the prefix was required: never SECRET_KEY…)
        refusal = key_variable_refusal(self.api_key_env, self.base_url)
        if refusal is not None:  # (a row saved before the variable's origin was set)
            logger.warning("backend %s: no key sent: %s", self.name, refusal)
            return ""
        return os.environ.get(self.api_key_env, "")
