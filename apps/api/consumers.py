"""The OpenAI-compatible API on ``/v1/``: routes, the key, and a chat completion's events
translated to OpenAI's wire format.

A chat completion takes the same path as a chat-page prompt: admission, cache, coalescing,
queue, balancer, ledger, and the gateway's delivery ``Subscription``. Its events are
answered as Server-Sent Events when ``stream`` is true (headers go out with the first
token, so a failure before it is still a proper HTTP error), or as one JSON body at the
end. A client that hangs up cancels its request (unless others follow it).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from apps.api.completions import Completion
from apps.api.errors import (
    ApiError,
    from_failed_event,
    from_rejection,
    model_not_found,
    quota_headers,
)
from apps.api.http import JsonHttpConsumer
from apps.api.models import ApiKey
from apps.api.openapi import openapi_document
from apps.api.services import api_key_authenticate
from apps.backends.selectors import alias_list
from apps.gateway.admission import Principal, Rejection, count_key_tokens
from apps.gateway.models import PromptRequest
from apps.gateway.operations import request_cancel
from apps.gateway.services import request_submit
from apps.gateway.subscription import Subscription
from apps.gateway.validation import InvalidRequest, chat_request


class OpenAIConsumer(JsonHttpConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key: ApiKey | None = None
        self.subscription: Subscription | None = None
        self.completion: Completion | None = None
        self.stream = False

    async def route(self, body: bytes) -> None:
        method, path = self.scope["method"], self.scope["path"].rstrip("/")
        if path == "/v1/openapi.json" and method == "GET":
            await self.json(200, openapi_document())
            return
        key = self.key = await self._authenticate()
        if path == "/v1/chat/completions":
            if method != "POST":
                raise ApiError(405, "Use POST for /v1/chat/completions.", code="method_not_allowed")
            await self.chat_completions(key, body)
        elif path == "/v1/models" and method == "GET":
            aliases = await database_sync_to_async(_aliases)(key)
            await self.json(
                200, {"object": "list", "data": [_model_object(alias) for alias in aliases]}
            )
        elif path.startswith("/v1/models/") and method == "GET":
            alias = path.removeprefix("/v1/models/")
            if alias not in await database_sync_to_async(_aliases)(key):
                raise model_not_found(alias)
            await self.json(200, _model_object(alias))
        else:
            raise ApiError(404, f"Unknown route {method} {path}.", code="unknown_url")

    async def _authenticate(self) -> ApiKey:
        scheme, _, token = (self.header(b"authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        key = await database_sync_to_async(api_key_authenticate)(token.strip())
        if key is None:
            raise ApiError(401, "Incorrect or revoked API key provided.", code="invalid_api_key")
        return key

    async def chat_completions(self, key: ApiKey, raw: bytes) -> None:
        try:
            body = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(
                400, "The request body is not valid UTF-8.", code="invalid_utf8"
            ) from None
        except (ValueError, RecursionError):  # too deeply nested is invalid too
            raise ApiError(
                400, "We could not parse the JSON body of your request.", code="invalid_json"
            ) from None
        try:
            model, messages, params, self.stream, include_usage = chat_request(body)
        except InvalidRequest as exc:
            raise ApiError(400, exc.message, param=exc.param, code=exc.code) from None
        if model not in await database_sync_to_async(_aliases)(None):
            raise model_not_found(model)

        request_id = uuid.uuid4()
        self.completion = Completion(str(request_id), model, int(time.time()), include_usage)
        self.subscription = Subscription(
            layer=self.channel_layer,
            channel_name=self.channel_name,
            owner_id=key.owner_id,
            send=self._on_event,
        )
        await self.subscription.join(request_id)  # before the job exists: no token missed
        principal = Principal(key.owner_id, key.limits())
        bypass = "no-cache" in (self.header(b"cache-control") or "").lower()
        try:
            request = await database_sync_to_async(request_submit)(
                principal=principal,
                model=model,
                messages=messages,
                params=params,
                source=PromptRequest.Source.API,
                request_id=request_id,
                queue=settings.BARISTA_API_QUEUE,
                bypass_cache=bypass,
            )
        except Rejection as exc:
            raise from_rejection(exc) from None
        self.extra_headers += [
            *quota_headers(principal.quota),
            (b"x-barista-request-id", str(request_id).encode()),
        ]
        if request.status == PromptRequest.Status.DONE:  # a cache hit: replayed like a live one
            await self.subscription.replay(request)
            return
        self.subscription.expect(request_id)

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        if not self.finished and self.completion is not None and self.key is not None:
            # The client hung up: stop its request (a leader others follow keeps going).
            await database_sync_to_async(request_cancel)(
                owner_id=self.key.owner_id, request_id=self.completion.request_id
            )
        await super().http_disconnect(message)

    async def stop(self) -> None:
        if self.subscription is not None:
            await self.subscription.close()

    # --- Events from the worker, as OpenAI's wire format --------------------------------

    async def request_event(self, event: dict[str, Any]) -> None:
        assert self.subscription is not None
        await self.subscription.receive(event)
        if self.finished:
            await self._stop()

    async def _on_event(self, event: dict[str, Any]) -> None:
        if self.finished:
            return
        completion, kind = self.completion, event["event"]
        assert completion is not None
        if kind == "status" and event.get("cache") == "coalesced":
            completion.cache_outcome = "coalesced"
        elif kind == "tokens" and self.stream:
            await self._stream_text(event["text"], int(event.get("offset", 0)))
        elif kind == "done":
            completion.cache_outcome = event.get("cache") or completion.cache_outcome
            await self._done(event)
        elif kind in ("failed", "cancelled"):
            await self.error(from_failed_event(event))

    async def _start_stream(self) -> None:
        assert self.completion is not None
        if not self.headers_sent:
            await self.start_events([(b"x-barista-cache", self.completion.cache_outcome.encode())])
            await self.send_body(self.completion.first_chunk(), more_body=True)

    async def _stream_text(self, text: str, offset: int) -> None:
        assert self.completion is not None
        fresh = self.completion.fresh_text(text, offset)
        if fresh:
            await self._start_stream()
            await self.send_body(self.completion.chunk({"content": fresh}), more_body=True)

    async def _done(self, event: dict[str, Any]) -> None:
        completion, key = self.completion, self.key
        assert completion is not None and key is not None
        document = completion.document(event)
        tokens = document["usage"]["total_tokens"]
        if tokens:
            await count_key_tokens(key.pk, tokens)
        if not self.stream:
            self.extra_headers.append((b"x-barista-cache", completion.cache_outcome.encode()))
            await self.json(200, document)
            return
        await self._stream_text(event.get("content") or "", 0)
        await self._start_stream()
        await self.send_body(completion.tail(event))
        self.finished = True


def _model_object(alias: str) -> dict[str, Any]:
    return {"id": alias, "object": "model", "created": 0, "owned_by": "barista"}


def _aliases(key: ApiKey | None) -> list[str]:
    """Aliases with an enabled backend (that this key may use)."""
    limits = key.limits() if key is not None else None
    return [
        str(entry["alias"])
        for entry in alias_list()
        if limits is None or limits.allows(str(entry["alias"]))
    ]
