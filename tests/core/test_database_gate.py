"""While PostgreSQL is away, a process refuses at once instead of every request waiting
the pool's timeout in turn (apps/core/postgresql/base.py).

A real psycopg pool against a loopback port nothing listens on: the first request waits
the pool's timeout, the ones after it are refused at once, and after
BARISTA_DATABASE_RETRY one tries again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import OperationalError
from django.db.utils import ConnectionHandler
from django.test import override_settings

from apps.core.postgresql.base import DatabaseWrapper, gate
from apps.gateway.localrun import free_port

POOL_TIMEOUT = 1


@pytest.fixture
def away(django_db_blocker: Any) -> Iterator[DatabaseWrapper]:
    """A connection to a PostgreSQL that is not there, through the pool (no test
    database: pytest-django's block is lifted for this one connection's attempts)."""
    handler = ConnectionHandler(
        {
            "default": {"ENGINE": "django.db.backends.dummy"},
            "away": {
                "ENGINE": "apps.core.postgresql",
                "NAME": "barista",
                "USER": "barista",
                "HOST": "127.0.0.1",
                "PORT": str(free_port()),
                "CONN_MAX_AGE": 0,
                "OPTIONS": {"pool": {"min_size": 1, "max_size": 1, "timeout": POOL_TIMEOUT}},
            },
        }
    )
    connection = handler["away"]
    assert isinstance(connection, DatabaseWrapper)
    gate.succeeded()
    try:
        with django_db_blocker.unblock():
            yield connection
    finally:
        gate.succeeded()
        connection.close_pool()


def attempt(connection: DatabaseWrapper) -> tuple[float, str]:
    """Seconds until refused, and what it said."""
    started = time.monotonic()
    with pytest.raises(OperationalError) as refused:
        connection.ensure_connection()
    return time.monotonic() - started, str(refused.value)


@override_settings(BARISTA_DATABASE_RETRY=1.5)
def test_after_one_wait_for_the_pool_a_database_that_is_away_is_refused_at_once(
    away: DatabaseWrapper,
) -> None:
    first, _ = attempt(away)
    assert first >= POOL_TIMEOUT * 0.9, "the first request waits for the pool"

    # The requests in line behind it: each refused at once, saying when it tries again.
    for _ in range(5):
        seconds, said = attempt(away)
        assert seconds < 0.2
        assert "did not answer" in said

    # Once the retry interval has passed, the next request tries the database again.
    time.sleep(1.5)  # the interval under test, not a wait for a condition
    again, said = attempt(away)
    assert again >= POOL_TIMEOUT * 0.9
    assert "did not answer" not in said
