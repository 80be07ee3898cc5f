"""Images attached to a chat prompt: checked here, before anything is stored or sent.

Only images the page sends inline are taken — ``data:`` URLs of PNG, JPEG, WebP or GIF,
whose bytes are what they say — never a link: Barista fetches nothing from elsewhere on a
prompt's behalf. They are bounded in number and size (the page shrinks a photo to fit
before it sends it), so a prompt with images still fits in one socket message.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from django.conf import settings

# The first bytes of each kind we take: the file must be what its media type says.
SIGNATURES = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),  # and "WEBP" at offset 8, checked below
}
_DATA_URL = re.compile(r"data:(image/(?:png|jpeg|gif|webp));base64,([A-Za-z0-9+/=]+)")


class ImageRefused(ValueError):
    pass


def checked_images(value: Any) -> list[str]:
    """The images of a prompt frame as data URLs, or ``ImageRefused`` saying why not."""
    if value is None:
        return []
    most = settings.BARISTA_CHAT_IMAGES_PER_PROMPT
    if not isinstance(value, list) or len(value) > most:
        raise ImageRefused(f"Attach at most {most} images to a prompt.")
    images, total = [], 0
    for item in value:
        found = _DATA_URL.fullmatch(item) if isinstance(item, str) else None
        if found is None:
            raise ImageRefused(
                "An image must be a PNG, JPEG, WebP or GIF sent with the prompt "
                "(a data: URL); links to images elsewhere are not fetched."
            )
        kind, encoded = found.groups()
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ImageRefused("An image is not valid base64.") from None
        if not data.startswith(SIGNATURES[kind]) or (
            kind == "image/webp" and data[8:12] != b"WEBP"
        ):
            raise ImageRefused(f"An image is not the {kind} it says it is.")
        total += len(data)
        if (
            len(data) > settings.BARISTA_CHAT_IMAGE_BYTES
            or total > settings.BARISTA_CHAT_IMAGES_BYTES
        ):
            raise ImageRefused(
                f"Images are limited to {settings.BARISTA_CHAT_IMAGE_BYTES // 1000:,} kB each "
                f"and {settings.BARISTA_CHAT_IMAGES_BYTES // 1000:,} kB per prompt."
            )
        images.append(item)
    return images


def content_with(text: str, images: list[str]) -> str | list[dict[str, Any]]:
    """A user message's content: the text alone, or OpenAI's parts with the images."""
    if not images:
        return text
    return [
        {"type": "text", "text": text},
        *({"type": "image_url", "image_url": {"url": image}} for image in images),
    ]
