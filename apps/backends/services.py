"""Writes to the backend registry: what staff do in the console."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction

from apps.backends import health
from apps.backends.models import Backend
from apps.core.clients import backend_http_client


def backend_save(*, backend: Backend, api_key: str = "", clear_api_key: bool = False) -> Backend:
    """Save a backend staff added or edited; workers use it within a second.

    A typed ``api_key`` is stored encrypted; with neither it nor ``clear_api_key`` the
    stored key is kept.
    """
    if clear_api_key:
        backend.api_key_encrypted = ""
    elif api_key:
        backend.set_api_key(api_key)
    with transaction.atomic():
        # Sharing is the alias's: every backend of it says the same. Ticking or unticking
        # it on one sets it for all; a backend new to an alias (added, or moved) takes
        # the alias's choice instead of imposing its own.
        before = Backend.objects.filter(pk=backend.pk).values("alias", "share_answers").first()
        others = Backend.objects.filter(alias=backend.alias).exclude(pk=backend.pk)
        changed = before is not None and before["share_answers"] != backend.share_answers
        joined = before is None or before["alias"] != backend.alias
        if joined and not changed:
            existing = others.values_list("share_answers", flat=True).first()
            if existing is not None:
                backend.share_answers = existing
        backend.save()
        others.update(share_answers=backend.share_answers)
    return backend


def backend_set_state(*, backend: Backend, state: Backend.State) -> None:
    """Enable, drain or disable: workers see the change on their next pick."""
    backend.state = state
    backend.save(update_fields=["state", "updated_at"])


def backend_test_connection(
    *, backend: Backend, api_key: str = "", clear_api_key: bool = False
) -> health.CheckResult:
    """Check ``backend`` as staff typed it, before (or without) saving anything.

    The key is the one a save with the same arguments would keep.
    """
    key = "" if clear_api_key else api_key or backend.api_key()

    async def run() -> health.CheckResult:
        # The workers' client, new: the same address check, no redirects, no env proxies.
        async with backend_http_client() as client:
            return await health.check(
                client,
                name=backend.name,
                base_url=backend.base_url,
                model_name=backend.model_name,
                api_key=key,
                wait=settings.BARISTA_HEALTH_TIMEOUT,
            )

    return async_to_sync(run)()
