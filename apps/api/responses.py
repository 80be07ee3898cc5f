"""OpenAI's Responses API (``POST /v1/responses``), stateless, translated onto a chat
completion: the request becomes chat messages and parameters (``responses_request``),
and the answer's events become a ``response`` object or its typed stream events
(``ResponseWriter``, which the consumer drives exactly as it drives a chat ``Completion``).

What is translated: ``input`` (a text, or items: messages with text or image parts,
``function_call`` and ``function_call_output`` items), ``instructions`` (a system message
first), function ``tools`` and ``tool_choice``, ``max_output_tokens``, ``temperature``,
``top_p``, ``parallel_tool_calls``, ``user``, ``metadata``, ``reasoning.effort`` and
``text.format`` (JSON schema or object). Barista keeps no responses: a request that
names an earlier one (``previous_response_id``, ``conversation``) or asks to run in the
background is refused with a clear 400; so are tools other than functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from apps.api.http import sse
from apps.gateway import extras
from apps.gateway.validation import InvalidRequest, chat_request

# Fields with no meaning for a stateless gateway in front of chat backends: accepted and
# not passed on.
_IGNORED = {"store", "include", "truncation", "prompt_cache_key", "service_tier", "stream_options"}
_REFUSED = {
    "previous_response_id": "Barista keeps no responses: send the whole conversation as "
    "'input' instead of 'previous_response_id'.",
    "conversation": "Barista keeps no conversations for the Responses API: send the whole "
    "conversation as 'input'.",
    "background": "Barista does not run responses in the background.",
    "n": "A response has one output: 'n' is not accepted (use chat completions).",
}
_TRANSLATED = {
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "reasoning",
    "text",
    "stream",
}


def _text_parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest("'content' must be a text or a list of parts.", where)
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise InvalidRequest(
                "A content part must be input_text, output_text or input_image (with an "
                "image_url).",
                f"{where}[{index}]",
            )
    return parts


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidRequest("'instructions' must be a text.", "instructions")
        messages.append({"role": "system", "content": instructions})
    given = body.get("input")
    if isinstance(given, str):
        return [*messages, {"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        raise InvalidRequest("'input' must be a text or a non-empty list of items.", "input")
    for index, item in enumerate(given):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise InvalidRequest("Each input item must be an object.", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest(
                    "A message's 'role' must be user, assistant, system or developer.",
                    f"{where}.role",
                )
            messages.append({"role": role, "content": _text_parts(item.get("content"), where)})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            if not isinstance(call["id"], str) or not isinstance(item.get("name"), str):
                raise InvalidRequest("A function_call needs 'call_id' and 'name'.", where)
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and last.get("tool_calls") is not None:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(item.get("call_id"), str) or output is None:
                raise InvalidRequest("A function_call_output needs 'call_id' and 'output'.", where)
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item["call_id"],
                    "content": output if isinstance(output, str) else json.dumps(output),
                }
            )
        elif kind == "reasoning":
            continue  # a model's reasoning from an earlier turn: nothing a chat backend takes
        else:
            raise InvalidRequest(
                "Input items must be messages, function_call or function_call_output.",
                f"{where}.type",
            )
    return messages


def _tools(body: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequest("'tools' must be an array.", "tools")
        chat["tools"] = []
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise InvalidRequest(
                    "Barista supports function tools only.", f"tools[{index}].type"
                )
            function = {k: v for k, v in tool.items() if k != "type"}
            chat["tools"].append({"type": "function", "function": function})
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        chat["tool_choice"] = choice


def responses_request(body: Any) -> tuple[str, list[dict[str, Any]], dict[str, Any], bool, bool]:
    """A Responses API request as a chat request (checked by the chat rules)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    for name, message in _REFUSED.items():
        if body.get(name):
            raise InvalidRequest(message, name, "unsupported_parameter")
    chat: dict[str, Any] = {
        k: v for k, v in body.items() if k not in _TRANSLATED and k not in _IGNORED
    }
    chat["model"] = body.get("model")
    chat["messages"] = _messages(body)
    if body.get("stream") is not None:
        chat["stream"] = body["stream"]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort"):
        chat["reasoning_effort"] = reasoning["effort"]
    text_format = (
        (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    )
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        schema = {k: v for k, v in text_format.items() if k != "type"}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(text_format, dict) and text_format.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    _tools(body, chat)
    try:
        return chat_request(chat)
    except InvalidRequest as exc:
        # Name the Responses API's own field where the chat one differs.
        param = {"max_tokens": "max_output_tokens", "messages": "input"}.get(
            exc.param or "", exc.param
        )
        if param and param.startswith("messages["):
            param = "input"
        raise InvalidRequest(exc.message, param, exc.code) from None


@dataclass
class _Call:
    output_index: int
    item_id: str
    call_id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class ResponseWriter:
    """A chat answer's events as the Responses API's (see ``apps.api.completions``'s
    ``Completion`` for the interface the consumer drives)."""

    request_id: str
    model: str
    created: int
    include_usage: bool = False
    sent_chars: int = 0
    sent_pieces: int = 0
    cache_outcome: str = "miss"
    _sequence: int = 0
    _text: list[str] = field(default_factory=list)
    _message_index: int | None = None
    _calls: dict[int, _Call] = field(default_factory=dict)
    _outputs: int = 0

    @property
    def id(self) -> str:
        return f"resp_{self.request_id.replace('-', '')}"

    @property
    def message_id(self) -> str:
        return f"msg_{self.request_id.replace('-', '')}"

    def _event(self, kind: str, **fields: Any) -> bytes:
        self._sequence += 1
        return f"event: {kind}\n".encode() + sse(
            {"type": kind, "sequence_number": self._sequence, **fields}
        )

    def fresh_text(self, text: str, offset: int) -> str:
        fresh = text[max(0, self.sent_chars - offset) :] if offset <= self.sent_chars else ""
        self.sent_chars += len(fresh)
        return fresh

    def first_chunk(self) -> bytes:
        shell = self._response("in_progress", [], None)
        return self._event("response.created", response=shell) + self._event(
            "response.in_progress", response=shell
        )

    def chunk(self, delta: dict[str, Any], *_: Any, **__: Any) -> bytes:
        """Text of the answer: deltas of the one output message."""
        text = delta.get("content") or ""
        if not text:
            return b""
        out = b""
        if self._message_index is None:
            self._message_index = self._next_output()
            out += self._event(
                "response.output_item.added",
                output_index=self._message_index,
                item=self._message("in_progress", ""),
            )
            out += self._event(
                "response.content_part.added",
                item_id=self.message_id,
                output_index=self._message_index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            )
        self._text.append(text)
        return out + self._event(
            "response.output_text.delta",
            item_id=self.message_id,
            output_index=self._message_index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def piece_chunk(self, piece: dict[str, Any]) -> bytes:
        if piece.get("index"):
            return b""  # other choices: the Responses API has none
        delta = piece.get("delta") or {}
        out = self.chunk(delta)
        for call in delta.get("tool_calls") or []:
            out += self._call_delta(call)
        return out

    def _next_output(self) -> int:
        self._outputs += 1
        return self._outputs - 1

    def _call_delta(self, call: dict[str, Any]) -> bytes:
        index = call.get("index", len(self._calls))
        out = b""
        known = self._calls.get(index)
        function = call.get("function") or {}
        if known is None:
            known = self._calls[index] = _Call(
                self._next_output(),
                f"fc_{self.request_id.replace('-', '')[:20]}_{index}",
                call.get("id") or "",
                function.get("name") or "",
            )
            out += self._event(
                "response.output_item.added",
                output_index=known.output_index,
                item=self._function_call(known, "in_progress"),
            )
        else:  # a later fragment may carry what the first did not
            known.call_id = known.call_id or call.get("id") or ""
            known.name = known.name or function.get("name") or ""
        arguments = function.get("arguments") or ""
        if arguments:
            known.arguments += arguments
            out += self._event(
                "response.function_call_arguments.delta",
                item_id=known.item_id,
                output_index=known.output_index,
                delta=arguments,
            )
        return out

    def tail(self, done: dict[str, Any]) -> bytes:
        """Close every output item, then ``response.completed`` with the whole response."""
        out = b""
        if self._message_index is not None:
            text = "".join(self._text)
            part = {"type": "output_text", "text": text, "annotations": []}
            out += self._event(
                "response.output_text.done",
                item_id=self.message_id,
                output_index=self._message_index,
                content_index=0,
                text=text,
                logprobs=[],
            )
            out += self._event(
                "response.content_part.done",
                item_id=self.message_id,
                output_index=self._message_index,
                content_index=0,
                part=part,
            )
            out += self._event(
                "response.output_item.done",
                output_index=self._message_index,
                item=self._message("completed", text),
            )
        for call in self._calls.values():
            out += self._event(
                "response.function_call_arguments.done",
                item_id=call.item_id,
                output_index=call.output_index,
                name=call.name,
                arguments=call.arguments,
            )
            out += self._event(
                "response.output_item.done",
                output_index=call.output_index,
                item=self._function_call(call, "completed"),
            )
        document = self.document(done)
        return out + self._event("response.completed", response=document)

    def document(self, done: dict[str, Any]) -> dict[str, Any]:
        """The whole ``response`` object."""
        content = done.get("content") or ""
        extra = done.get("extra") or {}
        # Items in the order their stream announced them (message first when not streamed).
        items: list[tuple[int, dict[str, Any]]] = []
        if content:
            at = self._message_index if self._message_index is not None else -1
            items.append((at, self._message("completed", content)))
        streamed = [self._calls[index] for index in sorted(self._calls)]
        for position, call in enumerate(extra.get("tool_calls") or []):
            function = call.get("function") or {}
            known = streamed[position] if position < len(streamed) else None
            if known is None:
                known = _Call(
                    len(items) + position,
                    f"fc_{self.request_id.replace('-', '')[:20]}_{position}",
                )
            known.call_id = call.get("id") or known.call_id
            known.name = function.get("name") or known.name
            known.arguments = function.get("arguments") or ""
            items.append((known.output_index, self._function_call(known, "completed")))
        output = [item for _, item in sorted(items, key=lambda pair: pair[0])]
        usage = done.get("usage") or {}
        return self._response(
            "incomplete"
            if extras.finish_reason(extra, done.get("finish_reason")) == "length"
            else "completed",
            output,
            usage,
        )

    def _response(
        self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        found: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model,
            "output": output,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "metadata": {},
        }
        if usage is not None:
            given_in = usage.get("prompt_tokens") or 0
            given_out = usage.get("completion_tokens") or 0
            found["usage"] = {
                "input_tokens": given_in,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": given_out,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": given_in + given_out,
            }
        return found

    def _message(self, status: str, text: str) -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": []}] if text else []
        return {
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": content,
        }

    @staticmethod
    def _function_call(call: _Call, status: str) -> dict[str, Any]:
        return {
            "type": "function_call",
            "id": call.item_id,
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments if status == "completed" else "",
            "status": status,
        }
