"""OpenAI's wire format for chat completions: the events of a request as a JSON body or
as Server-Sent Events chunks. Pure functions of the events; no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from apps.api.http import SSE_DONE, sse
from apps.gateway import extras


@dataclass
class Completion:
    """What an answer's documents share, and how much of it a stream has sent."""

    request_id: str
    model: str
    created: int
    include_usage: bool = False
    sent_chars: int = 0
    sent_pieces: int = 0  # pieces (apps.gateway.extras) streamed as the backend sent them
    cache_outcome: str = "miss"

    ID_PREFIX = "chatcmpl-"
    CHUNK_OBJECT = "chat.completion.chunk"

    @property
    def id(self) -> str:
        return f"{self.ID_PREFIX}{self.request_id}"

    def _chunk(self, choices: list[dict[str, Any]], **more: Any) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": self.CHUNK_OBJECT,
                "created": self.created,
                "model": self.model,
                "choices": choices,
                **more,
            }
        )

    def chunk(
        self, delta: dict[str, Any], finish: str | None = None, index: int = 0, logprobs: Any = None
    ) -> bytes:
        return self._chunk([self._choice(delta, finish, index, logprobs)])

    def _choice(
        self, delta: dict[str, Any], finish: str | None, index: int, logprobs: Any
    ) -> dict[str, Any]:
        return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}

    def piece_chunk(self, piece: dict[str, Any]) -> bytes:
        """A piece as the backend sent it (its finish reason comes in the tail)."""
        return self.chunk(
            piece.get("delta") or {}, index=piece.get("index") or 0, logprobs=piece.get("logprobs")
        )

    def first_chunk(self) -> bytes:
        return self.chunk({"role": "assistant", "content": ""})

    def fresh_text(self, text: str, offset: int) -> str:
        """The part of a token batch not sent yet. Offsets make a repeated batch harmless."""
        fresh = text[max(0, self.sent_chars - offset) :] if offset <= self.sent_chars else ""
        self.sent_chars += len(fresh)
        return fresh

    def tail(self, done: dict[str, Any]) -> bytes:
        """The stream's last chunks: each choice's finish reason, the usage if asked for,
        [DONE]."""
        reasons = extras.finish_reasons(done.get("extra"), done.get("finish_reason"))
        tail = b"".join(self.chunk({}, reason, index) for index, reason in sorted(reasons.items()))
        if self.include_usage:
            tail += self._chunk([], usage=usage(done))
        return tail + SSE_DONE

    def document(self, done: dict[str, Any]) -> dict[str, Any]:
        """The whole answer as one ``chat.completion``."""
        extra = done.get("extra") or {}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": extras.message(done.get("content") or "", extra),
                    "finish_reason": finish_reason(done),
                    "logprobs": extra.get("logprobs"),
                },
                *extras.other_choices(extra),
            ],
            "usage": usage(done),
        }


class TextCompletion(Completion):
    """A legacy ``text_completion`` (``POST /v1/completions``): the same events, each
    choice's text as ``text``."""

    ID_PREFIX = "cmpl-"
    CHUNK_OBJECT = "text_completion"

    def _choice(
        self, delta: dict[str, Any], finish: str | None, index: int, logprobs: Any
    ) -> dict[str, Any]:
        text = delta.get("content") or ""
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}

    def first_chunk(self) -> bytes:
        return b""  # no role to announce

    def document(self, done: dict[str, Any]) -> dict[str, Any]:
        extra = done.get("extra") or {}
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "text": done.get("content") or "",
                    "index": 0,
                    "logprobs": extra.get("logprobs"),
                    "finish_reason": finish_reason(done),
                },
                *(
                    {
                        "text": choice.get("content") or "",
                        "index": choice["index"],
                        "logprobs": choice.get("logprobs"),
                        "finish_reason": choice.get("finish_reason") or "stop",
                    }
                    for choice in extra.get("choices") or []
                ),
            ],
            "usage": usage(done),
        }


class Written(Protocol):
    sent_chars: int
    sent_pieces: int


def fresh_parts(
    writer: Written, pieces: list[dict[str, Any]], seq: int, offset: int
) -> list[dict[str, Any]]:
    """What of a batch of pieces (``seq``: how many came before it; ``offset``: where its
    text of choice 0 starts) was not sent yet. Text of choice 0 is trimmed by its offset,
    like plain text — so a re-run that streams pieces after a plain run (a follower that
    took over) repeats none of it — and the rest by ``seq``; a batch that was lost is
    skipped, not waited for (its text still comes with the final answer)."""
    fresh = []
    position = offset
    for number, piece in enumerate(pieces, start=seq):
        delta = dict(piece.get("delta") or {})
        if not piece.get("index") and isinstance(delta.get("content"), str):
            text, start = delta.pop("content"), position
            position += len(text)
            if start <= writer.sent_chars < position:
                delta["content"] = text[writer.sent_chars - start :]
                writer.sent_chars = position
        if number < writer.sent_pieces:  # sent before: only text it had not covered
            if delta.get("content"):
                fresh.append({"index": 0, "delta": {"content": delta["content"]}})
            continue
        if delta or piece.get("logprobs") or piece.get("index"):
            fresh.append({**piece, "delta": delta})
    writer.sent_pieces = max(writer.sent_pieces, seq + len(pieces))
    return fresh


def finish_reason(done: dict[str, Any]) -> str:
    return extras.finish_reason(done.get("extra"), done.get("finish_reason"))


def usage(done: dict[str, Any]) -> dict[str, int]:
    given = done.get("usage") or {}
    prompt = given.get("prompt_tokens") or 0
    completion = given.get("completion_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
