from __future__ import annotations

from django.conf import settings
from django.db import models


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

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, alias: str) -> bool:
        return not self.allowed_models or alias in self.allowed_models
