"""Cross-origin calls to ``/v1/`` from web pages on the origins staff list in
``BARISTA_API_CORS_ORIGINS`` (none by default). Pure functions of the request's headers.

The API authenticates with a bearer key, never a cookie, so no answer allows credentials:
a listed origin is echoed exactly (never ``*``), and a page on any other origin gets no
CORS header at all — its browser keeps the answer from it.
"""

from __future__ import annotations

import re

from django.conf import settings

Headers = list[tuple[bytes, bytes]]

METHODS = b"GET, POST, OPTIONS"
# What a page asks for beyond the CORS-safelisted headers: the key and the JSON body. The
# headers a preflight names are allowed too (SDKs add their own, e.g. x-stainless-*).
ALWAYS_ALLOWED = ("authorization", "content-type")
# What a page may read of an answer beyond the safelisted headers.
EXPOSED = (
    b"x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
    b"x-barista-request-id, x-barista-cache, retry-after"
)
# How long a browser may reuse a preflight's answer (browsers cap it: Chromium at 2 h).
MAX_AGE = b"7200"
# A plain header name (lowercased); anything else a preflight names — "*" above all, a
# wildcard in this header — is left out of the answer.
_HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_MOST_REQUESTED = 32


def enabled() -> bool:
    return bool(settings.BARISTA_API_CORS_ORIGINS)


def allowed(origin: str | None) -> bool:
    return origin is not None and origin.lower() in settings.BARISTA_API_CORS_ORIGINS


def answer_headers(origin: str | None) -> Headers:
    """The CORS headers of every answer (JSON or a stream, errors too)."""
    if not enabled():
        return []
    if not allowed(origin):
        return [(b"vary", b"Origin")]  # the answer depends on the Origin: caches must know
    assert origin is not None
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", EXPOSED),
        (b"vary", b"Origin"),
    ]


def preflight_headers(origin: str | None, requested: str | None) -> Headers | None:
    """What a preflight (``OPTIONS``) from ``origin`` is allowed, beyond ``answer_headers``;
    None when the origin is not listed. ``requested``: its Access-Control-Request-Headers."""
    if not allowed(origin):
        return None
    names = list(ALWAYS_ALLOWED)
    for name in (requested or "").split(",")[:_MOST_REQUESTED]:
        name = name.strip().lower()
        if _HEADER_NAME.fullmatch(name) and name not in names:
            names.append(name)
    return [
        (b"access-control-allow-methods", METHODS),
        (b"access-control-allow-headers", ", ".join(names).encode()),
        (b"access-control-max-age", MAX_AGE),
    ]
