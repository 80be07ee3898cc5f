"""API keys: made (shown once), looked up by hash, revoked.

A key found is kept in the process for ``KEY_REUSE_SECONDS``, so a program's burst of
requests asks the database for it once, not once per request (a third of the queries of
an API request). What changes a key — revoking it, its limits, its owner's limits or
account — empties the keeping process's store at once (``forget_keys``, on the models'
saves and deletes); every other process sees the change within that second.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
import time

from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from apps.api.models import ApiKey, PersonLimits

KEY_PREFIX = "bar-"
LAST_USED_EVERY = datetime.timedelta(minutes=1)  # write last_used_at at most this often
KEY_REUSE_SECONDS = 1.0
KEYS_KEPT = 10_000  # beyond this many keys found in one second, start again

# hash of a key -> (monotonic time it was read, the key with its owner and their limits)
_found: dict[str, tuple[float, ApiKey]] = {}


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
    """The active key for this secret, with its owner; notes when it was last used.
    Shared by the requests of the next ``KEY_REUSE_SECONDS``: read it, never change it."""
    if not plain.startswith(KEY_PREFIX) or len(plain) > 200:
        return None
    hashed = hash_key(plain)
    found = _found.get(hashed)
    if found is None or time.monotonic() - found[0] >= KEY_REUSE_SECONDS:
        read = (
            ApiKey.objects.select_related("owner", "owner__api_limits")
            .filter(hashed=hashed, revoked_at__isnull=True, owner__is_active=True)
            .first()
        )
        if read is None:
            _found.pop(hashed, None)
            return None
        if len(_found) >= KEYS_KEPT:
            _found.clear()
        found = _found[hashed] = (time.monotonic(), read)
    key = found[1]
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_EVERY:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


def forget_keys(**kwargs: object) -> None:
    """Keys, their limits or their owners changed: look every key up again."""
    _found.clear()


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
