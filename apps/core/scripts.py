"""Lua scripts, registered once per Redis client.

``register_script`` makes Redis run a script by its SHA (``EVALSHA``) instead of receiving
and hashing its text on every call (``EVAL``); redis-py loads it again by itself when Redis
has forgotten it (a restart, ``SCRIPT FLUSH``). The script object it returns belongs to the
client that registered it, and clients come and go (one per event loop, see
``apps.core.clients``), so each ``LuaScript`` keeps one per client, dropped with the client.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import Redis
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError


class LuaScript:
    def __init__(self, text: str) -> None:
        self.text = text
        self._registered: weakref.WeakKeyDictionary[object, Any] = weakref.WeakKeyDictionary()

    def _on(self, client: Redis | aioredis.Redis) -> Any:
        script = self._registered.get(client)
        if script is None:
            script = self._registered[client] = client.register_script(self.text)
        return script

    def __call__(self, client: Redis, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """Run it on a synchronous client."""
        script: Script = self._on(client)
        return script(keys=keys, args=args)

    def into(self, pipe: Any, client: Redis, keys: Sequence[Any], args: Sequence[Any] = ()) -> None:
        """Queue a run into ``pipe``, a pipeline of the synchronous ``client``."""
        script: Script = self._on(client)
        script(keys=keys, args=args, client=pipe)

    def evalsha_into(
        self, pipe: Any, client: Redis, keys: Sequence[Any], args: Sequence[Any]
    ) -> None:
        """Queue a plain ``EVALSHA`` into ``pipe``: no ``SCRIPT EXISTS`` round trip, which
        redis-py's pipelines make first for the scripts ``into`` queues. Run the pipeline
        with ``raise_on_error=False`` and hand this command's reply to ``settle``."""
        script: Script = self._on(client)
        pipe.evalsha(script.sha, len(keys), *keys, *args)

    def settle(self, client: Redis, reply: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The reply of an ``evalsha_into``: when Redis did not know the script (restarted,
        ``SCRIPT FLUSH``) it ran nothing, so it is run again here, which loads it."""
        if isinstance(reply, NoScriptError):
            return self(client, keys, args)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def run(
        self, client: aioredis.Redis, keys: Sequence[Any], args: Sequence[Any] = ()
    ) -> Any:
        """Run it on an asyncio client."""
        script: AsyncScript = self._on(client)
        return await script(keys=keys, args=args)
