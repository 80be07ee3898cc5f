"""Django's PostgreSQL backend, failing fast while the database is known to be away.

A process makes its database calls from one thread (``database_sync_to_async``), and
while PostgreSQL is away each of them waits ``DATABASE_POOL_TIMEOUT`` for a connection
the pool cannot make. In line behind each other, the tenth request of a web host got its
503 after ten of those waits (a cluster test saw 15 s). So after a connection cannot be
had, the process answers "not answering" at once for ``BARISTA_DATABASE_RETRY`` seconds,
and only then lets one call try again: a refusal waits one pool timeout at most, and a
database that is back is used again within that second.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db.backends.postgresql import base


class Gate:
    """Until when to refuse, after the last attempt to connect failed. One float, read and
    written whole (no lock on the path of every request): two threads racing can only
    make one more or one fewer attempt."""

    def __init__(self) -> None:
        self._closed_until = 0.0

    def check(self, error: type[Exception]) -> None:
        left = self._closed_until - time.monotonic()
        if left > 0:
            raise error(f"the database did not answer; trying again in {left:.1f} s")

    def failed(self) -> None:
        self._closed_until = time.monotonic() + settings.BARISTA_DATABASE_RETRY

    def succeeded(self) -> None:
        self._closed_until = 0.0


gate = Gate()


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        # Raised as the driver's error, so Django turns it into its OperationalError, which
        # every door answers with its 503 (apps.core.outages).
        gate.check(self.Database.OperationalError)
        try:
            connection = super().get_new_connection(conn_params)
        except self.Database.OperationalError:  # the pool's timeout is one too
            gate.failed()
            raise
        gate.succeeded()
        return connection
