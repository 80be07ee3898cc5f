"""The enabled backends, as each worker process sees them: a per-process cache of the
Backend table that expires after ``ttl`` seconds.

Reading the Backend table for every prompt cost a database round trip per prompt; rows
change rarely. Each process keeps them for ``ttl`` seconds, so an edit (disable, weight)
reaches every worker and web process within about a second, without restarts — and the
process that saved it at once (``apps.backends.apps``). Workers pick backends from it;
the API checks a request's model against it.
"""

from __future__ import annotations

import time
from collections import defaultdict

from channels.db import database_sync_to_async

from apps.backends.models import Backend
from apps.backends.selectors import backend_list_enabled

CHAT = Backend.Kind.CHAT


class EnabledBackends:
    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        # kind ("chat", "embeddings") -> alias -> its enabled backends
        self._by_kind: dict[str, dict[str, list[Backend]]] = {}
        self._shared: set[str] = set()  # aliases whose answers are shared between people
        self._by_id: dict[int, Backend] = {}
        self._loaded_at = float("-inf")

    @property
    def stale(self) -> bool:
        return time.monotonic() - self._loaded_at >= self.ttl

    def load(self) -> None:
        by_kind: dict[str, dict[str, list[Backend]]] = defaultdict(lambda: defaultdict(list))
        for backend in backend_list_enabled():
            by_kind[backend.kind][backend.alias].append(backend)
        self._by_kind = {kind: dict(aliases) for kind, aliases in by_kind.items()}
        self._by_id = {
            backend.pk: backend
            for aliases in self._by_kind.values()
            for backends in aliases.values()
            for backend in backends
        }
        # Shared only when every enabled backend of the alias says so.
        self._shared = {
            alias
            for aliases in self._by_kind.values()
            for alias, backends in aliases.items()
            if all(backend.share_answers for backend in backends)
        }
        self._loaded_at = time.monotonic()

    async def for_alias(self, alias: str, kind: str = CHAT) -> list[Backend]:
        if self.stale:
            await database_sync_to_async(self.load)()
        return self._by_kind.get(kind, {}).get(alias, [])

    def for_alias_sync(self, alias: str, kind: str = CHAT) -> list[Backend]:
        """``for_alias``, from a thread that may reach the database."""
        if self.stale:
            self.load()
        return self._by_kind.get(kind, {}).get(alias, [])

    def backend(self, backend_id: int) -> Backend | None:
        """The enabled backend with this id, or None (disabled or gone) — from a thread
        that may reach the database."""
        if self.stale:
            self.load()
        return self._by_id.get(backend_id)

    def aliases(self, kind: str = CHAT) -> list[str]:
        """The aliases that have an enabled backend of this kind, sorted (call from a
        thread that may reach the database: it reloads when stale)."""
        if self.stale:
            self.load()
        return sorted(self._by_kind.get(kind, {}))

    def shares_answers(self, alias: str) -> bool:
        """Staff made this alias's answers shared between people (call from a thread that
        may reach the database: it reloads when stale)."""
        if self.stale:
            self.load()
        return alias in self._shared

    def expire(self) -> None:
        """Reload on next use: a backend changed in this process (other processes see
        the change within ``ttl``)."""
        self._loaded_at = float("-inf")


enabled_backends = EnabledBackends()
