"""ASGI plumbing for the API: a Channels ``AsyncHttpConsumer`` that reads a bounded body,
answers JSON, errors in OpenAI's shape and Server-Sent Events.

The API is served by Channels rather than a Django view (DESIGN.md, decision 9: no sync
middleware, no thread hops on the hot path), so it enforces the body limit itself.

Unlike a stock Channels consumer, it opens its channel-layer channel only when a request
needs one (``open_channel``): listing models or answering from the cache then costs no
channel, no receive loop and no Redis connection of the channel layer's.

An event stream never goes quiet for long: after ``BARISTA_API_KEEPALIVE_SECONDS`` without
a byte it sends an SSE comment, so clients and proxies with idle timeouts keep waiting.
Answers carry the CORS headers of ``apps.api.cors``, and it answers preflights itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from django.conf import settings
from redis.exceptions import RedisError

from apps.api import cors
from apps.api.errors import ApiError, unavailable
from apps.core.dispatch import DirectDispatch
from apps.core.outages import OUTAGES
from apps.gateway.metrics import recorder

logger = logging.getLogger(__name__)

JSON = b"application/json"


class JsonHttpConsumer(DirectDispatch, AsyncHttpConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received = 0
        self.finished = False  # the whole answer has been sent (or the client left)
        self.headers_sent = False  # an event stream has begun
        self.extra_headers: list[tuple[bytes, bytes]] = []
        self.last_sent = 0.0  # when the last bytes went out (monotonic)
        self.keepalive: asyncio.Task[None] | None = None

    async def route(self, body: bytes) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        """Hook for subclasses: release what the request held."""

    # --- Reading ---------------------------------------------------------------------

    async def http_request(self, message: dict[str, Any]) -> None:
        if self.finished:
            return
        limit = settings.BARISTA_API_MAX_BODY_BYTES
        chunk = message.get("body", b"")
        self.received += len(chunk)
        declared = int(self.header(b"content-length") or 0)
        # A declared length over the limit, or more bytes than it (chunked, or a
        # Content-Length that was not true): refused before anything is parsed.
        if declared > limit or self.received > limit:
            await self.error(
                ApiError(
                    413,
                    f"The request body is larger than {limit:,} bytes.",
                    code="request_too_large",
                )
            )
            await self._stop()
            return
        self.body.append(chunk)
        if message.get("more_body"):
            return
        try:
            if self.scope["method"] == "OPTIONS":
                await self.preflight()
            elif not (self.is_secure() or _plain_http_allowed()):
                raise HTTPS_REQUIRED
            else:
                await self.route(b"".join(self.body))
        except ApiError as exc:
            await self.error(exc)
        except OUTAGES as exc:
            logger.warning("API request refused: %s", type(exc).__name__)
            await self.error(unavailable(exc))
        except Exception:
            logger.exception("API request failed")
            await self.error(ApiError(500, "The server had an error.", "server_error"))
        if self.finished:
            await self._stop()

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        self.finished = True
        await self._stop()

    async def _stop(self) -> None:
        await self.stop()
        raise StopConsumer()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """As ``AsyncConsumer.__call__``, with the channel opened on demand.

        Redis going away while a request waits for its answer (the channel layer's
        receive fails) ends that request with a clear 503 — or, mid-stream, an error event
        — instead of a dropped connection, unless the door keeps it waiting
        (``waits_through_redis_outages``)."""
        self.scope = scope
        if self.is_secure():
            self.extra_headers.extend(_hsts())
        self.extra_headers.extend(cors.answer_headers(self.header(b"origin")))
        self.channel_layer = get_channel_layer()
        self.base_send = send
        self._channel_open = asyncio.Event()
        try:
            await await_many_dispatch([receive, self._channel_receive], self.dispatch)
        except StopConsumer:
            pass
        except RedisError as exc:
            logger.warning("API request: Redis stopped answering")
            try:
                await self.error(unavailable(exc))
            except Exception:  # the client is gone too: nothing left to tell
                logger.info("API request: the client left as well")
        finally:
            if self.keepalive is not None:
                self.keepalive.cancel()
            if self._channel_open.is_set():
                await self._close_channel()

    async def _close_channel(self) -> None:
        """The channel's subscription ends with the request (see apps.core.channel_layer)."""
        delete = getattr(self.channel_layer, "delete_channel", None)
        if delete is None:  # a layer whose channels need no closing
            return
        try:
            await delete(self.channel_name)
        except RedisError:
            pass  # Redis away: the subscription went with the connection

    async def open_channel(self) -> str:
        """This request's channel on the channel layer, opened on first use. Only its
        groups reach it, where the layer can make such a channel (apps.core.channel_layer)."""
        if not self._channel_open.is_set():
            local = getattr(self.channel_layer, "new_local_channel", None)
            self.channel_name = await (local() if local else self.channel_layer.new_channel())
            self._channel_open.set()
        return str(self.channel_name)

    async def _channel_receive(self) -> dict[str, Any]:
        await self._channel_open.wait()
        while True:
            try:
                message: dict[str, Any] = await self.channel_layer.receive(self.channel_name)
                return message
            except RedisError:
                if not self.waits_through_redis_outages():
                    raise
            # An accepted request outlives a Redis outage: the ledger still holds it, the
            # worker runs it again once Redis is back, and the answer is caught up from
            # the ledger if its frames were lost (``apps.gateway.subscription``).
            await asyncio.sleep(0.5)

    def waits_through_redis_outages(self) -> bool:
        """Whether this request keeps waiting when Redis stops answering (else: 503)."""
        return False

    def is_secure(self) -> bool:
        """Served over HTTPS: by this server, or by a proxy that ends TLS and says so in
        the header ``SECURE_PROXY_SSL_HEADER`` names (as Django's ``request.is_secure``)."""
        if self.scope.get("scheme") == "https":
            return True
        proxy: tuple[str, str] | None = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
        if not proxy:
            return False
        name, secure = proxy
        value = self.header(name.removeprefix("HTTP_").replace("_", "-").lower().encode())
        return value is not None and value.split(",", 1)[0].strip() == secure

    def header(self, name: bytes) -> str | None:
        for key, value in self.scope.get("headers", []):
            if key.lower() == name:
                return bytes(value).decode("latin-1")
        return None

    # --- Answering -------------------------------------------------------------------

    async def send_body(self, body: bytes, *, more_body: bool = False) -> None:
        # Marked before the send: a keep-alive due meanwhile must not follow the last byte.
        self.finished = self.finished or not more_body
        self.last_sent = time.monotonic()
        await super().send_body(body, more_body=more_body)

    async def preflight(self) -> None:
        """A browser asks whether a page may call the API (CORS): yes, for the origins
        staff list; otherwise a 403, without CORS headers (the browser stops there)."""
        origin = self.header(b"origin")
        allowed = cors.preflight_headers(origin, self.header(b"access-control-request-headers"))
        if allowed is None:
            raise ApiError(
                403,
                f"Web pages on {origin or 'an unnamed origin'} may not call this API: the "
                "origins that may are listed in BARISTA_API_CORS_ORIGINS.",
                code="cors_origin_not_allowed",
            )
        await self.send_headers(status=204, headers=[*self.extra_headers, *allowed])
        await self.send_body(b"")

    async def json(
        self, status: int, document: Any, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        body = json.dumps(document).encode()
        await self.send_headers(
            status=status,
            headers=[
                (b"content-type", JSON),
                (b"content-length", str(len(body)).encode()),
                *self.extra_headers,
                *(headers or []),
            ],
        )
        await self.send_body(body)
        self.finished = True

    async def error(self, exc: ApiError) -> None:
        if self.finished:
            return
        recorder.api_error(status=exc.status, code=exc.code)
        if self.headers_sent:  # mid-stream: the error travels as an event
            await self.send_body(sse(exc.document()), more_body=True)
            await self.send_body(SSE_DONE)
            self.finished = True
            return
        await self.json(exc.status, exc.document(), exc.headers)

    async def start_events(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Begin a Server-Sent Events answer (once), kept alive until it ends."""
        if self.headers_sent:
            return
        await self.send_headers(
            status=200,
            headers=[
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                # nginx would otherwise hold the events back to fill its buffer.
                (b"x-accel-buffering", b"no"),
                *headers,
                *self.extra_headers,
            ],
        )
        self.headers_sent = True
        # A server may hold the headers until the first bytes of the body (ASGI): none yet.
        await self.send_body(b"", more_body=True)
        self.keepalive = asyncio.create_task(self._keep_alive())

    async def comment(self, text: str) -> None:
        """An SSE comment: clients skip it; it tells a person reading the raw stream (and
        every proxy on the way) that the answer is still coming."""
        if self.headers_sent and not self.finished:
            await self.send_body(f": {text}\n\n".encode(), more_body=True)

    async def _keep_alive(self) -> None:
        interval = settings.BARISTA_API_KEEPALIVE_SECONDS
        while not self.finished:
            silent = time.monotonic() - self.last_sent
            if silent >= interval:
                await self.comment("keep-alive")
            else:
                await asyncio.sleep(interval - silent)


# The API lives outside Django's middleware, so it applies SecurityMiddleware's two rules
# for transport itself: plain HTTP is refused (never redirected: the key has already
# crossed the network in clear, and clients do not repeat a POST at a new address), and
# answers over HTTPS carry the same Strict-Transport-Security header as the pages.
HTTPS_REQUIRED = ApiError(
    403,
    "This server answers the API over HTTPS only. Use an https:// base URL "
    "If you sent an API key, rotate it: it crossed the network in clear.",
    code="https_required",
)


def _plain_http_allowed() -> bool:
    return settings.DEBUG or not settings.SECURE_SSL_REDIRECT


def _hsts() -> list[tuple[bytes, bytes]]:
    seconds = settings.SECURE_HSTS_SECONDS
    if not seconds:
        return []
    value = f"max-age={seconds}"
    if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
        value += "; includeSubDomains"
    if settings.SECURE_HSTS_PRELOAD:
        value += "; preload"
    return [(b"strict-transport-security", value.encode())]


SSE_DONE = b"data: [DONE]\n\n"


def sse(document: Any) -> bytes:
    return f"data: {json.dumps(document)}\n\n".encode()
