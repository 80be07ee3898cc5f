from __future__ import annotations

from django.http import HttpRequest

from apps.console.models import AuditEntry


def audit(request: HttpRequest, action: str, target: str = "", *, detail: str = "") -> AuditEntry:
    """Write down one console operation by the person making ``request``.

    Every console write records itself through this one call, once the operation has
    taken effect. ``detail`` must never carry a secret.
    """
    actor = request.user
    return AuditEntry.objects.create(
        actor=actor if actor.is_authenticated else None,
        action=action,
        target=target[:200],
        detail=detail,
    )
