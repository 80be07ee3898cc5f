from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from redis.exceptions import RedisError

from apps.backends import live
from apps.backends.models import Backend


def backend_list_enabled(*, alias: str | None = None) -> QuerySet[Backend]:
    """Backends that take new prompts (not draining, not disabled)."""
    queryset = Backend.objects.filter(state=Backend.State.ENABLED)
    if alias is not None:
        queryset = queryset.filter(alias=alias)
    return queryset


def backend_list_active() -> QuerySet[Backend]:
    """Backends that may still hold prompts (enabled or draining): the ones to health-check."""
    return Backend.objects.exclude(state=Backend.State.DISABLED)


def alias_list() -> list[dict[str, object]]:
    """Public model aliases (chat and embeddings) that have at least one enabled backend,
    for the API key's list of allowed models."""
    aliases: dict[str, dict[str, object]] = {}
    for backend in backend_list_enabled().only("alias", "simulated"):
        entry = aliases.setdefault(backend.alias, {"alias": backend.alias, "simulated": True})
        entry["simulated"] = bool(entry["simulated"]) and backend.simulated
    return sorted(aliases.values(), key=lambda entry: str(entry["alias"]))


def backend_names_active() -> list[tuple[int, str]]:
    """(id, name) of the enabled and draining backends, by name: the metrics' labels."""
    return list(backend_list_active().order_by("name").values_list("pk", "name"))


def alias_health(connection: Any) -> list[dict[str, object]]:
    """Each public alias with whether any of its enabled backends can answer now, and
    if none can, why — for the chat page's model picker (chat models only). Redis
    unreachable: all unknown."""
    backends = list(
        backend_list_enabled()
        .filter(kind=Backend.Kind.CHAT)
        .only("pk", "alias", "simulated", "name", "accepts_images")
    )
    try:
        states = live.snapshot_sync(connection, [b.pk for b in backends])
    except RedisError:
        states = {}
    aliases: dict[str, dict[str, Any]] = {}
    for backend in backends:
        entry = aliases.setdefault(
            backend.alias,
            {"alias": backend.alias, "simulated": True, "up": False, "images": True, "reasons": []},
        )
        entry["simulated"] = entry["simulated"] and backend.simulated
        entry["images"] = entry["images"] and backend.accepts_images
        state = states.get(backend.pk)
        if state is None or (state.usable and state.up is not False):
            entry["up"] = True
        elif state.up is False:
            # (Not the check's own words: they may name the backend's address.)
            entry["reasons"].append("not answering health checks")
        elif state.retry_after > 0:
            entry["reasons"].append(f"asked us to wait {state.retry_after:.0f} s")
        else:
            entry["reasons"].append("failing; taken out for a moment")
    result = []
    for entry in sorted(aliases.values(), key=lambda e: str(e["alias"])):
        reasons = entry.pop("reasons")
        entry["reason"] = (
            "" if entry["up"] else "Every backend is down: " + "; ".join(dict.fromkeys(reasons))
        )
        result.append(entry)
    return result
