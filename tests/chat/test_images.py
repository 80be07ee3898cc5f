"""Images attached to a chat prompt: only inline images of the kinds we take, bounded,
only on models that read them; sent with their prompt, shown in the thread."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest
from channels.db import database_sync_to_async

from apps.chat.images import ImageRefused, checked_images
from apps.chat.models import Message
from apps.gateway.models import PromptRequest
from tests.chat.test_consumer import connect

pytestmark = pytest.mark.django_db(transaction=True)


def png(width: int = 2, height: int = 2, noise: bool = False) -> bytes:
    """A real PNG (random pixels with ``noise``, so it does not compress)."""
    import os

    rows = b"".join(
        b"\x00" + (os.urandom(width * 3) if noise else b"\x80" * width * 3) for _ in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def test_only_inline_images_of_the_kinds_taken_within_the_bounds(settings):
    settings.BARISTA_CHAT_IMAGE_BYTES = 5_000
    settings.BARISTA_CHAT_IMAGES_BYTES = 8_000
    small = data_url(png())
    assert checked_images([small]) == [small]
    assert checked_images(None) == []
    refusals = {
        "a link": ["https://example.com/cat.png"],
        "not base64": ["data:image/png;base64,@@@@"],
        "a lie": [data_url(b"GIF89a...", "image/png")],
        "an svg": ["data:image/svg+xml;base64," + base64.b64encode(b"<svg/>").decode()],
        "too many": [small] * 4,
        "too big": [data_url(png(60, 60, noise=True))],
        "too much": [data_url(png(30, 30, noise=True))] * 3,
        "not a list": small,
    }
    for what, value in refusals.items():
        with pytest.raises(ImageRefused):
            checked_images(value)
            pytest.fail(what)


async def test_a_prompt_with_an_image_goes_only_to_a_model_that_reads_images(
    alice, start_simulator
):
    sim = start_simulator()
    await database_sync_to_async(sim.register)(alias="sim-chat", accepts_images=True)
    await database_sync_to_async(sim.register)(alias="sim-text", name="text-only")
    image = data_url(png())
    socket, connected, _ = await connect(alice)
    assert connected

    async def reply_to(frame):
        await socket.send_json_to(frame)
        while True:
            reply = await socket.receive_json_from(timeout=5)
            if reply["type"] in {"accepted", "error"}:
                return reply

    refused = await reply_to(
        {"type": "prompt", "model": "sim-text", "content": "look", "images": [image]}
    )
    assert refused["code"] == "images_not_read"
    refused = await reply_to(
        {"type": "prompt", "model": "sim-chat", "content": "look", "images": ["http://x/y.png"]}
    )
    assert refused["code"] == "invalid_images"
    assert not await database_sync_to_async(PromptRequest.objects.exists)()

    accepted = await reply_to(
        {"type": "prompt", "model": "sim-chat", "content": "what is this?", "images": [image]}
    )
    assert accepted["type"] == "accepted"
    row = await database_sync_to_async(PromptRequest.objects.get)()
    assert row.messages[-1]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": image}},
    ]
    message = await database_sync_to_async(Message.objects.get)()
    assert message.images == [image]
    await socket.disconnect()
