"""The wire format's bookkeeping, without servers: which streamed pieces a client has not
seen yet, and how pieces gather into the answer's tool calls."""

from __future__ import annotations

from typing import Any

import pytest

from apps.api.completions import Completion, fresh_parts
from apps.backends.providers.openai_compat import _check_piece
from apps.gateway.extras import Extras


def text(content: str) -> dict[str, Any]:
    return {"index": 0, "delta": {"content": content}}


CALL = {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}


def test_pieces_are_sent_once_and_a_lost_batch_does_not_stop_the_stream():
    writer = Completion("r", "m", 0)
    assert fresh_parts(writer, [text("Hel"), text("lo")], 0, 0) == [text("Hel"), text("lo")]
    assert fresh_parts(writer, [text("Hel"), text("lo")], 0, 0) == []  # a repeated batch
    # The batch with pieces 2-3 (" wor", "ld") was lost: the next one still goes out.
    assert fresh_parts(writer, [text("!"), CALL], 4, 11) == [CALL]  # its text waits for the end
    assert (writer.sent_chars, writer.sent_pieces) == (5, 6)


def test_a_run_that_streams_pieces_after_plain_text_repeats_none_of_the_text():
    """A follower was sent 'Hello wo' as plain text; its leader failed, it took over, and
    its own run streams pieces from the start: only what it had not seen goes out."""
    writer = Completion("r", "m", 0)
    writer.fresh_text("Hello wo", 0)
    pieces = [text("Hello"), text(" world"), CALL]
    assert fresh_parts(writer, pieces, 0, 0) == [text("rld"), CALL]
    assert writer.sent_chars == len("Hello world")


def test_fragments_gather_into_calls_and_a_fragment_without_index_continues_the_last():
    extras = Extras()
    extras.add(
        {
            "index": 0,
            "delta": {
                "tool_calls": [
                    {"index": 0, "id": "c1", "type": "function", "function": {"name": "f"}}
                ]
            },
        }
    )
    extras.add({"index": 0, "delta": {"tool_calls": [{"function": {"arguments": '{"a"'}}]}})
    extras.add(
        {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}}
    )
    document = extras.document("tool_calls")
    assert document["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
    assert document["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    "index, delta, logprobs",
    [
        ("1", {}, None),
        (0, {"tool_calls": {"index": 0}}, None),
        (0, {"tool_calls": [{"index": "0"}]}, None),
        (0, {"tool_calls": [{"index": 0, "function": {"arguments": {"a": 1}}}]}, None),
        (0, {"content": "x"}, ["not", "an", "object"]),
    ],
)
def test_a_malformed_piece_is_a_malformed_stream_not_a_crash_later(index, delta, logprobs):
    with pytest.raises(ValueError):
        _check_piece(index, delta, logprobs)
