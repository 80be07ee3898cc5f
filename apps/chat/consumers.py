"""The chat websocket (/ws/chat/): prompts in, the owner's answers out."""

from __future__ import annotations

import json
import logging
import uuid
from importlib import import_module
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY
from django.contrib.auth.models import User
from django.utils.crypto import constant_time_compare

from apps.backends.enabled import enabled_backends
from apps.chat import markdown
from apps.chat.images import ImageRefused, checked_images
from apps.chat.services import (
    SYSTEM_PROMPT_MAX,
    ConversationBusy,
    ConversationNotFound,
    chat_prompt_submit,
)
from apps.core.dispatch import DirectDispatch
from apps.core.nesting import MAX_DEPTH, NUL, TOO_DEEP, shape_refusal
from apps.core.outages import OUTAGES, RETRY_AFTER, outage_message
from apps.gateway.admission import Rejection
from apps.gateway.cache import shared
from apps.gateway.metrics import recorder
from apps.gateway.models import PromptRequest
from apps.gateway.operations import request_cancel
from apps.gateway.positions import PlaceInLine
from apps.gateway.selectors import is_request_id, request_get_owned
from apps.gateway.subscription import Subscription
from apps.gateway.validation import InvalidRequest, sampling_params

logger = logging.getLogger(__name__)

# Close codes in the 4000 range are ours; the page reads them.
CLOSE_UNAUTHENTICATED = 4401
# The sampling parameters the chat page offers.
CHAT_PARAMS = ("temperature", "max_tokens")


class InvalidInput(Exception):
    """A frame refused: the sender gets the message, a code, and when a retry makes sense,
    the seconds to wait."""

    def __init__(self, message: str, code: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retry_after = retry_after


class ChatConsumer(DirectDispatch, AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.subscription = Subscription(
            layer=self.channel_layer,
            channel_name=self.channel_name,
            owner_id=user.pk,
            send=self._send_event,
        )
        # The owner's prompts still waiting in line, told where they stand.
        self.in_line = PlaceInLine(self._tell_position)
        # Requests on models whose answers are not shared between people.
        self.private: set[str] = set()
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "in_line"):
            self.in_line.close()
        if hasattr(self, "subscription"):
            await self.subscription.close()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        payload: Any = None
        try:
            if text_data is None:
                raise InvalidInput("Send JSON text frames, not binary.", "invalid_json")
            if len(text_data.encode()) > settings.BARISTA_MAX_SOCKET_MESSAGE_BYTES:
                raise InvalidInput("Message too large.", "message_too_large")
            try:
                payload = json.loads(text_data)
            except (ValueError, RecursionError):  # too deeply nested is invalid too
                raise InvalidInput("Message is not valid JSON.", "invalid_json") from None
            refusal = shape_refusal(payload)
            if refusal == TOO_DEEP:
                raise InvalidInput(
                    f"Message nests more than {MAX_DEPTH} levels deep.", "invalid_json"
                )
            if refusal == NUL:
                raise InvalidInput("Text may not contain NUL characters (\\u0000).", "invalid_text")
            if not isinstance(payload, dict):
                raise InvalidInput("Message must be a JSON object.", "invalid_json")
            handler = self.HANDLERS.get(str(payload.get("type")))
            if handler is None:
                raise InvalidInput(
                    "Unknown message type; expected 'prompt', 'follow' or 'cancel'.",
                    "unknown_type",
                )
            await handler(self, payload)
        except OUTAGES as exc:
            logger.warning("chat frame refused: %s", type(exc).__name__)
            await self._refuse(
                payload, InvalidInput(outage_message(exc), "unavailable", retry_after=RETRY_AFTER)
            )
        except InvalidInput as exc:
            await self._refuse(payload, exc)

    async def _refuse(self, payload: Any, exc: InvalidInput) -> None:
        recorder.socket_error(code=exc.code)  # a client error, unless a refusal
        frame = {"type": "error", "error": exc.message, "code": exc.code, "ref": _ref(payload)}
        if exc.retry_after is not None:
            frame["retry_after"] = exc.retry_after
        await self.send_json(frame)

    async def handle_prompt(self, payload: dict[str, Any]) -> None:
        prompt = _prompt(payload)
        signed_in, exists, is_shared, reads_images = await database_sync_to_async(_prompt_checks)(
            self.scope, prompt["model"]
        )
        if not signed_in:
            # Signed out, deactivated or the password changed since the socket opened.
            await self._refuse(payload, InvalidInput("You are signed out.", "signed_out"))
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not exists:
            raise InvalidInput("Unknown or unavailable model.", "unknown_model")
        if prompt["images"] and not reads_images:
            raise InvalidInput(f"{prompt['model']} does not read images.", "images_not_read")
        # Join the request's group before the job exists, so no early token is missed.
        request_id = uuid.uuid4()
        if not is_shared:
            self.private.add(str(request_id))
        await self.subscription.join(request_id)
        try:
            sent = await database_sync_to_async(chat_prompt_submit)(
                user=self.scope["user"], request_id=request_id, **prompt
            )
        except BaseException as exc:
            await self.subscription.leave(request_id)
            refusal = _refusal(exc)
            if refusal is None:
                raise
            raise refusal from None
        await self.send_json(
            {
                "type": "accepted",
                "request": str(sent.id),
                "ref": _ref(payload),
                "conversation": sent.conversation_id,
                "status": sent.status,
                "title": sent.conversation.title,
            }
        )
        if sent.status == PromptRequest.Status.DONE:
            # Answered from the cache: replayed in the same frames as a live answer.
            await self.subscription.replay(sent.request)
            return
        self.subscription.expect(sent.id)
        self.in_line.watch(str(sent.id))

    async def handle_follow(self, payload: dict[str, Any]) -> None:
        """Re-attach to an in-flight request after a reload or reconnect (owner only)."""
        request = await database_sync_to_async(request_get_owned)(
            user=self.scope["user"], request_id=payload.get("request", "")
        )
        if request is None:
            raise InvalidInput("Request not found.", "not_found")
        signed_in, _, is_shared, _ = await database_sync_to_async(_prompt_checks)(
            self.scope, request.model
        )
        if not signed_in:
            await self._refuse(payload, InvalidInput("You are signed out.", "signed_out"))
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not is_shared:
            self.private.add(str(request.id))
        await self.subscription.join(request.id)
        # It may have finished between the page render and now: send the final state.
        row = await self.subscription.catch_up(request.id)
        if row is not None and not row.is_final:
            await self.send_json({"type": "status", "request": str(row.id), "status": row.status})
            self.subscription.expect(row.id)
            if row.status == PromptRequest.Status.QUEUED:
                self.in_line.watch(str(row.id))

    async def handle_cancel(self, payload: dict[str, Any]) -> None:
        request = (
            await database_sync_to_async(request_cancel)(
                owner_id=self.scope["user"].pk, request_id=str(payload.get("request", ""))
            )
            if is_request_id(payload.get("request"))
            else None
        )
        if request is None:
            raise InvalidInput("Request not found.", "not_found")
        if request.status == PromptRequest.Status.CANCELLED:
            await self.subscription.deliver({"event": "cancelled", "request": str(request.id)})

    HANDLERS = {"prompt": handle_prompt, "follow": handle_follow, "cancel": handle_cancel}

    async def request_event(self, event: dict[str, Any]) -> None:
        """A progress event from a worker: the subscription checks the owner."""
        await self.subscription.receive(event)

    async def _send_event(self, event: dict[str, Any]) -> None:
        """An event as the page's frame: its kind becomes the frame's type."""
        frame = {k: v for k, v in event.items() if k not in {"type", "owner", "event"}}
        frame["type"] = event["event"]
        if str(event["request"]) in self.private:
            # Answers on this model are not shared: how it was answered (a hit, merged
            # with the person's own identical question) is not news worth a badge.
            frame.pop("cache", None)
        if frame["type"] == "done" and isinstance(frame.get("content"), str):
            # Sanitized on the server; a tool call the model made is shown too.
            source = markdown.answer_source(frame["content"], frame.get("extra"))
            frame["html"] = markdown.render(source)
        if frame["type"] == "status" and frame.get("status") == "queued":
            self.in_line.watch(str(event["request"]))  # put back in line by a worker
        else:
            self.in_line.forget(str(event["request"]))
        await self.send_json(frame)

    async def _tell_position(self, request_id: str, position: int, eta: int) -> None:
        await self.send_json(
            {"type": "queue", "request": request_id, "position": position, "eta": eta}
        )

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content))


def _refusal(exc: BaseException) -> InvalidInput | None:
    """What the sender is told when submitting failed; None for an unexpected error."""
    if isinstance(exc, ConversationNotFound):
        return InvalidInput("Conversation not found.", "not_found")
    if isinstance(exc, ConversationBusy):
        return InvalidInput(
            "The last answer is still on its way: stop it first.", "conversation_busy"
        )
    if isinstance(exc, Rejection):
        return InvalidInput(exc.message, exc.code, retry_after=exc.retry_after)
    return None


def _prompt(payload: dict[str, Any]) -> dict[str, Any]:
    """A prompt frame's fields, checked: the keyword arguments of ``chat_prompt_submit``."""
    content, model = payload.get("content"), payload.get("model")
    conversation = payload.get("conversation")
    if not isinstance(content, str) or not content.strip():
        raise InvalidInput("The prompt is empty.", "empty_prompt")
    if len(content) > settings.BARISTA_MAX_PROMPT_CHARS:
        raise InvalidInput(
            f"The prompt is too long ({len(content):,} characters; the limit is "
            f"{settings.BARISTA_MAX_PROMPT_CHARS:,}).",
            "prompt_too_long",
        )
    if not isinstance(model, str):
        raise InvalidInput("Unknown or unavailable model.", "unknown_model")
    if conversation is not None and (type(conversation) is not int):
        raise InvalidInput("Conversation must be an id or null.", "invalid_conversation")
    fresh = payload.get("fresh", False)
    if not isinstance(fresh, bool):
        raise InvalidInput("'fresh' must be true or false.", "invalid_fresh")
    replace_last = payload.get("replace_last", False)
    if not isinstance(replace_last, bool) or (replace_last and conversation is None):
        raise InvalidInput(
            "'replace_last' must be true or false, and needs a conversation.",
            "invalid_replace",
        )
    # A new conversation's system prompt comes with its first prompt (later ones are
    # set on the conversation itself).
    system = payload.get("system")
    if system is not None and (
        not isinstance(system, str) or conversation is not None or len(system) > SYSTEM_PROMPT_MAX
    ):
        raise InvalidInput(
            f"'system' must be text of at most {SYSTEM_PROMPT_MAX:,} characters, sent with a "
            "new conversation's first prompt.",
            "invalid_system",
        )
    return {
        "model": model,
        "content": content,
        "conversation_id": conversation,
        "bypass_cache": fresh,
        "params": _params(payload.get("params")),
        "replace_last": replace_last,
        "system_prompt": system,
        "images": _images(payload.get("images")),
    }


def _images(value: Any) -> list[str]:
    try:
        return checked_images(value)
    except ImageRefused as exc:
        raise InvalidInput(str(exc), "invalid_images") from None


def _params(value: Any) -> dict[str, Any] | None:
    """The conversation's sampling parameters from a prompt frame, checked by the API's
    rules; None keeps the conversation's own."""
    if value is None:
        return None
    try:
        params = sampling_params(value, allowed=CHAT_PARAMS)
    except InvalidRequest as exc:
        raise InvalidInput(exc.message, "invalid_params") from None
    if "temperature" in params:
        params["temperature"] = float(params["temperature"])
    return params


def _model_state(alias: str) -> tuple[bool, bool, bool]:
    """Whether the chat model exists, whether its answers are shared between people, and
    whether it reads images (every enabled backend of it does) — from the process's copy
    of the backend table, not a query per prompt."""
    backends = enabled_backends.for_alias_sync(alias)
    reads_images = bool(backends) and all(backend.accepts_images for backend in backends)
    return bool(backends), shared(alias), reads_images


def _prompt_checks(scope: dict[str, Any], alias: str) -> tuple[bool, bool, bool, bool]:
    """Before each prompt: is the socket's person still signed in (their session not
    ended, their account active, their password unchanged since), does the model exist,
    does it share answers, does it read images. One trip to the database thread."""
    return (_still_signed_in(scope), *_model_state(alias))


def _still_signed_in(scope: dict[str, Any]) -> bool:
    session, user = scope.get("session"), scope.get("user")
    if session is None or user is None or not session.session_key:
        return False
    # Read afresh: a session signed out (deleted) or expired loads as nothing.
    stored = import_module(settings.SESSION_ENGINE).SessionStore(session.session_key).load()
    current = User.objects.filter(pk=user.pk, is_active=True).first()
    if current is None:
        return False
    return constant_time_compare(stored.get(HASH_SESSION_KEY, ""), current.get_session_auth_hash())


def _ref(payload: Any) -> Any:
    """Echo the client's own correlation id (if any) so the page knows what failed."""
    if isinstance(payload, dict) and isinstance(payload.get("ref"), (str, int)):
        return payload["ref"]
    return None
