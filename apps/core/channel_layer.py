"""The channel layer: channels-redis's pub/sub layer, with the one method it lacks and a
receive loop that does not nap.

With ``RedisPubSubChannelLayer`` a consumer's channel is a Redis subscription, and the
layer unsubscribes only when a ``receive`` on it is cancelled. A consumer that stops while
handling a message from its channel (an API request ending on its final event) has no
``receive`` pending to cancel, so its subscription would stay for the life of the process.
``delete_channel`` ends it explicitly (the method the layer's own comments anticipate).

Each shard's receive loop, while nothing is subscribed, sleeps 0.1 s between looks. A
request subscribing during that sleep had its first frames — for a quick answer, all of
them — wait for the sleep to end: about 100 ms added to every request of a client asking
one at a time (measured: a cache miss's API round trip 101 ms against 13 ms in the worker).
``_Shard`` wakes its loop when a subscription is made.

``new_local_channel`` is a channel that only groups reach: a queue in this process with
no Redis subscription of its own. An API request listens to its request's group and to
nothing else, so its channel costs no SUBSCRIBE and UNSUBSCRIBE (about 0.25 ms of CPU and
two commands a request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)

logger = logging.getLogger(__name__)

IDLE_LOOK = 0.1  # the library's: seconds between looks while nothing is subscribed
LOCAL = "local."  # in the name of a channel only groups reach (new_local_channel)


class _Shard(RedisSingleShardConnection):
    def __init__(self, host: Any, channel_layer: Any) -> None:
        super().__init__(host, channel_layer)
        self._subscribed = asyncio.Event()

    async def subscribe(self, channel: str) -> None:
        await super().subscribe(channel)
        self._subscribed.set()

    async def _do_receiving(self) -> None:
        """The library's loop, but an idle wait ends as soon as something subscribes."""
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=IDLE_LOOK
                    )
                    self._receive_message(message)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._subscribed.wait(), IDLE_LOOK)
                    self._subscribed.clear()
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except BaseException:
                logger.exception("Unexpected exception in receive task")
                await asyncio.sleep(1)


class PubSubChannelLayer(RedisPubSubChannelLayer):
    def _get_layer(self) -> RedisPubSubLoopLayer:
        loop = asyncio.get_running_loop()
        layer: RedisPubSubLoopLayer | None = self._layers.get(loop)
        if layer is None:
            layer = super()._get_layer()
            # Fresh, not used yet: the same connections, with the loop that wakes.
            layer._shards = [_Shard(shard.host, layer) for shard in layer._shards]
        return layer

    async def new_local_channel(self) -> str:
        """A channel for this process's own use that only its groups reach: messages
        sent to the name itself go nowhere. For a consumer that listens to groups alone."""
        layer = self._get_layer()
        channel = f"{layer.prefix}{LOCAL}{uuid.uuid4().hex}"
        layer.channels[channel] = asyncio.Queue()
        return channel

    async def delete_channel(self, channel: str) -> None:
        """Stop listening to ``channel`` (a name from ``new_channel`` or
        ``new_local_channel``); idempotent."""
        layer = self._get_layer()
        if layer.channels.pop(channel, None) is not None and not _is_local(layer, channel):
            await layer._get_shard(channel).unsubscribe(channel)


def _is_local(layer: RedisPubSubLoopLayer, channel: str) -> bool:
    return channel.startswith(f"{layer.prefix}{LOCAL}")
