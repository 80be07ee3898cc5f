"""A leader's answer, sent as it streams to the identical requests following it
(``apps.gateway.coalescing``): each frame on the follower's own group, with its own owner."""

from __future__ import annotations

from channels.db import database_sync_to_async

from apps.core import clients
from apps.gateway import coalescing
from apps.gateway.delivery import push
from apps.gateway.models import PromptRequest


def owners_of(request_ids: list[str]) -> dict[str, int]:
    return {
        str(pk): owner
        for pk, owner in PromptRequest.objects.filter(id__in=request_ids).values_list(
            "id", "owner_id"
        )
    }


class Fanout:
    """Sends a leader's text to its followers: a follower first seen gets everything so
    far, then each new batch. Followers are re-read from Redis at every batch, so a late
    joiner catches up from the first token."""

    def __init__(self, leader: PromptRequest, rerun: bool) -> None:
        self.leader_id = str(leader.id)
        self.rerun = rerun  # followers may have been shown an earlier run's text
        self.sent: dict[str, int] = {}  # follower -> characters sent
        self.owners: dict[str, int] = {}

    async def owner_ids(self, request_ids: list[str]) -> dict[str, int]:
        missing = [i for i in request_ids if i not in self.owners]
        if missing:
            self.owners.update(await database_sync_to_async(owners_of)(missing))
        return {i: self.owners[i] for i in request_ids if i in self.owners}

    async def sync(self, text: str) -> None:
        followers = await coalescing.followers(clients.redis(), leader_id=self.leader_id)
        for follower, owner in (await self.owner_ids(followers)).items():
            sent = self.sent.get(follower)
            if sent is None:
                await push(
                    request_id=follower,
                    owner_id=owner,
                    event={
                        "event": "status",
                        "status": "running",
                        "restart": self.rerun,
                        "cache": "coalesced",
                    },
                )
                sent = 0
            if len(text) > sent:
                await push(
                    request_id=follower,
                    owner_id=owner,
                    event={"event": "tokens", "text": text[sent:], "offset": sent},
                )
                self.sent[follower] = len(text)

    async def restart(self) -> None:
        """The text sent so far will not be finished: followers drop it and wait again."""
        for follower, sent in self.sent.items():
            if sent:
                await push(
                    request_id=follower,
                    owner_id=self.owners[follower],
                    event={"event": "status", "status": "queued", "restart": True},
                )
        self.sent.clear()
