"""OpenAI's wire format for chat completions: the events of a request as a JSON body or
as Server-Sent Events chunks. Pure functions of the events; no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apps.api.http import SSE_DONE, sse


@dataclass
class Completion:
    """What an answer's documents share, and how much text a stream has sent."""

    request_id: str
    model: str
    created: int
    include_usage: bool = False
    sent_chars: int = 0
    cache_outcome: str = "miss"

    @property
    def id(self) -> str:
        return f"chatcmpl-{self.request_id}"

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
            }
        )

    def first_chunk(self) -> bytes:
        return self.chunk({"role": "assistant", "content": ""})

    def fresh_text(self, text: str, offset: int) -> str:
        """The part of a token batch not sent yet. Offsets make a repeated batch harmless."""
        fresh = text[max(0, self.sent_chars - offset) :] if offset <= self.sent_chars else ""
        self.sent_chars += len(fresh)
        return fresh

    def tail(self, done: dict[str, Any]) -> bytes:
        """The stream's last chunks: the finish reason, the usage if asked for, [DONE]."""
        tail = self.chunk({}, finish_reason(done))
        if self.include_usage:
            tail += sse(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage(done),
                }
            )
        return tail + SSE_DONE

    def document(self, done: dict[str, Any]) -> dict[str, Any]:
        """The whole answer as one ``chat.completion``."""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": done.get("content") or ""},
                    "finish_reason": finish_reason(done),
                    "logprobs": None,
                }
            ],
            "usage": usage(done),
        }


def finish_reason(done: dict[str, Any]) -> str:
    return str(done.get("finish_reason") or "stop")


def usage(done: dict[str, Any]) -> dict[str, int]:
    given = done.get("usage") or {}
    prompt = given.get("prompt_tokens") or 0
    completion = given.get("completion_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
