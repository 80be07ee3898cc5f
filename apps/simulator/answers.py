"""What the simulated model says: deterministic for a request, so tests can compare what
Barista returns with what the backend sent.

* **Text**: quotes the last user message verbatim inside a longer reply.
* **Tool calls**: when the request offers ``tools`` (and ``tool_choice`` is not "none")
  and the last message is the person's, the model calls one tool — the one
  ``tool_choice`` names, else the first — with arguments made from its JSON schema.
  After a ``tool`` message it answers in text, quoting the tool's result.
* **Structured output**: ``response_format`` ``json_schema`` gets a JSON object made
  from the schema, ``json_object`` a small object.
* **logprobs**, **n** choices, **embeddings** (a unit vector from a hash of the text) and
  **text completions** (the legacy ``/v1/completions``).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import random
import re
import struct
from typing import Any

_SENTENCES = [
    "The barista steams the milk while the grinder hums.",
    "Orders move along the counter in the order they arrived.",
    "Every cup is made once and served warm to the person who asked for it.",
    "When the same order comes twice, the second cup is poured from the first.",
    "A long line is calmer when everyone can see their place in it.",
    "Three espresso machines share the work, and the fastest takes the most.",
    "If one machine sputters, the others carry on until it is fixed.",
    "This reply comes from a simulator, so its content is only an example.",
    "Good coffee, like a good answer, is worth a short wait.",
    "Nothing ordered is forgotten, even when the shop is busy.",
]
# Answered (after the quote) when a prompt mentions Markdown.
MARKDOWN_SAMPLE = """

## Brewing notes

- **Grind** fine for espresso
- *Steam* the milk to 65 °C

| drink | shots |
|---|---|
| cortado | 2 |

```python
def brew(shots: int) -> str:
    return "espresso " * shots
```

"""
TOKEN_RE = re.compile(r"\S+\s*|\s+")
ARGUMENT_PIECE = 7  # characters of a tool call's arguments per streamed chunk
EMBEDDING_DIMENSIONS = 64
MAX_CHOICES = 16


def text_of(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text"
        )
    return "" if content is None else str(content)


def last_user_message(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return text_of(message.get("content", ""))
    return ""


def _images_in_last_user_message(messages: list[dict[str, Any]]) -> list[str]:
    """The media types of the image parts the last user message carries."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if not isinstance(content, list):
                return []
            kinds = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    url = str((part.get("image_url") or {}).get("url", ""))
                    kinds.append(url[5:].split(";", 1)[0] if url.startswith("data:") else "a link")
            return kinds
    return []


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(text_of(m.get("content")).split()) + 4 for m in messages if isinstance(m, dict))


def _rng(request: dict[str, Any], *salt: Any) -> random.Random:
    digest = hashlib.sha256(
        json.dumps(
            [{k: request.get(k) for k in ("model", "messages", "prompt", "temperature", "seed")}]
            + list(salt),
            sort_keys=True,
            default=str,
        ).encode()
    ).digest()
    return random.Random(digest)


def compose_tokens(
    request: dict[str, Any], length: int, opening: str, choice: int = 0
) -> list[str]:
    rng = _rng(request, choice)
    tokens = TOKEN_RE.findall(opening)
    target = max(length, len(tokens) + 8)
    while len(tokens) < target:
        tokens += TOKEN_RE.findall(rng.choice(_SENTENCES) + " ")
    tokens = tokens[:target]
    tokens[-1] = tokens[-1].rstrip()
    return tokens


def compose_answer(request: dict[str, Any], length: int, choice: int = 0) -> list[str]:
    """The reply's tokens: deterministic for the request, quoting the last user message
    (or, after a tool's result, that result)."""
    messages = request.get("messages") or []
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        opening = f'The tool returned: "{text_of(messages[-1].get("content"))}". '
    else:
        quoted = last_user_message(messages)
        opening = f'You said: "{quoted}". Here is a simulated answer. '
        images = _images_in_last_user_message(messages)
        if images:
            kinds = ", ".join(images)
            opening += f"I see {len(images)} image{'s' if len(images) > 1 else ''} ({kinds}). "
        if "markdown" in quoted.lower():  # something for the chat page to render
            opening += MARKDOWN_SAMPLE
    if choice:
        opening = f"(Choice {choice + 1}.) " + opening
    return compose_tokens(request, length, opening, choice)


def value_for(schema: Any, hint: str) -> Any:
    """A value that fits a JSON schema (the common subset: types, enums, objects)."""
    if not isinstance(schema, dict):
        return hint
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return value_for(schema[key][0], hint)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {name: value_for(sub, hint) for name, sub in properties.items()}
    if kind == "array":
        return [value_for(schema.get("items"), hint)]
    if kind == "integer":
        return 3
    if kind == "number":
        return 4.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return hint


@dataclasses.dataclass
class Choice:
    """One choice of an answer, as the chunks a stream sends (one delta each)."""

    index: int
    deltas: list[dict[str, Any]]
    finish_reason: str
    logprobs: list[list[dict[str, Any]]] | None  # per delta, when asked
    completion_tokens: int

    def message(self) -> dict[str, Any]:
        content = "".join(d.get("content") or "" for d in self.deltas)
        message: dict[str, Any] = {"role": "assistant", "content": content or None}
        calls: dict[int, dict[str, Any]] = {}
        for delta in self.deltas:
            for call in delta.get("tool_calls") or []:
                whole = calls.setdefault(
                    call["index"],
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                whole["id"] = call.get("id") or whole["id"]
                function = call.get("function") or {}
                whole["function"]["name"] += function.get("name") or ""
                whole["function"]["arguments"] += function.get("arguments") or ""
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        elif message["content"] is None:
            message["content"] = ""
        return message

    def all_logprobs(self) -> dict[str, Any] | None:
        if self.logprobs is None:
            return None
        return {
            "content": [entry for entries in self.logprobs for entry in entries],
            "refusal": None,
        }


def _tool_to_call(request: dict[str, Any]) -> dict[str, Any] | None:
    tools = [t for t in request.get("tools") or [] if isinstance(t, dict) and t.get("function")]
    choice = request.get("tool_choice")
    messages = request.get("messages") or []
    if not tools or choice == "none" or not messages or messages[-1].get("role") == "tool":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t["function"].get("name") == wanted), tools[0])
    return tools[0]


def _logprobs_for(token: str, rng: random.Random, top: int) -> list[dict[str, Any]]:
    logprob = -round(rng.random() * 2, 4)
    alternatives = [
        {"token": alt, "logprob": round(logprob - 0.5 * (i + 1), 4), "bytes": list(alt.encode())}
        for i, alt in enumerate([token.upper(), token + "!", "the", "a", "coffee"][:top])
    ]
    return [
        {
            "token": token,
            "logprob": logprob,
            "bytes": list(token.encode()),
            "top_logprobs": alternatives,
        }
    ]


def plan_chat(request: dict[str, Any], length: int) -> list[Choice]:
    """The answer to a chat completion request: its choices, chunk by chunk."""
    n = request.get("n") or 1
    n = max(1, min(int(n) if isinstance(n, int) else 1, MAX_CHOICES))
    limit = request.get("max_tokens") or request.get("max_completion_tokens")
    want_logprobs = bool(request.get("logprobs"))
    top = request.get("top_logprobs") or 0
    tool = _tool_to_call(request)
    format_ = request.get("response_format") or {}
    choices = []
    for index in range(n):
        rng = _rng(request, "logprobs", index)
        finish = "stop"
        if tool is not None:
            function = tool["function"]
            hint = last_user_message(request.get("messages") or [])
            arguments = json.dumps(value_for(function.get("parameters"), hint))
            call_id = "call_" + hashlib.sha256(f"{arguments}{index}".encode()).hexdigest()[:24]
            deltas: list[dict[str, Any]] = [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": function.get("name", ""), "arguments": ""},
                        }
                    ],
                }
            ]
            for start in range(0, len(arguments), ARGUMENT_PIECE):
                piece = arguments[start : start + ARGUMENT_PIECE]
                deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            choices.append(Choice(index, deltas, "tool_calls", None, len(deltas)))
            continue
        if format_.get("type") == "json_schema":
            schema = (format_.get("json_schema") or {}).get("schema")
            hint = last_user_message(request.get("messages") or [])
            tokens = TOKEN_RE.findall(json.dumps(value_for(schema, hint)))
        elif format_.get("type") == "json_object":
            quoted = last_user_message(request.get("messages") or [])
            tokens = TOKEN_RE.findall(json.dumps({"answer": f"You said: {quoted}"}))
        else:
            tokens = compose_answer(request, length, index)
            if isinstance(limit, int) and 0 < limit < len(tokens):
                tokens, finish = tokens[:limit], "length"
        deltas = [{"content": token} for token in tokens]
        logprobs = [_logprobs_for(t, rng, top) for t in tokens] if want_logprobs else None
        choices.append(Choice(index, deltas, finish, logprobs, len(tokens)))
    return choices


def plan_text_completion(request: dict[str, Any], length: int) -> tuple[list[str], str]:
    """A legacy text completion: the tokens that continue the prompt, and why it ends."""
    prompt = request.get("prompt")
    text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt or []))
    tokens = compose_tokens(request, length, f' … and then "{text[-60:]}" went on. ')
    limit = request.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < len(tokens):
        return tokens[:limit], "length"
    return tokens, "stop"


def embedding(text: str, dimensions: int) -> list[float]:
    """A unit vector from a hash of the text: equal texts, equal vectors."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    vector = [rng.gauss(0, 1) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [round(v / norm, 6) for v in vector]


def embedding_inputs(value: Any) -> list[str] | None:
    """The texts of an embeddings request (token arrays are read as their numbers)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [" ".join(map(str, value))]
    if isinstance(value, list) and value:
        texts = []
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list) and all(isinstance(v, int) for v in item):
                texts.append(" ".join(map(str, item)))
            else:
                return None
        return texts
    return None


def encode_vector(vector: list[float], encoding: str | None) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
