"""The process's network clients, one per event loop, made here and nowhere else.

* ``redis()`` — the asyncio Redis client every layer uses for live state, the cache,
  coalescing, metrics and per-key counters (REDIS_URL);
* ``queue_redis()`` and ``live_redis()`` — the asyncio clients for the queues' Redis and
  for backends' live state (``apps.backends.live``, ``recovery``): ``redis()`` itself
  unless that role has a URL of its own (settings: "Redis by role");
* ``sync_redis()`` — REDIS_URL's synchronous client, for code that runs in threads
  (Django views, database work, the worker's bookkeeping); ``sync_redis(url)`` is the one
  for another server, as the queues' (``apps.gateway.queues``) and
  ``live_sync_redis()``;
* ``http()`` — the HTTP client for backends (health checks and prompts);
* ``backend_http_client()`` — a new one, for a one-off call (the console's test button).

Every HTTP client for backends connects only to addresses backends may be reached at,
checked on each connection (``apps.core.egress``).
"""

from __future__ import annotations

import httpx
import redis.asyncio as aioredis
from django.conf import settings
from redis import Redis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apps.core.egress import GuardedTransport
from apps.core.loop import PerLoop


def _make_redis(url: str | None = None) -> aioredis.Redis:
    # A blocking pool: with hundreds of prompts in flight, an operation waits for a free
    # connection instead of failing (redis-py's default pool raises past 100).
    # Connections broken by a Redis restart fail once, then reconnect: retried with a
    # short backoff, so the first prompts after Redis returns do not fail on them.
    pool = aioredis.BlockingConnectionPool.from_url(
        url or settings.REDIS_URL,
        max_connections=settings.BARISTA_LIVE_REDIS_CONNECTIONS,
        timeout=30,
        retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis(connection_pool=pool)


_sync: dict[str, Redis] = {}


def sync_redis(url: str | None = None) -> Redis:
    """The process's synchronous client for ``url`` (REDIS_URL unless given): one per URL,
    shared by every thread (its connection pool is thread-safe). When the queues use
    REDIS_URL too, ``apps.gateway.queues.connection()`` is this very client."""
    url = url or settings.REDIS_URL
    client = _sync.get(url)
    if client is None:
        client = _sync.setdefault(url, Redis.from_url(url))
    return client


def backend_http_client(
    *, timeout: httpx.Timeout | None = None, limits: httpx.Limits | None = None
) -> httpx.AsyncClient:
    """A new HTTP client for backends. Its connections go only to addresses that
    ``apps.core.egress`` allows, checked as each is made. Redirects are never followed:
    a backend must not point a worker elsewhere."""
    return httpx.AsyncClient(
        transport=GuardedTransport(limits=limits),
        timeout=timeout or httpx.Timeout(5.0),
        follow_redirects=False,
        # No proxies, .netrc or credentials from the environment: a proxy (HTTP_PROXY,
        # ALL_PROXY) would resolve the backend's name itself, past the address check.
        # (httpx already skips env proxies when given a transport; this says so.)
        trust_env=False,
    )


def _make_http() -> httpx.AsyncClient:
    # One client per process keeps connections to backends alive between prompts; making
    # one per prompt (loading TLS certificates) cost ~50 ms.
    return backend_http_client(
        timeout=httpx.Timeout(
            settings.BARISTA_BACKEND_READ_TIMEOUT,
            connect=settings.BARISTA_BACKEND_CONNECT_TIMEOUT,
        ),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
    )


redis = PerLoop(_make_redis)
_queue_redis = PerLoop(lambda: _make_redis(settings.QUEUE_REDIS_URL))
_live_redis = PerLoop(lambda: _make_redis(settings.LIVE_REDIS_URL))


def queue_redis() -> aioredis.Redis:
    """The asyncio client for the queues' Redis (BARISTA_QUEUE_REDIS_URL), for the few
    async readers of queue state (the live metrics page); ``redis()`` itself when the
    queues share REDIS_URL."""
    if settings.QUEUE_REDIS_URL == settings.REDIS_URL:
        return redis()
    return _queue_redis()


def live_redis() -> aioredis.Redis:
    """The asyncio client for backends' live state (BARISTA_LIVE_REDIS_URL); ``redis()``
    itself when live state shares REDIS_URL."""
    if settings.LIVE_REDIS_URL == settings.REDIS_URL:
        return redis()
    return _live_redis()


def live_sync_redis() -> Redis:
    """The synchronous client for backends' live state: ``sync_redis()`` itself when live
    state shares REDIS_URL."""
    return sync_redis(settings.LIVE_REDIS_URL)


http = PerLoop(_make_http)
