"""Answers as Markdown, rendered on the server and sanitized.

markdown-it-py (CommonMark, plus GitHub's tables and strikethrough) with raw HTML turned
off, so HTML in a prompt or an answer comes out as text; then nh3 (the Ammonia sanitizer)
keeps only the tags and attributes listed here, as a second lock. No images: they would
fetch from other hosts (the pages work offline, and an answer must not track its reader).
"""

from __future__ import annotations

import json
from typing import Any

import nh3
from markdown_it import MarkdownIt

_parser = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(
    ["table", "strikethrough"]
)

TAGS = {
    "p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td", "a",
}  # fmt: skip
ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "ol": {"start"}}


def _keep(tag: str, attribute: str, value: str) -> str | None:
    if attribute == "class":  # only a code block's language, as markdown-it writes it
        return value if tag == "code" and value.startswith("language-") else None
    return value


def render(text: str) -> str:
    """HTML for an answer, safe to put in a page as it is."""
    return nh3.clean(
        _parser.render(text),
        tags=TAGS,
        attributes=ATTRIBUTES,
        attribute_filter=_keep,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


def answer_source(content: str, extra: dict[str, Any] | None) -> str:
    """An answer's Markdown: its text, then each tool call the model made, readably (the
    function's name and its arguments as indented JSON)."""
    blocks = [content] if content else []
    for call in (extra or {}).get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = str(function.get("arguments") or "")
        try:
            arguments = json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
        except ValueError:
            pass  # not JSON: shown as it came
        name = function.get("name") or "?"
        blocks.append(f"**Tool call:** `{name}`\n\n```json\n{arguments}\n```")
    return "\n\n".join(blocks)
