"""The OpenAI-compatible API on ``/v1/``: routes, the key, and a chat completion's events
translated to OpenAI's wire format.

A chat completion takes the same path as a chat-page prompt: admission, cache, coalescing,
queue, balancer, ledger, and the gateway's delivery ``Subscription``. Its events are
answered as Server-Sent Events when ``stream`` is true, or as one JSON body at the end.
A stream's headers go out as soon as the request is accepted: a refusal before that (a
bad key or body, a limit) is a proper HTTP error, a failure after it an error event.
While it waits, the stream carries SSE comments — its place in line when that changes,
and keep-alives (``apps.api.http``) — so idle timeouts do not end it. A client that hangs
up cancels its request (unless others follow it).
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from apps.api.completions import Completion, TextCompletion, fresh_parts
from apps.api.errors import (
    ApiError,
    backends_down,
    from_failed_event,
    from_rejection,
    model_not_found,
    quota_headers,
)
from apps.api.http import JsonHttpConsumer
from apps.api.models import ApiKey
from apps.api.openapi import openapi_document
from apps.api.responses import ResponseWriter, responses_request
from apps.api.services import api_key_authenticate
from apps.backends.enabled import enabled_backends
from apps.backends.models import Backend
from apps.backends.recovery import all_down
from apps.core import clients
from apps.core.nesting import MAX_DEPTH, NUL, TOO_DEEP, shape_refusal
from apps.gateway import extras
from apps.gateway.admission import Principal, Quota, Rejection, count_tokens
from apps.gateway.cache import CachedAnswer, shared
from apps.gateway.embeddings import EmbeddingFailed, embeddings_create
from apps.gateway.models import PromptRequest
from apps.gateway.operations import request_cancel
from apps.gateway.positions import PlaceInLine
from apps.gateway.selectors import cached_answer
from apps.gateway.services import request_submit
from apps.gateway.subscription import Subscription
from apps.gateway.validation import (
    ChatRequest,
    InvalidRequest,
    chat_request,
    embeddings_request,
    text_request,
)

# The completion routes: a chat completion, a legacy text completion, and the Responses
# API (a chat completion in another shape: apps.api.responses).
COMPLETIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text",
    "/v1/responses": "responses",
}
ROUTES = {*COMPLETIONS, "/v1/embeddings", "/v1/models", "/v1/openapi.json"}


class OpenAIConsumer(JsonHttpConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key: ApiKey | None = None
        self.subscription: Subscription | None = None
        self.completion: Completion | ResponseWriter | None = None
        self.stream = False
        self.answering = False  # a stream's answer has begun (its first chunk is out)
        self.cache_header = False
        self.place = PlaceInLine(self._tell_place)
        # For tokens-per-minute limits when the client hangs up before the answer's
        # usage: what it sent and what it was sent, about four characters a token.
        self.body_chars = 0
        self.answered_chars = 0

    async def route(self, body: bytes) -> None:
        method, path = self.scope["method"], self.scope["path"].rstrip("/")
        if path not in ROUTES and not path.startswith("/v1/models/"):
            # Whatever the key: a wrong base URL is the likelier mistake, and says so.
            raise ApiError(
                404,
                f"Unknown route {method} {path}. The API's routes are listed at /v1/openapi.json.",
                code="unknown_url",
            )
        if path == "/v1/openapi.json" and method == "GET":
            await self.json(200, openapi_document())
            return
        token = self._token()
        if path in COMPLETIONS:
            if method != "POST":
                raise ApiError(405, f"Use POST for {path}.", code="method_not_allowed")
            await self.completions(token, body, COMPLETIONS[path])
            return
        if path == "/v1/embeddings":
            if method != "POST":
                raise ApiError(405, "Use POST for /v1/embeddings.", code="method_not_allowed")
            await self.embeddings(token, body)
            return
        key = self.key = await database_sync_to_async(_authenticate)(token)
        if path == "/v1/models" and method == "GET":
            aliases = await database_sync_to_async(_all_aliases)(key)
            await self.json(
                200, {"object": "list", "data": [_model_object(alias) for alias in aliases]}
            )
        elif path.startswith("/v1/models/") and method == "GET":
            alias = path.removeprefix("/v1/models/")
            if alias not in await database_sync_to_async(_all_aliases)(key):
                raise model_not_found(alias)
            await self.json(200, _model_object(alias))
        else:
            raise ApiError(404, f"Unknown route {method} {path}.", code="unknown_url")

    def _token(self) -> str:
        scheme, _, token = (self.header(b"authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        return token.strip()

    async def completions(self, token: str, raw: bytes, route: str) -> None:
        """A chat completion, a legacy text completion, or a response (``route``: "chat",
        "text", "responses")."""
        kind = PromptRequest.Kind.TEXT if route == "text" else PromptRequest.Kind.CHAT
        request: ChatRequest | ApiError
        try:
            request = _completion_request(raw, route)
        except ApiError as exc:
            request = exc
        bypass = "no-cache" in (self.header(b"cache-control") or "").lower()
        # "X-Barista-Wait: 0": do not hold the request while the model's backends are down.
        no_wait = (self.header(b"x-barista-wait") or "").strip() == "0"
        request_id = uuid.uuid4()
        # One trip to the database thread: the key (401 first), the body (400), the model
        # (404), and a stored answer, which is recorded and returned there and then.
        authorized = await database_sync_to_async(_authorize)(
            token, request, request_id, bypass, no_wait, kind
        )
        self.key, row, quota = authorized.key, authorized.hit, authorized.quota
        self.cache_header = authorized.shared
        model, _, _, self.stream, include_usage = authorized.request
        writer = {"text": TextCompletion, "responses": ResponseWriter}.get(route, Completion)
        self.completion = writer(str(request_id), model, int(time.time()), include_usage)
        principal = self.key.principal()
        self.body_chars = len(raw)
        self.subscription = Subscription(
            layer=self.channel_layer,
            # A stored answer is replayed from here: it needs no channel.
            channel_name="" if row is not None else await self.open_channel(),
            owner_id=self.key.owner_id,
            send=self._on_event,
        )
        if row is not None:
            self.extra_headers += [
                *quota_headers(quota),
                (b"x-barista-request-id", str(request_id).encode()),
            ]
            await self.subscription.replay(row)  # from the cache: replayed like a live one
            return
        # Not answered yet: listen for the answer before the job exists (no token missed),
        # then submit.
        await self.subscription.join(request_id)
        self.completion.cache_outcome = await database_sync_to_async(_accept)(
            principal, authorized.request, request_id, bypass, kind, self.cache_header
        )
        self.extra_headers += [
            *quota_headers(principal.quota),
            (b"x-barista-request-id", str(request_id).encode()),
        ]
        self.subscription.expect(request_id)
        if self.stream:
            # Accepted: from here on the answer is a stream, even while it waits in line.
            await self.start_events(self._cache_header())
            self.place.watch(str(request_id))

    async def embeddings(self, token: str, raw: bytes) -> None:
        """``POST /v1/embeddings``: answered here, not by a worker (apps.gateway.embeddings)."""
        key = self.key = await database_sync_to_async(_authenticate)(token)
        try:
            model, inputs, params, encoding = embeddings_request(_json_body(raw))
        except InvalidRequest as exc:
            raise ApiError(400, exc.message, param=exc.param, code=exc.code) from None
        if model not in await database_sync_to_async(_aliases)(None, Backend.Kind.EMBEDDINGS):
            raise model_not_found(model)
        principal = key.principal()
        try:
            result = await embeddings_create(
                principal=principal,
                alias=model,
                inputs=inputs,
                params=params,
                bypass_cache="no-cache" in (self.header(b"cache-control") or "").lower(),
            )
        except Rejection as exc:
            raise from_rejection(exc) from None
        except EmbeddingFailed as exc:
            raise from_failed_event({"code": exc.code, "error": exc.message}) from None
        await count_tokens(principal.api_limits, result.prompt_tokens)  # as for a completion
        outcome = (
            "hit" if result.cached == len(inputs) else "miss" if not result.cached else "partial"
        )
        self.extra_headers += [
            *quota_headers(principal.quota),
            (b"x-barista-request-id", str(result.request_id).encode()),
        ]
        if result.shared:
            self.extra_headers.append((b"x-barista-cache", outcome.encode()))
        await self.json(
            200,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": index, "embedding": _encoded(vector, encoding)}
                    for index, vector in enumerate(result.vectors)
                ],
                "model": model,
                "usage": {
                    "prompt_tokens": result.prompt_tokens,
                    "total_tokens": result.prompt_tokens,
                },
            },
        )

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        if not self.finished and self.completion is not None and self.key is not None:
            # The client hung up: stop its request (a leader others follow keeps going).
            await database_sync_to_async(request_cancel)(
                owner_id=self.key.owner_id, request_id=self.completion.request_id
            )
            # What the backend spent on it so far counts toward tokens per minute, as
            # if it had finished: hanging up just before the end must not be free.
            spent = (self.body_chars + self.answered_chars) // 4 + 1
            await count_tokens(self.key.principal().api_limits, spent)
        await super().http_disconnect(message)

    async def stop(self) -> None:
        self.place.close()
        if self.subscription is not None:
            await self.subscription.close()

    def waits_through_redis_outages(self) -> bool:
        # Accepted and waiting for its answer: the answer comes after the outage.
        return self.subscription is not None and self.subscription.expecting

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
        if self.stream and kind == "status" and event.get("status") == "queued":
            self.place.watch(completion.request_id)  # put back in line by a worker
        else:
            self.place.forget(completion.request_id)
        if kind == "status" and event.get("cache"):  # merged, or replayed from the cache
            completion.cache_outcome = event["cache"]
        elif kind == "tokens":
            text = event.get("text") or ""
            self.answered_chars = max(self.answered_chars, event.get("offset", 0) + len(text))
            if not self.stream:
                return
            if "pieces" in event:
                await self._stream_pieces(event)
            else:
                await self._stream_text(event["text"], int(event.get("offset", 0)))
        elif kind == "done":
            completion.cache_outcome = event.get("cache") or completion.cache_outcome
            await self._done(event)
        elif kind in ("failed", "cancelled"):
            await self.error(from_failed_event(event))

    async def _start_stream(self) -> None:
        """The answer's first chunk, before its first text (and the headers, unless they
        went out when the request was accepted: a replay's go out here)."""
        assert self.completion is not None
        if not self.answering:
            self.answering = True
            await self.start_events(self._cache_header())
            await self.send_body(self.completion.first_chunk(), more_body=True)

    async def _tell_place(self, request_id: str, position: int, eta: int) -> None:
        await self.comment(f"queued position={position} eta={eta}s")

    def _cache_header(self) -> list[tuple[bytes, bytes]]:
        """``X-Barista-Cache``, only where the model's answers are shared between people
        (apps.gateway.cache.shared): otherwise there is nothing to tell."""
        assert self.completion is not None
        if not self.cache_header:
            return []
        return [(b"x-barista-cache", self.completion.cache_outcome.encode())]

    async def _stream_text(self, text: str, offset: int) -> None:
        assert self.completion is not None
        fresh = self.completion.fresh_text(text, offset)
        if fresh:
            await self._start_stream()
            await self.send_body(self.completion.chunk({"content": fresh}), more_body=True)

    async def _stream_pieces(self, event: dict[str, Any]) -> None:
        """A batch with pieces (tool calls, logprobs, other choices): each as it came."""
        assert self.completion is not None
        fresh = fresh_parts(
            self.completion,
            event["pieces"],
            int(event.get("seq", 0)),
            int(event.get("offset", 0)),
        )
        if fresh:
            await self._start_stream()
            body = b"".join(self.completion.piece_chunk(piece) for piece in fresh)
            await self.send_body(body, more_body=True)

    async def _done(self, event: dict[str, Any]) -> None:
        completion, key = self.completion, self.key
        assert completion is not None and key is not None
        document = completion.document(event)
        # Counted only where a tokens-per-minute limit applies (the key's or the person's).
        await count_tokens(key.principal().api_limits, document["usage"]["total_tokens"])
        if not self.stream:
            self.extra_headers += self._cache_header()
            await self.json(200, document)
            return
        await self._stream_text(event.get("content") or "", 0)
        await self._start_stream()
        if not completion.sent_pieces:
            # Replayed or followed: the tool calls, logprobs and other choices, whole.
            pieces = extras.pieces_of(event.get("extra"))
            if pieces:
                await self.send_body(
                    b"".join(completion.piece_chunk(piece) for piece in pieces), more_body=True
                )
        await self.send_body(completion.tail(event))
        self.finished = True


def _model_object(alias: str) -> dict[str, Any]:
    return {"id": alias, "object": "model", "created": 0, "owned_by": "barista"}


def _aliases(key: ApiKey | None, kind: str = Backend.Kind.CHAT) -> list[str]:
    """Aliases with an enabled backend of this kind (that this key may use), from the
    per-process list the workers use too: no query per request."""
    limits = key.limits() if key is not None else None
    return [
        alias for alias in enabled_backends.aliases(kind) if limits is None or limits.allows(alias)
    ]


def _all_aliases(key: ApiKey | None) -> list[str]:
    """Every model this key may use: chat and embeddings."""
    return sorted(set(_aliases(key)) | set(_aliases(key, Backend.Kind.EMBEDDINGS)))


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    """A vector as the client asked: numbers, or (as OpenAI sends it) base64 of float32."""
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def _json_body(raw: bytes) -> Any:
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "The request body is not valid UTF-8.", code="invalid_utf8") from None
    except (ValueError, RecursionError):  # too deeply nested is invalid too
        raise ApiError(
            400, "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None
    refusal = shape_refusal(body)
    if refusal == TOO_DEEP:
        raise ApiError(
            400,
            f"The JSON body nests more than {MAX_DEPTH} levels deep.",
            code="invalid_json",
        )
    if refusal == NUL:
        raise ApiError(
            400,
            "Text in the request may not contain NUL characters (\\u0000).",
            code="invalid_text",
        )
    return body


def _completion_request(raw: bytes, route: str) -> ChatRequest:
    body = _json_body(raw)
    parse = {"text": text_request, "responses": responses_request}.get(route, chat_request)
    try:
        return parse(body)
    except InvalidRequest as exc:
        raise ApiError(400, exc.message, param=exc.param, code=exc.code) from None


def _authenticate(token: str) -> ApiKey:
    key = api_key_authenticate(token)
    if key is None:
        raise ApiError(401, "Incorrect or revoked API key provided.", code="invalid_api_key")
    return key


@dataclass(frozen=True, slots=True)
class Authorized:
    key: ApiKey
    request: ChatRequest
    hit: PromptRequest | None = None  # recorded already, when the answer was stored
    quota: Quota | None = None
    shared: bool = False  # the model's answers are shared: say how it was answered


def _authorize(
    token: str,
    request: ChatRequest | ApiError,
    request_id: uuid.UUID,
    bypass: bool,
    no_wait: bool = False,
    kind: str = PromptRequest.Kind.CHAT,
) -> Authorized:
    """The key, then the body, then the model — each refused in that order; then, when the
    answer is stored already, the request recorded as a hit (no channel, no job). With
    ``no_wait``, a model whose backends are all down is refused at once (503)."""
    key = _authenticate(token)
    if isinstance(request, ApiError):
        raise request
    model, messages, params, _, _ = request
    if model not in _aliases(None):
        raise model_not_found(model)
    principal = key.principal()
    stored = cached_answer(
        principal=principal,
        model=model,
        messages=messages,
        params=params,
        bypass_cache=bypass,
        kind=kind,
    )
    if stored is None:
        if no_wait:
            down = all_down(clients.live_sync_redis(), enabled_backends.for_alias_sync(model))
            if down is not None:
                raise backends_down(model, retry_after=down)
        return Authorized(key, request, shared=shared(model))
    hit = _submit(principal, request, request_id, bypass, cached=stored, kind=kind)
    # Loaded here (from the per-process list when it is still enabled), so the replay
    # needs no second trip to this thread.
    backend = enabled_backends.backend(hit.backend_id) if hit.backend_id else None
    if backend is not None:
        hit.backend = backend
    else:
        hit.backend  # noqa: B018
    return Authorized(key, request, hit, principal.quota, shared(model))


def _accept(
    principal: Principal,
    request: ChatRequest,
    request_id: uuid.UUID,
    bypass: bool,
    kind: str,
    tell_outcome: bool,
) -> str:
    """Submit a request with no stored answer; returns how it is being answered, as far as
    is known at acceptance. With ``tell_outcome`` (its model's answers are shared, which
    X-Barista-Cache tells) that is read back: submitting settles it after the row is
    created — merged with an identical request in flight ("coalesced"), or, rarely,
    answered by one that finished meanwhile ("hit"). A merged request whose leader fails is
    answered on its own after all, but a stream's header has gone by then."""
    row = _submit(principal, request, request_id, bypass, None, kind)
    if not tell_outcome:
        return row.cache_outcome
    now = PromptRequest.objects.filter(id=row.id).values_list("cache_outcome", flat=True)
    return now.first() or row.cache_outcome


def _submit(
    principal: Principal,
    request: ChatRequest,
    request_id: uuid.UUID,
    bypass: bool,
    cached: CachedAnswer | None,
    kind: str = PromptRequest.Kind.CHAT,
) -> PromptRequest:
    """Submit, after ``_authorize`` looked the answer up (``cached``: what it found)."""
    model, messages, params, _, _ = request
    try:
        return request_submit(
            principal=principal,
            model=model,
            messages=messages,
            params=params,
            source=PromptRequest.Source.API,
            request_id=request_id,
            queue=settings.BARISTA_API_QUEUE,
            bypass_cache=bypass,
            cached=cached,
            looked_up=True,
            kind=kind,
        )
    except Rejection as exc:
        raise from_rejection(exc) from None
