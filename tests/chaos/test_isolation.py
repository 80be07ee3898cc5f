"""One person never sees another's answer — checked under the conditions that broke a large
AI chat service: many people at once, about 30 % of requests cancelled or hung up at
random moments, and a slow link to Redis (a TCP proxy adding delay to every chunk).

100 people, half on the chat websocket, half on the API, each prompt carrying that
person's own canary word. Every frame each person receives is checked: it must name only
that person's requests and carry no other person's canary."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from typing import Any

import httpx
import pytest
import websockets
from django.conf import settings
from django.contrib.auth.models import User

from apps.api.services import api_key_create
from apps.gateway.models import PromptRequest
from tests.chaos.conftest import record
from tests.chaos.proxy import TcpProxy
from tests.conftest import make_user, session_cookie, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("lifted_limits")]

PEOPLE = 100
PROMPTS_EACH = 3
CANCEL_SHARE = 0.3
# Seconds added to every chunk between Barista and Redis, each way: enough to widen the
# windows where a cancellation can leave a reply unread on a pooled connection.
DELAY = (0.0003, 0.002)
CANARY = re.compile(r"canary-p(\d{3})-")
ENV = {
    "BARISTA_USER_MAX_PENDING": "1000",
    "BARISTA_USER_RATE_PER_MINUTE": "1000",
}


class Tally:
    def __init__(self) -> None:
        self.frames = 0
        self.mismatches: list[str] = []
        self.outcomes: Counter[str] = Counter()

    def check(self, person: int, text: str, where: str) -> None:
        self.frames += 1
        for found in CANARY.findall(text):
            if int(found) != person:
                self.mismatches.append(f"person {person} got person {found}'s text via {where}")


async def chat_person(person: int, url: str, cookie: str, rng: random.Random, tally: Tally) -> None:
    ws_url = url.replace("http://", "ws://") + "/ws/chat/"
    mine: set[str] = set()
    seen: list[tuple[str, str, object]] = []
    async with websockets.connect(
        ws_url, additional_headers={"Cookie": cookie, "Origin": url}
    ) as socket:
        for index in range(PROMPTS_EACH):
            content = f"canary-p{person:03d}-{index} tell me something"
            frame = {"type": "prompt", "model": "sim-chat", "content": content, "fresh": True}
            await socket.send(json.dumps(frame))
            cancel_at = (
                time.monotonic() + rng.uniform(0.0, 1.2) if rng.random() < CANCEL_SHARE else None
            )
            request_id = None
            while True:
                timeout = 30.0 if cancel_at is None else max(0.01, cancel_at - time.monotonic())
                try:
                    reply = json.loads(await asyncio.wait_for(socket.recv(), timeout))
                except TimeoutError:
                    if cancel_at is not None and request_id is not None:
                        await socket.send(json.dumps({"type": "cancel", "request": request_id}))
                        cancel_at = None
                        continue
                    if cancel_at is not None:
                        cancel_at = None  # not accepted yet: cancel once it is
                        continue
                    raise AssertionError(
                        f"person {person}: no frame for 30 s; request {request_id}, "
                        f"frames so far {seen[-6:]}"
                    ) from None
                seen.append((reply["type"], reply.get("request", "")[:8], reply.get("offset")))
                if reply.get("request") and reply["type"] == "accepted":
                    request_id = reply["request"]
                    mine.add(request_id)
                if reply.get("request") and reply["request"] not in mine:
                    tally.mismatches.append(f"person {person} got a frame for someone else")
                tally.check(person, json.dumps(reply), f"chat {reply['type']}")
                if reply["type"] in {"done", "failed", "cancelled", "error"}:
                    tally.outcomes[f"chat {reply['type']}"] += 1
                    break


async def api_person(
    person: int, url: str, key: str, rng: random.Random, tally: Tally, client: httpx.AsyncClient
) -> None:
    for index in range(PROMPTS_EACH):
        body = {
            "model": "sim-chat",
            "stream": True,
            "messages": [{"role": "user", "content": f"canary-p{person:03d}-{index} go"}],
        }
        hang_up_after = rng.uniform(0.0, 1.2) if rng.random() < CANCEL_SHARE else None
        started = time.monotonic()
        async with client.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"},
        ) as response:
            tally.check(person, json.dumps(dict(response.headers)), "api headers")
            outcome = f"api {response.status_code}"
            async for line in response.aiter_lines():
                if line:
                    tally.check(person, line, "api stream")
                if hang_up_after is not None and time.monotonic() - started > hang_up_after:
                    outcome = "api hung up"
                    break
            tally.outcomes[outcome] += 1


async def crowd(url: str, people: list[tuple[int, str, str]], tally: Tally) -> None:
    rng = random.Random(42)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as client:
        tasks = []
        for person, kind, credential in people:
            person_rng = random.Random(rng.random())
            if kind == "chat":
                tasks.append(chat_person(person, url, credential, person_rng, tally))
            else:
                tasks.append(api_person(person, url, credential, person_rng, tally, client))
        await asyncio.gather(*tasks)


def test_no_frame_reaches_anyone_but_its_owner(start_simulator, start_worker, start_web, settings):
    target = int(settings.REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(target, delay=DELAY).start()
    try:
        sim = start_simulator("--ttft", "0.2", "--tps", "40", "--tokens", "24")
        sim.register(alias="sim-chat")
        env = {**ENV, "REDIS_URL": proxy.url}
        for _ in range(2):
            start_worker(**env)
        url = start_web(**env)
        people: list[tuple[int, str, str]] = []
        for person in range(PEOPLE):
            user = make_user(f"p{person:03d}")
            if person % 2 == 0:
                cookie = f"{settings.SESSION_COOKIE_NAME}={session_cookie(user)}"
                people.append((person, "chat", cookie))
            else:
                _, key = api_key_create(owner=user, name="chaos")
                people.append((person, "api", key))
        tally = Tally()
        started = time.monotonic()
        try:
            asyncio.run(crowd(url, people, tally))
        except AssertionError as exc:
            found = re.search(r"request ([0-9a-f-]{36})", str(exc))
            if found:
                row = PromptRequest.objects.get(id=found.group(1))
                raise AssertionError(
                    f"{exc}; row {row.status} {row.error!r} started {row.started_at} "
                    f"first token {row.first_token_at} finished {row.finished_at}"
                ) from None
            raise
        elapsed = time.monotonic() - started

        def settled() -> bool:
            return not PromptRequest.objects.filter(status__in=["queued", "running"]).exists()

        wait_for(settled, timeout=60, interval=0.5)
        # The ledger agrees: each row holds its own owner's canary and no one else's.
        for row in PromptRequest.objects.select_related("owner"):
            owner = int(row.owner.username[1:])
            for found in CANARY.findall(row.answer + json.dumps(row.messages)):
                if int(found) != owner:
                    tally.mismatches.append(f"ledger row {row.id} holds person {found}'s text")
        time.sleep(1.5)  # the web process adds its counts to the store once a second
        counted = delivery_counts(url)
        assert tally.mismatches == []
        assert counted["refused_frames"] == 0  # the guard never had to act
        assert tally.frames > PEOPLE * PROMPTS_EACH * 3
        record(
            "isolation under cancellation",
            people=PEOPLE,
            prompts=PEOPLE * PROMPTS_EACH,
            frames_checked=tally.frames,
            mismatches=len(tally.mismatches),
            guard_refusals=counted["refused_frames"],
            answers_caught_up_from_ledger=counted["caught_up_answers"],
            outcomes=dict(tally.outcomes),
            redis_chunks_delayed=proxy.chunks,
            seconds=round(elapsed, 1),
        )
    finally:
        proxy.stop()


def delivery_counts(url: str) -> dict[str, int]:
    """From Prometheus' /metrics: frames the delivery guard refused (owner mismatch) and
    final frames sent from the ledger because the channel layer lost them."""
    from tests.conftest import make_user as make

    staff = make("chaos-staff", staff=True)
    response = httpx.get(f"{url}/metrics", cookies=_cookies(staff))
    figures = {}
    for name in ("refused_frames", "caught_up_answers"):
        match = re.search(rf"^barista_{name}_total (\S+)$", response.text, re.MULTILINE)
        assert match, f"barista_{name}_total is missing from /metrics"
        figures[name] = int(float(match.group(1)))
    return figures


def _cookies(user: User) -> dict[str, Any]:
    return {settings.SESSION_COOKIE_NAME: session_cookie(user)}
