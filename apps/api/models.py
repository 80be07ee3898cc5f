from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.gateway.admission import KeyLimits, Principal


class ApiKey(models.Model):
    """A key a program uses on ``/v1/``. Only its SHA-256 is stored (keys are 256 random
    bits, so a fast hash is enough); the key itself is shown once, when it is made."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(
        max_length=16, help_text="The key's first characters, to tell keys apart."
    )
    hashed = models.CharField(max_length=64, unique=True, editable=False)
    # Optional limits; empty means the site-wide defaults.
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(null=True, blank=True)
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Model aliases this key may use; empty = all."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def limits(self) -> KeyLimits:
        """The key's limits, for the gateway's admission (which knows no ApiKey)."""
        return KeyLimits(
            id=self.pk,
            allowed_models=tuple(self.allowed_models or ()),
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            max_concurrent=self.max_concurrent,
        )

    def principal(self) -> Principal:
        """Who asks with this key, for admission: its owner, the key's limits, and the
        limits staff set on the owner (load with ``owner__api_limits``)."""
        try:
            person = self.owner.api_limits.limits()
        except PersonLimits.DoesNotExist:
            person = None
        return Principal(self.owner_id, self.limits(), person)


class PersonLimits(models.Model):
    """Limits staff set on a person's use of the API: on all of their keys together, so
    making another key does not escape them (a key's own limits bound that key only)."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_limits"
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "person limits"

    def __str__(self) -> str:
        return f"limits of {self.owner}"

    def limits(self) -> KeyLimits | None:
        if not (self.requests_per_minute or self.tokens_per_minute or self.max_concurrent):
            return None
        return KeyLimits(
            id=self.owner_id,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            max_concurrent=self.max_concurrent,
            scope="person",
        )
