"""What an answer holds beyond the text of its first choice: tool calls, logprobs, the
other choices (``n``), and the finish reason.

The text of choice 0 takes the fast path everywhere (token batches, the ledger's
``answer``, the chat page). Everything else a backend streams arrives as *pieces* —
a choice of a chunk as the backend sent it (``{"index", "delta", "logprobs",
"finish_reason"}``) — which travel to the asker as they came (the API streams them
unchanged) and are gathered here into one ``extra`` document, stored with the answer in
the ledger and the cache::

    {"finish_reason": "tool_calls",
     "tool_calls": [{"id", "type", "function": {"name", "arguments"}}],
     "logprobs": {"content": [...]},
     "choices": [{"index": 1, "content", "tool_calls", "logprobs", "finish_reason"}]}

(keys only when there is something in them). ``pieces_of`` turns it back into pieces,
so an answer replayed from the cache or the ledger streams the same tool calls.
"""

from __future__ import annotations

from typing import Any

Piece = dict[str, Any]
Extra = dict[str, Any]

# Delta fields that are the stream's own framing, not the answer.
_FRAMING = frozenset({"role", "content"})


class _Choice:
    __slots__ = ("content", "finish_reason", "logprobs", "other", "tool_calls")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: dict[str, list[Any]] = {}
        self.other: dict[str, Any] = {}  # e.g. reasoning_content, refusal
        self.finish_reason: str | None = None

    def add(self, piece: Piece, *, with_content: bool) -> None:
        delta = piece.get("delta") or {}
        for key, value in delta.items():
            if key == "content":
                if with_content and isinstance(value, str):
                    self.content.append(value)
            elif key == "tool_calls" and isinstance(value, list):
                for call in value:
                    if isinstance(call, dict):
                        self._merge_call(call)
            elif key not in _FRAMING and value is not None:
                if isinstance(value, str) and isinstance(self.other.get(key), str):
                    self.other[key] += value
                else:
                    self.other[key] = value
        logprobs = piece.get("logprobs")
        if isinstance(logprobs, dict):
            for key, entries in logprobs.items():
                if isinstance(entries, list):
                    self.logprobs.setdefault(key, []).extend(entries)
        if piece.get("finish_reason"):
            self.finish_reason = str(piece["finish_reason"])

    def _merge_call(self, call: dict[str, Any]) -> None:
        index = call.get("index")
        if not isinstance(index, int):
            # A fragment without an index continues the last call (or starts the first).
            index = max(self.tool_calls) if self.tool_calls else 0
        whole = self.tool_calls.setdefault(
            index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if call.get("id"):
            whole["id"] = call["id"]
        if call.get("type"):
            whole["type"] = call["type"]
        function = call.get("function") or {}
        if isinstance(function, dict):
            whole["function"]["name"] += function.get("name") or ""
            whole["function"]["arguments"] += function.get("arguments") or ""

    def document(self) -> dict[str, Any]:
        found: dict[str, Any] = dict(self.other)
        if self.tool_calls:
            found["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        if self.logprobs:
            found["logprobs"] = self.logprobs
        return found


class Extras:
    """Gathers a stream's pieces (see the module's docstring)."""

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}

    def add(self, piece: Piece) -> None:
        index = piece.get("index") or 0
        choice = self._choices.setdefault(index, _Choice())
        # Choice 0's text is the answer itself, gathered apart.
        choice.add(piece, with_content=index != 0)

    def document(self, finish_reason: str | None) -> Extra:
        """The ``extra`` of the answer: {} for a plain text answer."""
        first = self._choices.get(0)
        extra: Extra = first.document() if first else {}
        others = []
        for index in sorted(i for i in self._choices if i):
            choice = self._choices[index]
            others.append(
                {
                    "index": index,
                    "content": "".join(choice.content),
                    **choice.document(),
                    "finish_reason": choice.finish_reason or "stop",
                }
            )
        if others:
            extra["choices"] = others
        if extra or (finish_reason and finish_reason != "stop"):
            extra["finish_reason"] = finish_reason or "stop"
        return extra


def finish_reason(extra: Extra | None, fallback: str | None = None) -> str:
    return str((extra or {}).get("finish_reason") or fallback or "stop")


def message(content: str, extra: Extra | None) -> dict[str, Any]:
    """Choice 0 as a chat ``message``."""
    extra = extra or {}
    found: dict[str, Any] = {"role": "assistant", "content": content}
    if extra.get("tool_calls"):
        found["tool_calls"] = extra["tool_calls"]
        found["content"] = content or None
    for key, value in extra.items():
        if key not in ("tool_calls", "logprobs", "choices", "finish_reason"):
            found[key] = value
    return found


def other_choices(extra: Extra | None) -> list[dict[str, Any]]:
    """Choices 1… as chat ``choices`` entries."""
    found = []
    for choice in (extra or {}).get("choices") or []:
        body = {k: v for k, v in choice.items() if k not in ("index", "finish_reason")}
        logprobs = body.pop("logprobs", None)
        found.append(
            {
                "index": choice["index"],
                "message": message(body.pop("content", ""), body),
                "finish_reason": choice.get("finish_reason") or "stop",
                "logprobs": logprobs,
            }
        )
    return found


def pieces_of(extra: Extra | None) -> list[Piece]:
    """The pieces that stream ``extra`` for an answer whose text of choice 0 was sent
    apart (a replay from the cache or the ledger, a follower of a coalesced request):
    each tool call whole, the logprobs in one piece, each other choice whole."""
    extra = extra or {}
    pieces: list[Piece] = []

    def of(index: int, body: dict[str, Any], content: str | None) -> None:
        delta: dict[str, Any] = {}
        if content:
            delta["content"] = content
        for key, value in body.items():
            if key not in (
                "tool_calls",
                "logprobs",
                "choices",
                "finish_reason",
                "index",
                "content",
            ):
                delta[key] = value
        if delta or index:
            pieces.append({"index": index, "delta": {"role": "assistant", **delta}})
        for position, call in enumerate(body.get("tool_calls") or []):
            pieces.append({"index": index, "delta": {"tool_calls": [{"index": position, **call}]}})
        if body.get("logprobs"):
            pieces.append({"index": index, "delta": {}, "logprobs": body["logprobs"]})

    of(0, extra, None)
    for choice in extra.get("choices") or []:
        of(choice["index"], choice, choice.get("content") or "")
    return pieces


def finish_reasons(extra: Extra | None, fallback: str | None = None) -> dict[int, str]:
    """Each choice's finish reason, by index."""
    reasons = {0: finish_reason(extra, fallback)}
    for choice in (extra or {}).get("choices") or []:
        reasons[choice["index"]] = choice.get("finish_reason") or "stop"
    return reasons
