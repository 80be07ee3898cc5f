from __future__ import annotations

from django.core.validators import MinValueValidator, URLValidator
from django.db import models


class Backend(models.Model):
    """An OpenAI-compatible AI server that workers may hand prompts to.

    Callers name a public ``alias``; many backends may serve one alias, each under the
    model name it expects (``model_name``). Only staff register backends: callers can
    never supply a URL.
    """

    name = models.CharField(max_length=100, unique=True)
    base_url = models.CharField(
        max_length=500,
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="Root of the OpenAI-compatible API, e.g. http://127.0.0.1:9101/v1",
    )
    model_name = models.CharField(max_length=200, help_text="Model name the backend expects.")
    alias = models.SlugField(
        max_length=100, help_text="Public model name callers use; many backends may share one."
    )
    weight = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    max_concurrency = models.PositiveIntegerField(default=32, validators=[MinValueValidator(1)])
    enabled = models.BooleanField(default=True)
    simulated = models.BooleanField(
        default=False, help_text="Barista's own simulator; labelled 'simulated' in the UI."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["alias", "name"]
        indexes = [models.Index(fields=["alias", "enabled"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.alias})"
