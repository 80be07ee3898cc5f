from __future__ import annotations

from typing import Any

from django import template
from django.utils.safestring import SafeString, mark_safe

from apps.chat import markdown

register = template.Library()


@register.filter(name="answer")
def answer_filter(request: Any) -> SafeString:
    """Render a ledger row's answer: its text and any tool calls (``markdown.answer_source``)."""
    source = markdown.answer_source(request.answer, request.extra)
    return mark_safe(markdown.render(source))  # noqa: S308  # nosec B308 B703
