from __future__ import annotations

import uuid

from django.contrib.auth.models import User

from apps.gateway.models import PromptRequest


def request_get_owned(*, user: User, request_id: str | uuid.UUID) -> PromptRequest | None:
    """The ledger row if ``user`` owns it; None if missing, malformed or someone else's."""
    try:
        parsed = uuid.UUID(str(request_id))
    except ValueError:
        return None
    return PromptRequest.objects.filter(id=parsed, owner=user).first()
