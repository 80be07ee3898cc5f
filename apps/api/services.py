"""API keys: made (shown once), looked up by hash, revoked."""

from __future__ import annotations

import datetime
import hashlib
import secrets

from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from apps.api.models import ApiKey, PersonLimits

KEY_PREFIX = "bar-"
LAST_USED_EVERY = datetime.timedelta(minutes=1)  # write last_used_at at most this often


class TooManyKeys(Exception):
    pass


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


def api_key_create(
    *,
    owner: User,
    name: str,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    max_concurrent: int | None = None,
    allowed_models: list[str] | None = None,
) -> tuple[ApiKey, str]:
    """A new key for ``owner``; returns the row and the key, which is never shown again.
    Raises ``TooManyKeys`` when the owner has ``BARISTA_MAX_KEYS_PER_PERSON`` already."""
    most = settings.BARISTA_MAX_KEYS_PER_PERSON
    if ApiKey.objects.filter(owner=owner, revoked_at__isnull=True).count() >= most:
        raise TooManyKeys(
            f"{owner} has {most} keys, the most allowed: revoke one before making another."
        )
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        owner=owner,
        name=name.strip()[:100] or "key",
        prefix=plain[:10],
        hashed=hash_key(plain),
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        max_concurrent=max_concurrent,
        allowed_models=allowed_models or [],
    )
    return key, plain


def api_key_authenticate(plain: str) -> ApiKey | None:
    """The active key for this secret, with its owner; notes when it was last used."""
    if not plain.startswith(KEY_PREFIX) or len(plain) > 200:
        return None
    key = (
        ApiKey.objects.select_related("owner", "owner__api_limits")
        .filter(hashed=hash_key(plain), revoked_at__isnull=True, owner__is_active=True)
        .first()
    )
    if key is None:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_EVERY:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


def person_limits_set(
    *,
    owner: User,
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
    max_concurrent: int | None,
) -> PersonLimits:
    """Staff's limits on all of ``owner``'s keys together (all None: no limits)."""
    limits, _ = PersonLimits.objects.update_or_create(
        owner=owner,
        defaults={
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
            "max_concurrent": max_concurrent,
        },
    )
    return limits


def api_key_revoke(*, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
