"""Checks of a chat request, one set of rules for both doors: the API's
``POST /v1/chat/completions`` body, and the parameters the chat page sends with a prompt.
Each problem names the parameter (``param``) so SDKs can point at it."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from django.conf import settings

ROLES = {"system", "developer", "user", "assistant", "tool"}
# Parameters passed on to the backend (and part of the cache key); anything else is refused.
PASSED_ON = {
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "tools",
    "tool_choice",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "parallel_tool_calls",
}
ACCEPTED = PASSED_ON | {"model", "messages", "stream", "stream_options", "user", "n", "store"}


class InvalidRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number from {low:g} to {high:g}.", name)


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be an integer from {low} to {high}.", name)


def _content_text(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if isinstance(content, list):
        for index, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(
                    "Each content part must be an object with a 'type'.", f"{where}[{index}]"
                )
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise InvalidRequest("A text part needs 'text'.", f"{where}[{index}].text")
        return
    raise InvalidRequest("'content' must be a string or a list of parts.", where)


def _check_numbers(body: dict[str, Any]) -> None:
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    cap = settings.BARISTA_API_MAX_TOKENS
    _integer(body, "max_tokens", 1, cap)
    _integer(body, "max_completion_tokens", 1, cap)
    _integer(body, "seed", -(2**63), 2**63 - 1)
    _integer(body, "n", 1, 1)


def sampling_params(value: Any, *, allowed: Collection[str]) -> dict[str, Any]:
    """Parameters sent apart from a request (the chat page's ``params``), checked by the
    same rules as the API's; only the ``allowed`` names."""
    if not isinstance(value, dict):
        raise InvalidRequest("'params' must be an object.", "params")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise InvalidRequest(
            f"Unrecognized parameter: {unknown[0]}", unknown[0], "unknown_parameter"
        )
    _check_numbers(value)
    return {name: given for name, given in value.items() if given is not None}


# model, messages, the parameters passed on, stream, include usage
ChatRequest = tuple[str, list[dict[str, Any]], dict[str, Any], bool, bool]


def chat_request(body: Any) -> ChatRequest:
    """Validate; returns (model, messages, backend parameters, stream, include usage)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    unknown = sorted(set(body) - ACCEPTED)
    if unknown:
        raise InvalidRequest(
            f"Unrecognized request argument supplied: {unknown[0]}", unknown[0], "unknown_parameter"
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", "messages")
    if len(messages) > settings.BARISTA_API_MAX_MESSAGES:
        raise InvalidRequest(
            f"Too many messages ({len(messages)}); the limit is "
            f"{settings.BARISTA_API_MAX_MESSAGES}.",
            "messages",
        )
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest("Each message must be an object.", where)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(
                f"'role' must be one of {', '.join(sorted(ROLES))}.", f"{where}.role"
            )
        if "content" not in message and not message.get("tool_calls"):
            raise InvalidRequest("A message needs 'content'.", f"{where}.content")
        if message.get("content") is not None:
            _content_text(message["content"], f"{where}.content")
    _check_numbers(body)
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str)
        or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        raise InvalidRequest("'stop' must be a string or up to 4 strings.", "stop")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false.", "stream")
    options = body.get("stream_options")
    if options is not None and not (
        isinstance(options, dict) and isinstance(options.get("include_usage", False), bool)
    ):
        raise InvalidRequest(
            "'stream_options' must be {\"include_usage\": bool}.", "stream_options"
        )
    if options is not None and not stream:
        raise InvalidRequest(
            "'stream_options' is only allowed when 'stream' is true.", "stream_options"
        )
    params = {k: v for k, v in body.items() if k in PASSED_ON and v is not None}
    include_usage = bool((options or {}).get("include_usage"))
    return model, messages, params, bool(stream), include_usage
