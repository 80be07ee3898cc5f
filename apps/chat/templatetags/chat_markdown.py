from __future__ import annotations

from django import template
from django.utils.safestring import SafeString, mark_safe

from apps.chat import markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    """Render an answer (sanitized by ``apps.chat.markdown``)."""
    # Sanitized by nh3 with an allow-list (apps.chat.markdown); tests/chat checks it.
    return mark_safe(markdown.render(text or ""))  # noqa: S308  # nosec B308 B703
