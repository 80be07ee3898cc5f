"""The OpenAI-compatible API on ``/v1/``: a Channels ``AsyncHttpConsumer`` (DESIGN.md,
decision 8: no sync middleware, no thread hops on the hot path), so it enforces the key
and the body limits itself.

A chat completion takes the same path as a chat-page prompt: admission, cache, coalescing,
queue, balancer, ledger. The consumer joins the request's channel group before it is
submitted and answers from the events the worker pushes there — as Server-Sent Events
when ``stream`` is true (headers go out with the first token, so a failure before it is
still a proper HTTP error), or as one JSON body at the end. A client that hangs up cancels
its request (unless others follow it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from django.conf import settings
from redis.exceptions import RedisError

from apps.api.models import ApiKey
from apps.api.openapi import openapi_document
from apps.api.services import api_key_authenticate
from apps.api.validation import InvalidRequest, chat_request
from apps.backends.selectors import alias_list
from apps.core import clients
from apps.gateway import delivery
from apps.gateway.admission import Rejection
from apps.gateway.models import PromptRequest
from apps.gateway.services import request_cancel, request_submit

logger = logging.getLogger(__name__)

JSON = b"application/json"


class ApiError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code, self.headers = param, code, headers or []

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode()


REDIS_UNAVAILABLE = ApiError(
    503,
    "Barista is temporarily unavailable: its queue (Redis) is not answering. "
    "Try again in a few seconds.",
    "server_error",
    code="unavailable",
    headers=[(b"retry-after", b"5")],
)

# A failed event's code → HTTP status, when nothing was streamed yet.
FAILURE_STATUS = {"timeout": 504, "unavailable": 503}


def _final_event(request_id: str | None) -> dict[str, Any] | None:
    """The event that ends a request, from the ledger; None while it is still going."""
    if request_id is None:
        return None
    row = PromptRequest.objects.select_related("backend").filter(id=request_id).first()
    if row is None or not row.is_final:
        return None
    return delivery.final_event(row)


class OpenAIConsumer(AsyncHttpConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received = 0
        self.finished = False
        self.headers_sent = False
        self.request_id: str | None = None
        self.group: str | None = None
        self.owner_id: int | None = None
        self.key_id: int | None = None
        self.model = ""
        self.stream = False
        self.include_usage = False
        self.cache_outcome = "miss"
        self.sent_chars = 0
        self.created = int(time.time())
        self.extra_headers: list[tuple[bytes, bytes]] = []
        self.event_lock = asyncio.Lock()
        self.last_event = time.monotonic()
        self.watchdog: asyncio.Task[None] | None = None

    # --- ASGI plumbing ----------------------------------------------------------------

    async def http_request(self, message: dict[str, Any]) -> None:
        if self.finished:
            return
        limit = settings.BARISTA_API_MAX_BODY_BYTES
        if self.received == 0 and int(self._header(b"content-length") or 0) > limit:
            await self._refuse_too_large(limit)
            return
        chunk = message.get("body", b"")
        self.received += len(chunk)
        if self.received > limit:  # chunked, or a Content-Length that was not true
            await self._refuse_too_large(limit)
            return
        self.body.append(chunk)
        if message.get("more_body"):
            return
        try:
            await self.route(b"".join(self.body))
        except ApiError as exc:
            await self._error(exc)
        except RedisError:
            logger.warning("API request refused: Redis is not answering")
            await self._error(REDIS_UNAVAILABLE)
        except Exception:
            logger.exception("API request failed")
            await self._error(ApiError(500, "The server had an error.", "server_error"))
        if self.finished:
            await self._stop()

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        if not self.finished and self.request_id is not None and self.owner_id is not None:
            # The client hung up: stop its request (a leader others follow keeps going).
            owner = await database_sync_to_async(_user)(self.owner_id)
            await database_sync_to_async(request_cancel)(owner=owner, request_id=self.request_id)
        self.finished = True
        await self._stop()

    async def _stop(self) -> None:
        if self.watchdog is not None and self.watchdog is not asyncio.current_task():
            self.watchdog.cancel()
        if self.group is not None:
            group, self.group = self.group, None
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except RedisError:
                pass  # the group expires by itself
        raise StopConsumer()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Redis going away while a request waits for its answer (the channel layer's
        receive fails) ends that request with a clear 503 — or, mid-stream, an error event
        — instead of a dropped connection. The ledger still holds the prompt."""
        try:
            await super().__call__(scope, receive, send)
        except RedisError:
            logger.warning("API request %s: Redis stopped answering", self.request_id)
            try:
                await self._error(REDIS_UNAVAILABLE)
            except Exception:  # the client is gone too: nothing left to tell
                logger.info("API request %s: the client left as well", self.request_id)

    def _header(self, name: bytes) -> str | None:
        for key, value in self.scope.get("headers", []):
            if key.lower() == name:
                return bytes(value).decode("latin-1")
        return None

    async def _refuse_too_large(self, limit: int) -> None:
        await self._error(
            ApiError(
                413,
                f"The request body is larger than {limit:,} bytes.",
                param=None,
                code="request_too_large",
            )
        )
        await self._stop()

    async def _json(
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

    async def _error(self, exc: ApiError) -> None:
        if self.finished:
            return
        if self.headers_sent:  # mid-stream: the error travels as an event
            payload = json.loads(exc.body())
            await self.send_body(f"data: {json.dumps(payload)}\n\n".encode(), more_body=True)
            await self.send_body(b"data: [DONE]\n\n")
            self.finished = True
            return
        body = exc.body()
        await self.send_headers(
            status=exc.status,
            headers=[
                (b"content-type", JSON),
                (b"content-length", str(len(body)).encode()),
                *self.extra_headers,
                *exc.headers,
            ],
        )
        await self.send_body(body)
        self.finished = True

    # --- Routes -------------------------------------------------------------------------

    async def route(self, body: bytes) -> None:
        method, path = self.scope["method"], self.scope["path"].rstrip("/")
        if path == "/v1/openapi.json" and method == "GET":
            await self._json(200, openapi_document())
            return
        key = await self._authenticate()
        if path == "/v1/chat/completions":
            if method != "POST":
                raise ApiError(405, "Use POST for /v1/chat/completions.", code="method_not_allowed")
            await self.chat_completions(key, body)
        elif path == "/v1/models" and method == "GET":
            aliases = await database_sync_to_async(_aliases)(key)
            await self._json(
                200, {"object": "list", "data": [_model_object(alias) for alias in aliases]}
            )
        elif path.startswith("/v1/models/") and method == "GET":
            alias = path.removeprefix("/v1/models/")
            if alias not in await database_sync_to_async(_aliases)(key):
                raise _model_not_found(alias)
            await self._json(200, _model_object(alias))
        else:
            raise ApiError(404, f"Unknown route {method} {path}.", code="unknown_url")

    async def _authenticate(self) -> ApiKey:
        header = self._header(b"authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        key = await database_sync_to_async(api_key_authenticate)(token.strip())
        if key is None:
            raise ApiError(401, "Incorrect or revoked API key provided.", code="invalid_api_key")
        self.owner_id, self.key_id = key.owner_id, key.pk
        return key

    async def chat_completions(self, key: ApiKey, raw: bytes) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(
                400, "The request body is not valid UTF-8.", code="invalid_utf8"
            ) from None
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):  # too deeply nested is invalid too
            raise ApiError(
                400, "We could not parse the JSON body of your request.", code="invalid_json"
            ) from None
        try:
            model, messages, params, self.stream, self.include_usage = chat_request(body)
        except InvalidRequest as exc:
            raise ApiError(400, exc.message, param=exc.param, code=exc.code) from None
        if model not in await database_sync_to_async(_aliases)(None):
            raise _model_not_found(model)
        if not key.allows(model):
            raise ApiError(
                403, f"This API key may not use the model {model!r}.", code="model_not_allowed"
            )
        self.model = model
        await self._key_limits(key)

        request_id = uuid.uuid4()
        self.request_id = str(request_id)
        self.group = delivery.group_name(request_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        bypass = "no-cache" in (self._header(b"cache-control") or "").lower()
        try:
            request = await database_sync_to_async(_submit)(
                key, model, messages, params, request_id, bypass
            )
        except Rejection as exc:
            status = 503 if exc.code == "busy" else 429
            raise ApiError(
                status,
                exc.message,
                "rate_limit_exceeded" if status == 429 else "server_overloaded",
                code=exc.code,
                headers=[(b"retry-after", str(exc.retry_after).encode())],
            ) from None
        self.extra_headers.append((b"x-barista-request-id", self.request_id.encode()))
        if request.status == PromptRequest.Status.DONE:  # a cache hit: replayed like a live one
            for event in await database_sync_to_async(delivery.replay_events)(request):
                await self._on_event(event)
            return
        self.last_event = time.monotonic()
        self.watchdog = asyncio.create_task(self._watch_delivery())

    async def _key_limits(self, key: ApiKey) -> None:
        """The key's own limits: requests per minute (with x-ratelimit-* headers), tokens
        per minute, requests at once."""
        redis = clients.redis()
        window = int(time.time() // 60)
        reset = max(1, math.ceil((window + 1) * 60 - time.time()))
        if key.requests_per_minute:
            counter = f"barista:api:{key.pk}:rpm:{window}"
            async with redis.pipeline(transaction=False) as pipe:
                pipe.incr(counter)
                pipe.expire(counter, 61)
                used, _ = await pipe.execute()
            limit = key.requests_per_minute
            self.extra_headers += [
                (b"x-ratelimit-limit-requests", str(limit).encode()),
                (b"x-ratelimit-remaining-requests", str(max(0, limit - used)).encode()),
                (b"x-ratelimit-reset-requests", f"{reset}s".encode()),
            ]
            if used > limit:
                raise _rate_limited(f"This key's limit is {limit} requests per minute.", reset)
        if key.tokens_per_minute:
            used_tokens = int(await redis.get(f"barista:api:{key.pk}:tpm:{window}") or 0)
            if used_tokens >= key.tokens_per_minute:
                raise _rate_limited(
                    f"This key's limit is {key.tokens_per_minute} tokens per minute.", reset
                )
        if key.max_concurrent:
            running = await database_sync_to_async(_pending_for_key)(key)
            if running >= key.max_concurrent:
                raise _rate_limited(
                    f"This key may have {key.max_concurrent} requests running at once.", 1
                )

    # --- Events from the worker ---------------------------------------------------------

    async def request_event(self, event: dict[str, Any]) -> None:
        if event.get("owner") != self.owner_id or event.get("request") != self.request_id:
            delivery.count_refused()
            logger.error(
                "refused an API event for request %s: owner mismatch", event.get("request")
            )
            return
        self.last_event = time.monotonic()
        try:
            async with self.event_lock:
                if self.finished:
                    return
                await self._on_event(event)
        finally:
            if self.finished:
                await self._stop()

    async def _watch_delivery(self) -> None:
        """The channel layer may drop events (a full channel, a Redis hiccup): when the
        request has sent nothing for ``BARISTA_DELIVERY_STALL`` seconds, look it up in the
        ledger and, if it has ended, answer from there."""
        stall = settings.BARISTA_DELIVERY_STALL
        while not self.finished:
            await asyncio.sleep(min(1.0, stall))
            if time.monotonic() - self.last_event < stall:
                continue
            self.last_event = time.monotonic()
            try:
                event = await database_sync_to_async(_final_event)(self.request_id)
            except Exception:  # the database away too: try again next round
                logger.warning("could not check request %s", self.request_id, exc_info=True)
                continue
            if event is None:
                continue
            async with self.event_lock:
                if self.finished:
                    return
                await self._on_event(event)
            delivery.count_caught_up()

    async def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "status":
            if event.get("cache") == "coalesced":
                self.cache_outcome = "coalesced"
        elif kind == "tokens" and self.stream:
            await self._stream_text(event["text"], int(event.get("offset", 0)))
        elif kind == "done":
            self.cache_outcome = event.get("cache") or self.cache_outcome
            await self._done(event)
        elif kind == "failed":
            code = event.get("code") or "backend_failed"
            status = FAILURE_STATUS.get(code, 502)
            headers = [(b"retry-after", b"5")] if status == 503 else []
            await self._error(
                ApiError(
                    status,
                    event.get("error") or "The request failed.",
                    "api_error",
                    code=code,
                    headers=headers,
                )
            )
        elif kind == "cancelled":
            await self._error(ApiError(499, "The request was cancelled.", code="cancelled"))

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            "id": f"chatcmpl-{self.request_id}",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    async def _start_stream(self) -> None:
        if self.headers_sent:
            return
        await self.send_headers(
            status=200,
            headers=[
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                (b"x-barista-cache", self.cache_outcome.encode()),
                *self.extra_headers,
            ],
        )
        self.headers_sent = True
        await self.send_body(self._chunk({"role": "assistant", "content": ""}), more_body=True)

    async def _stream_text(self, text: str, offset: int) -> None:
        # Offsets make a repeated batch harmless: only text not sent yet goes out.
        fresh = text[max(0, self.sent_chars - offset) :] if offset <= self.sent_chars else ""
        if not fresh:
            return
        await self._start_stream()
        self.sent_chars += len(fresh)
        await self.send_body(self._chunk({"content": fresh}), more_body=True)

    async def _done(self, event: dict[str, Any]) -> None:
        content = event.get("content") or ""
        usage_in = event.get("usage") or {}
        prompt = usage_in.get("prompt_tokens") or 0
        completion = usage_in.get("completion_tokens") or 0
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        finish = event.get("finish_reason") or "stop"
        if self.key_id is not None and prompt + completion:
            await _count_tokens(self.key_id, prompt + completion)
        if not self.stream:
            self.extra_headers.append((b"x-barista-cache", self.cache_outcome.encode()))
            await self._json(
                200,
                {
                    "id": f"chatcmpl-{self.request_id}",
                    "object": "chat.completion",
                    "created": self.created,
                    "model": self.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": finish,
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                },
            )
            return
        await self._stream_text(content, 0)
        await self._start_stream()
        tail = self._chunk({}, finish)
        if self.include_usage:
            final = {
                "id": f"chatcmpl-{self.request_id}",
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage,
            }
            tail += f"data: {json.dumps(final)}\n\n".encode()
        await self.send_body(tail + b"data: [DONE]\n\n")
        self.finished = True


async def _count_tokens(key_id: int, tokens: int) -> None:
    """Tokens used this minute by a key (for its tokens-per-minute limit)."""
    counter = f"barista:api:{key_id}:tpm:{int(time.time() // 60)}"
    async with clients.redis().pipeline(transaction=False) as pipe:
        pipe.incrby(counter, tokens)
        pipe.expire(counter, 61)
        await pipe.execute()


def _rate_limited(message: str, retry_after: int) -> ApiError:
    return ApiError(
        429,
        message,
        "rate_limit_exceeded",
        code="rate_limit_exceeded",
        headers=[(b"retry-after", str(retry_after).encode())],
    )


def _model_not_found(alias: str) -> ApiError:
    return ApiError(
        404,
        f"The model {alias!r} does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def _model_object(alias: str) -> dict[str, Any]:
    return {"id": alias, "object": "model", "created": 0, "owned_by": "barista"}


def _aliases(key: ApiKey | None) -> list[str]:
    """Aliases with an enabled backend (that this key may use)."""
    return [
        str(entry["alias"])
        for entry in alias_list()
        if key is None or key.allows(str(entry["alias"]))
    ]


def _user(user_id: int) -> Any:
    from django.contrib.auth.models import User

    return User.objects.get(pk=user_id)


def _pending_for_key(key: ApiKey) -> int:
    return PromptRequest.objects.filter(api_key_id=key.pk).pending().count()


def _submit(
    key: ApiKey,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    request_id: uuid.UUID,
    bypass: bool,
) -> PromptRequest:
    return request_submit(
        owner=key.owner,
        model=model,
        messages=messages,
        params=params,
        source=PromptRequest.Source.API,
        request_id=request_id,
        queue=settings.BARISTA_API_QUEUE,
        bypass_cache=bypass,
        api_key_id=key.pk,
    )
