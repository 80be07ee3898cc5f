"""A parsed JSON document's shape, checked right after parsing, on both doors.

* Depth: the parser accepts about a thousand levels; what comes after (the cache key's
  ``json.dumps``, the ledger's JSON field, msgpack on the channel layer) recurses too and
  may not. A document deeper than ``MAX_DEPTH`` is refused with a clear 400 — no real
  request (a tool's JSON Schema included) comes close.
* NUL characters (``\\u0000``) in any text or key: PostgreSQL stores neither in ``text``
  nor in ``jsonb``, so such a request would fail on writing its ledger row (a 500), and
  no model needs one.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 64
TOO_DEEP = "too_deep"
NUL = "nul"


def shape_refusal(document: Any, limit: int = MAX_DEPTH) -> str | None:
    """``TOO_DEEP`` if ``document`` nests lists and objects more than ``limit`` levels,
    ``NUL`` if a string or key in it holds a NUL character, else None (iterative: it
    cannot itself run out of stack)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return NUL
            continue
        if isinstance(value, dict):
            if any("\x00" in key for key in value):
                return NUL
            children = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return TOO_DEEP
        stack.extend((child, depth + 1) for child in children)
    return None
