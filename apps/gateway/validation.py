"""Checks of a chat request, one set of rules for both doors: the API's
``POST /v1/chat/completions`` body, and the parameters the chat page sends with a prompt.
Each problem names the parameter (``param``) so SDKs can point at it."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from django.conf import settings

ROLES = {"system", "developer", "user", "assistant", "tool"}
# The parameter policy (README, "API"): the fields below are Barista's own or understood
# and checked here; every other top-level field is passed on to the backend untouched
# (vendor extras such as top_k, min_p, chat_template_kwargs), up to a count and a name
# length. A backend that refuses some field can be told to drop it
# (``Backend.drop_params``). What is passed on is part of the cache key, except what
# cannot change the answer (``apps.gateway.cache.IGNORED_PARAMS``).
OWN = {"model", "messages", "stream", "stream_options"}  # never passed on as sent
CHECKED = {
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "user",
    "metadata",
}
MAX_EXTRA_FIELDS = 64
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


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
    _integer(body, "n", 1, settings.BARISTA_API_MAX_N)
    _integer(body, "top_logprobs", 0, 20)
    _integer(body, "best_of", 1, settings.BARISTA_API_MAX_N)  # vLLM's and the legacy API's


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


def _flag(body: dict[str, Any], name: str) -> None:
    if body.get(name) is not None and not isinstance(body[name], bool):
        raise InvalidRequest(f"'{name}' must be true or false.", name)


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or len(tools) > 128:
            raise InvalidRequest("'tools' must be an array of at most 128 tools.", "tools")
        for index, tool in enumerate(tools):
            where = f"tools[{index}]"
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise InvalidRequest("Each tool must be an object with a 'type'.", where)
            if tool["type"] == "function":
                function = tool.get("function")
                if not isinstance(function, dict) or not _FUNCTION_NAME.match(
                    str(function.get("name", ""))
                ):
                    raise InvalidRequest(
                        "A function tool needs 'function.name': 1 to 64 letters, digits, "
                        "'_', '-' or '.'.",
                        f"{where}.function.name",
                    )
                parameters = function.get("parameters")
                if parameters is not None and not isinstance(parameters, dict):
                    raise InvalidRequest(
                        "'parameters' must be a JSON Schema object.", f"{where}.function.parameters"
                    )
    choice = body.get("tool_choice")
    if choice is not None and not (
        choice in ("none", "auto", "required")
        or (isinstance(choice, dict) and isinstance(choice.get("type"), str))
    ):
        raise InvalidRequest(
            "'tool_choice' must be 'none', 'auto', 'required' or an object naming a tool.",
            "tool_choice",
        )
    _flag(body, "parallel_tool_calls")
    _flag(body, "logprobs")
    if body.get("top_logprobs") is not None and not body.get("logprobs"):
        raise InvalidRequest("'top_logprobs' needs 'logprobs': true.", "top_logprobs")
    response_format = body.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, dict)
        and response_format.get("type") in ("text", "json_object", "json_schema")
    ):
        raise InvalidRequest(
            "'response_format' must be an object whose 'type' is text, json_object or json_schema.",
            "response_format",
        )
    _user(body)
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be an object.", "metadata")


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise InvalidRequest("Each message must be an object.", where)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequest(f"'role' must be one of {', '.join(sorted(ROLES))}.", f"{where}.role")
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list):
            raise InvalidRequest(
                "'tool_calls' belongs to an assistant message, as an array.", f"{where}.tool_calls"
            )
        for index, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise InvalidRequest(
                    "Each tool call needs 'function' with a 'name'.",
                    f"{where}.tool_calls[{index}]",
                )
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise InvalidRequest(
            "A tool message needs 'tool_call_id': the id of the call it answers.",
            f"{where}.tool_call_id",
        )
    if "content" not in message and not calls:
        raise InvalidRequest("A message needs 'content'.", f"{where}.content")
    if message.get("content") is not None:
        _content_text(message["content"], f"{where}.content")


# Passed-on fields that would undo what Barista does for everyone: refused, not passed on.
REFUSED = {
    "priority": "Barista orders requests itself (people take turns): 'priority' is not accepted.",
    "use_beam_search": "Beam search multiplies a request's cost past Barista's limit on "
    "choices: 'use_beam_search' is not accepted.",
}


def _check_extra_fields(body: dict[str, Any], known: Collection[str]) -> None:
    """Fields Barista does not know are passed on: a bounded number, with sane names."""
    for name, message in REFUSED.items():
        if body.get(name) not in (None, False, 0):
            raise InvalidRequest(message, name, "unsupported_parameter")
    extra = [name for name in body if name not in known]
    if len(extra) > MAX_EXTRA_FIELDS:
        raise InvalidRequest(
            f"Too many fields Barista does not know ({len(extra)}); the limit is "
            f"{MAX_EXTRA_FIELDS}.",
            extra[0],
            "too_many_parameters",
        )
    for name in extra:
        if not _NAME.match(name):
            raise InvalidRequest(
                "A field name must be 1 to 64 letters, digits, '_', '-' or '.', starting "
                "with a letter or '_'.",
                name[:64],
                "invalid_parameter",
            )


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", "model")
    return model


def _user(body: dict[str, Any]) -> None:
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise InvalidRequest("'user' must be a string of at most 256 characters.", "user")


MAX_EMBEDDING_INPUTS = 2048
# model, the inputs (texts or token arrays), what is passed on, encoding_format
EmbeddingsRequest = tuple[str, list[Any], dict[str, Any], str]


def _token_array(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )


def embeddings_request(body: Any) -> EmbeddingsRequest:
    """Validate ``POST /v1/embeddings``: OpenAI's inputs (a text, texts, a token array,
    token arrays), up to 2,048 of them."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    _check_extra_fields(body, {"model", "input", "encoding_format", "dimensions", "user"})
    model = _model(body)
    given = body.get("input")
    if isinstance(given, str) or _token_array(given):
        inputs = [given]
    elif isinstance(given, list) and given:
        inputs = given
    else:
        raise InvalidRequest("'input' must be a text, an array of texts, or token arrays.", "input")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(
            f"Too many inputs ({len(inputs)}); the limit is {MAX_EMBEDDING_INPUTS}.", "input"
        )
    for index, item in enumerate(inputs):
        if not ((isinstance(item, str) and item) or _token_array(item)):
            raise InvalidRequest(
                "Each input must be a non-empty text or an array of token ids.",
                f"input[{index}]",
            )
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    _integer(body, "dimensions", 1, 65_536)
    _user(body)
    params = {
        k: v
        for k, v in body.items()
        if k not in ("model", "input", "encoding_format") and v is not None
    }
    return model, inputs, params, encoding


def chat_request(body: Any) -> ChatRequest:
    """Validate; returns (model, messages, backend parameters, stream, include usage)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    _check_extra_fields(body, OWN | CHECKED)
    model = _model(body)
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
        _check_message(message, f"messages[{index}]")
    _check_numbers(body)
    _check_tools(body)
    stream, include_usage = _stop_and_stream(body)
    params = {k: v for k, v in body.items() if k not in OWN and v is not None}
    return model, messages, params, stream, include_usage


def _stop_and_stream(body: dict[str, Any]) -> tuple[bool, bool]:
    """Check ``stop``, ``stream`` and ``stream_options``: (stream, include usage)."""
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
    return bool(stream), bool((options or {}).get("include_usage"))


TEXT_OWN = {"model", "prompt", "stream", "stream_options"}
TEXT_CHECKED = {
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "user",
}


def text_request(body: Any) -> ChatRequest:
    """Validate ``POST /v1/completions`` (a legacy text completion) as a chat request
    whose one user message is the prompt: one prompt per request."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    _check_extra_fields(body, TEXT_OWN | TEXT_CHECKED)
    model = _model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequest(
            "'prompt' must be a non-empty text (Barista takes one prompt per request).",
            "prompt",
        )
    _check_numbers(body)
    _user(body)
    stream, include_usage = _stop_and_stream(body)
    params = {k: v for k, v in body.items() if k not in TEXT_OWN and v is not None}
    return model, [{"role": "user", "content": prompt}], params, stream, include_usage
