"""How deep a parsed JSON document goes, bounded right after parsing.

The parser accepts about a thousand levels; what comes after (the cache key's
``json.dumps``, the ledger's JSON field, msgpack on the channel layer) recurses too and
may not. So both doors refuse a document deeper than ``MAX_DEPTH`` as soon as it is
parsed, with a clear 400 — no real request (a tool's JSON Schema included) comes close.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MAX_DEPTH = 64


def too_deep(document: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``document`` nests lists and objects more than ``limit`` levels deep
    (iterative: it cannot itself run out of stack)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
