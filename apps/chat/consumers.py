"""The chat websocket (/ws/chat/): prompts in, the owner's answers out."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from redis.exceptions import RedisError

from apps.backends.selectors import alias_exists
from apps.chat import markdown
from apps.chat.services import ConversationBusy, ConversationNotFound, chat_prompt_submit
from apps.gateway import delivery
from apps.gateway.admission import Rejection, estimate_wait
from apps.gateway.models import PromptRequest
from apps.gateway.selectors import is_request_id, queue_position, request_get_owned
from apps.gateway.services import request_cancel

logger = logging.getLogger(__name__)

# Close codes in the 4000 range are ours; the page reads them.
CLOSE_UNAUTHENTICATED = 4401


class InvalidInput(Exception):
    """A frame refused: the sender gets the message, a code, and when a retry makes sense,
    the seconds to wait."""

    def __init__(self, message: str, code: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retry_after = retry_after


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user_id: int = user.pk
        self.groups_joined: set[str] = set()
        # The owner's prompts still waiting in line: request id -> last (position, eta) sent.
        self.waiting: dict[str, tuple[int, int] | None] = {}
        self.position_task: asyncio.Task[None] | None = None
        # Requests in flight on this socket -> when their last frame arrived (watchdog).
        self.expecting: dict[str, float] = {}
        self.ended: set[str] = set()
        self.watchdog: asyncio.Task[None] | None = None
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for task in (getattr(self, "position_task", None), getattr(self, "watchdog", None)):
            if task is not None:
                task.cancel()
        for group in getattr(self, "groups_joined", set()):
            await self.channel_layer.group_discard(group, self.channel_name)

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
            if not isinstance(payload, dict):
                raise InvalidInput("Message must be a JSON object.", "invalid_json")
            kind = payload.get("type")
            if kind == "prompt":
                await self.handle_prompt(payload)
            elif kind == "follow":
                await self.handle_follow(payload)
            elif kind == "cancel":
                await self.handle_cancel(payload)
            else:
                raise InvalidInput(
                    "Unknown message type; expected 'prompt', 'follow' or 'cancel'.",
                    "unknown_type",
                )
        except RedisError:
            logger.warning("chat frame refused: Redis is not answering")
            await self.send_json(
                {
                    "type": "error",
                    "error": "Barista is temporarily unavailable (its queue is not answering). "
                    "Try again in a few seconds.",
                    "code": "unavailable",
                    "ref": _ref(payload),
                    "retry_after": 5,
                }
            )
        except InvalidInput as exc:
            frame = {"type": "error", "error": exc.message, "code": exc.code, "ref": _ref(payload)}
            if exc.retry_after is not None:
                frame["retry_after"] = exc.retry_after
            await self.send_json(frame)

    async def handle_prompt(self, payload: dict[str, Any]) -> None:
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
        if not isinstance(model, str) or not await database_sync_to_async(alias_exists)(model):
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
        params = _params(payload.get("params"))

        # Join the request's group before the job exists, so no early token is missed.
        request_id = uuid.uuid4()
        group = delivery.group_name(request_id)
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined.add(group)
        try:
            prompt = await database_sync_to_async(chat_prompt_submit)(
                user=self.scope["user"],
                model=model,
                content=content,
                conversation_id=conversation,
                request_id=request_id,
                bypass_cache=fresh,
                params=params,
                replace_last=replace_last,
            )
        except ConversationNotFound:
            await self._leave(group)
            raise InvalidInput("Conversation not found.", "not_found") from None
        except ConversationBusy:
            await self._leave(group)
            raise InvalidInput(
                "The last answer is still on its way: stop it first.", "busy"
            ) from None
        except Rejection as exc:
            await self._leave(group)
            raise InvalidInput(exc.message, exc.code, retry_after=exc.retry_after) from None
        except Exception:
            await self._leave(group)
            raise
        await self.send_json(
            {
                "type": "accepted",
                "request": str(prompt.id),
                "ref": _ref(payload),
                "conversation": prompt.conversation_id,
                "status": prompt.status,
                "title": prompt.conversation.title,
            }
        )
        request = prompt.request
        if request.status == PromptRequest.Status.DONE:
            # Answered from the cache: replayed in the same frames as a live answer.
            for event in await database_sync_to_async(delivery.replay_events)(request):
                await self._deliver(event)
            return
        self._expect(str(request.id))
        self._watch(str(request.id))

    async def handle_follow(self, payload: dict[str, Any]) -> None:
        """Re-attach to an in-flight request after a reload or reconnect (owner only)."""
        request = await database_sync_to_async(request_get_owned)(
            user=self.scope["user"], request_id=payload.get("request", "")
        )
        if request is None:
            raise InvalidInput("Request not found.", "not_found")
        group = delivery.group_name(request.id)
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined.add(group)
        # It may have finished between the page render and now: send the final state.
        row = await self._catch_up(str(request.id))
        if row is not None and not row.is_final:
            await self.send_json({"type": "status", "request": str(row.id), "status": row.status})
            self._expect(str(row.id))
            if row.status == PromptRequest.Status.QUEUED:
                self._watch(str(row.id))

    async def _catch_up(self, request_id: str) -> PromptRequest | None:
        """Send a request's final frame from the database if it has ended (the ledger is
        the record, DESIGN.md decision 2). Returns the row as it is now."""
        row = await database_sync_to_async(
            PromptRequest.objects.select_related("backend").filter(id=request_id).first
        )()
        if row is None or not row.is_final:
            return row
        await self._deliver({**delivery.final_event(row), "request": str(row.id)})
        return row

    def _expect(self, request_id: str) -> None:
        """Frames are on their way for this request: watch that they keep coming."""
        self.expecting[request_id] = time.monotonic()
        if self.watchdog is None or self.watchdog.done():
            self.watchdog = asyncio.create_task(self._watch_delivery())

    async def _watch_delivery(self) -> None:
        """The channel layer may drop frames (a full channel, a Redis hiccup): when a
        request in flight has sent nothing for ``BARISTA_DELIVERY_STALL`` seconds, look
        it up in the ledger and, if it has ended, send its final frame from there."""
        stall = settings.BARISTA_DELIVERY_STALL
        while self.expecting:
            await asyncio.sleep(min(1.0, stall))
            now = time.monotonic()
            for request_id, last in list(self.expecting.items()):
                if now - last < stall:
                    continue
                self.expecting[request_id] = now
                try:
                    row = await self._catch_up(request_id)
                except Exception:  # the database away too: try again next round
                    logger.warning("could not check request %s", request_id, exc_info=True)
                    continue
                if row is not None and row.is_final:
                    delivery.count_caught_up()

    async def handle_cancel(self, payload: dict[str, Any]) -> None:
        request = (
            await database_sync_to_async(request_cancel)(
                owner=self.scope["user"], request_id=str(payload.get("request", ""))
            )
            if is_request_id(payload.get("request"))
            else None
        )
        if request is None:
            raise InvalidInput("Request not found.", "not_found")
        if request.status == PromptRequest.Status.CANCELLED:
            await self._deliver({"event": "cancelled", "request": str(request.id)})

    async def request_event(self, event: dict[str, Any]) -> None:
        """A progress event from a worker. Re-check the owner before anything is sent."""
        if event.get("owner") != self.user_id:
            delivery.count_refused()
            logger.error("refused a frame for request %s: owner mismatch", event.get("request"))
            return
        await self._deliver(event)

    def _watch(self, request_id: str) -> None:
        self.waiting.setdefault(request_id, None)
        if self.position_task is None or self.position_task.done():
            self.position_task = asyncio.create_task(self._report_positions())

    async def _report_positions(self) -> None:
        """Every second, tell the owner where each of their waiting prompts stands."""
        while self.waiting:
            for request_id in list(self.waiting):
                position = await database_sync_to_async(queue_position)(request_id=request_id)
                if position is None or request_id not in self.waiting:
                    self.waiting.pop(request_id, None)
                    continue
                eta = await database_sync_to_async(estimate_wait)(position)
                if self.waiting.get(request_id) != (position, eta):
                    self.waiting[request_id] = (position, eta)
                    await self.send_json(
                        {"type": "queue", "request": request_id, "position": position, "eta": eta}
                    )
            await asyncio.sleep(settings.BARISTA_QUEUE_POSITION_INTERVAL)

    async def _deliver(self, event: dict[str, Any]) -> None:
        frame = {k: v for k, v in event.items() if k not in {"type", "owner", "event"}}
        frame["type"] = event["event"]
        request_id = str(event["request"])
        if frame["type"] in {"done", "failed", "cancelled"}:
            if request_id in self.ended:
                return  # already ended here (a late frame after a catch-up): once is enough
            self.ended.add(request_id)
            self.expecting.pop(request_id, None)
        elif request_id in self.expecting:
            self.expecting[request_id] = time.monotonic()
        if frame["type"] == "done" and isinstance(frame.get("content"), str):
            frame["html"] = markdown.render(frame["content"])  # sanitized on the server
        if frame["type"] == "status" and frame.get("status") == "queued":
            self._watch(str(event["request"]))  # put back in line by a worker shutting down
        else:
            self.waiting.pop(str(event["request"]), None)
        await self.send_json(frame)
        if event["event"] in {"done", "failed", "cancelled"}:
            await self._leave(delivery.group_name(event["request"]))

    async def _leave(self, group: str) -> None:
        if group in self.groups_joined:
            self.groups_joined.discard(group)
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except RedisError:
                pass  # the group expires by itself

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content))


def _params(value: Any) -> dict[str, Any] | None:
    """The conversation's sampling parameters from a prompt frame, checked; None keeps
    the conversation's own."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"temperature", "max_tokens"}:
        raise InvalidInput("'params' may hold only temperature and max_tokens.", "invalid_params")
    params: dict[str, Any] = {}
    temperature = value.get("temperature")
    if temperature is not None:
        if type(temperature) not in (int, float) or not 0 <= temperature <= 2:
            raise InvalidInput("Temperature must be a number from 0 to 2.", "invalid_params")
        params["temperature"] = float(temperature)
    max_tokens = value.get("max_tokens")
    if max_tokens is not None:
        limit = settings.BARISTA_API_MAX_TOKENS
        if type(max_tokens) is not int or not 1 <= max_tokens <= limit:
            raise InvalidInput(
                f"Max tokens must be a whole number from 1 to {limit}.", "invalid_params"
            )
        params["max_tokens"] = max_tokens
    return params


def _ref(payload: Any) -> Any:
    """Echo the client's own correlation id (if any) so the page knows what failed."""
    if isinstance(payload, dict) and isinstance(payload.get("ref"), (str, int)):
        return payload["ref"]
    return None
