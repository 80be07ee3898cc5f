from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User

from apps.console.models import AuditEntry


def audit_record(
    *, actor: User | AnonymousUser, action: str, target: str = "", detail: str = ""
) -> AuditEntry:
    """Write down one console operation. ``detail`` must never carry a secret."""
    return AuditEntry.objects.create(
        actor=actor if actor.is_authenticated else None,
        action=action,
        target=target[:200],
        detail=detail,
    )
