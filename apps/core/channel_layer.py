"""The channel layer: channels-redis's pub/sub layer, with the one method it lacks.

With ``RedisPubSubChannelLayer`` a consumer's channel is a Redis subscription, and the
layer unsubscribes only when a ``receive`` on it is cancelled. A consumer that stops while
handling a message from its channel (an API request ending on its final event) has no
``receive`` pending to cancel, so its subscription would stay for the life of the process.
``delete_channel`` ends it explicitly (the method the layer's own comments anticipate).
"""

from __future__ import annotations

from channels_redis.pubsub import RedisPubSubChannelLayer


class PubSubChannelLayer(RedisPubSubChannelLayer):
    async def delete_channel(self, channel: str) -> None:
        """Stop listening to ``channel`` (a name from ``new_channel``); idempotent."""
        layer = self._get_layer()
        if layer.channels.pop(channel, None) is not None:
            await layer._get_shard(channel).unsubscribe(channel)
