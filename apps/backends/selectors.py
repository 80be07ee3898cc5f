from __future__ import annotations

from django.db.models import QuerySet

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
    """Public model aliases that have at least one enabled backend, for pickers and checks."""
    aliases: dict[str, dict[str, object]] = {}
    for backend in backend_list_enabled().only("alias", "simulated"):
        entry = aliases.setdefault(backend.alias, {"alias": backend.alias, "simulated": True})
        entry["simulated"] = bool(entry["simulated"]) and backend.simulated
    return sorted(aliases.values(), key=lambda entry: str(entry["alias"]))


def alias_exists(alias: str) -> bool:
    return backend_list_enabled(alias=alias).exists()
