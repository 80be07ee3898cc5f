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
import redis
import websockets
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection as db_connection
from rq.job import Job

from apps.api.services import api_key_create
from apps.gateway import coalescing, queues
from apps.gateway.metrics import totals as metrics_totals
from apps.gateway.models import PromptRequest
from apps.gateway.operations import queue_pause
from tests.chaos.conftest import record
from tests.chaos.proxy import TcpProxy
from tests.conftest import Simulator, make_user, session_cookie, wait_for

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


def test_no_frame_reaches_anyone_but_its_owner(
    start_simulator, start_worker, start_web, settings, redis_conn
):
    target = int(settings.REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(target, delay=DELAY).start()
    try:
        sim = start_simulator("--ttft", "0.2", "--tps", "40", "--tokens", "24")
        sim.register(alias="sim-chat")
        env = {**ENV, **proxy.env}
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
        # The web process adds its counts to the store once a second: wait until they
        # include the last cancellation it recorded.
        cancelled = PromptRequest.objects.filter(status="cancelled").count()
        wait_for(
            lambda: metrics_totals(redis_conn).get("req|cancelled|sim-chat", 0) >= cancelled,
            timeout=10,
        )
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


# --- Cache hits, coalescing, fan-out and hand-over, under both cache scopes ---------------
#
# The test above sends every prompt fresh, with its own canary, so nothing is ever shared.
# Here a crowd asks the *same* questions — the case where the cache key can match across
# people — mixed with each person's canary prompts:
#
# * phase "hand-over" (queues paused, so nothing runs until the chain is built): a leader
#   and its followers wait in line; the leader hangs up, the follower that took over
#   cancels too, the next one's backend call is cut mid-stream after its tokens reached
#   the others, and the one after answers them all;
# * phase "hits": each person asks their canary prompt twice, and everyone asks a
#   question someone already had answered;
# * phase "stampede": a slow backend, a leader streaming, a first wave joining it, the
#   leader hanging up mid-stream, a second wave joining late (chat people asking twice at
#   once), and a quarter of everyone cancelling at random moments.
#
# Answers are shared between people only under the global scope or where staff share an
# alias's answers; under the default per-user scope a person's question is never answered
# from, nor merged with, anyone else's. The simulator's answer is a function of the
# request (it quotes the question), so two people's answers to one question are the same
# text: who was answered from whose work is read from the ledger (cache key, outcome,
# leader followed), and from what people were told (chat ``cache`` fields, the API's
# X-Barista-Cache header).

CROWD = 30  # even-numbered people use the chat websocket, odd-numbered ones the API
SIMULATOR = ("--ttft", "0.4", "--tps", "25", "--tokens", "30")  # about 1.6 s an answer
CUT_AFTER = 6  # tokens a cut backend call streams before its connection drops
STAMPEDE_CANCEL_SHARE = 0.25
REQUEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SCOPES = {
    # name: (environment of web and worker, Backend.share_answers)
    "per-user": ({}, False),
    "global": ({"BARISTA_CACHE_SCOPE": "global"}, False),
    "alias-shared": ({}, True),
}
CROWD_ENV = {
    **ENV,
    # The cut backend calls must not open the backend's circuit: the rest of the test
    # needs it (under per-user scope a dozen calls are cut at once).
    "BARISTA_CIRCUIT_FAILURES": "1000",
    "BARISTA_CIRCUIT_MIN_CALLS": "1000",
}
Row = PromptRequest


def question(name: str) -> str:
    return f"Which grind suits a {name}? (a question anyone may ask)"


def canary_prompt(person: int) -> str:
    return f"canary-p{person:03d}-c what did I order?"


class Ask:
    """One prompt sent by one person, and everything that person was told about it."""

    def __init__(self, person: Person, content: str, phase: str) -> None:
        self.person, self.content, self.phase = person, content, phase
        loop = asyncio.get_running_loop()
        self.accepted: asyncio.Future[str] = loop.create_future()
        self.ended: asyncio.Future[str] = loop.create_future()
        self.first_tokens = asyncio.Event()
        self.request_id: str | None = None
        self.text = ""  # the answer as delivered
        self.cache: list[str] = []  # how they were told it was answered (hit, coalesced…)
        self.restarts = 0  # "start this message over" frames
        self.was_follower = False  # its row followed another request when it joined
        self.cancelled = False  # its person cancelled it (or hung up)
        self.task: asyncio.Task[None] | None = None  # an API request in flight

    def end(self, outcome: str) -> None:
        if not self.ended.done():
            self.ended.set_result(outcome)

    @property
    def outcome(self) -> str | None:
        return self.ended.result() if self.ended.done() else None


class Watch:
    """What the whole crowd received: every frame is checked for other people's canaries,
    and the request ids it names are kept, to be checked against the ledger's owners."""

    def __init__(self) -> None:
        self.frames = 0
        self.mismatches: list[str] = []
        self.asks: list[Ask] = []
        self.early_frames = 0  # a request's frames that arrived before its "accepted"

    def saw(self, person: Person, text: str, where: str) -> None:
        self.frames += 1
        for found in CANARY.findall(text):
            if int(found) != person.index:
                self.mismatches.append(f"person {person.index} got person {found}'s text ({where})")
        person.named.update(REQUEST_ID.findall(text))


class Person:
    kind = ""

    def __init__(self, index: int, owner_id: int, watch: Watch) -> None:
        self.index, self.owner_id, self.watch = index, owner_id, watch
        self.named: set[str] = set()  # every request id any frame to this person named

    async def ask(self, content: str, phase: str) -> Ask:
        raise NotImplementedError

    async def cancel(self, ask: Ask) -> None:
        """Stop waiting for this answer (the chat page's Stop button; an API client hangs up)."""
        raise NotImplementedError


class ChatPerson(Person):
    kind = "chat"

    def __init__(self, index: int, owner_id: int, watch: Watch, cookie: str) -> None:
        super().__init__(index, owner_id, watch)
        self.cookie = cookie
        self.by_ref: dict[str, Ask] = {}
        self.by_request: dict[str, Ask] = {}
        self.early: dict[str, list[dict[str, Any]]] = {}
        self.refs = 0

    async def connect(self, url: str) -> None:
        self.socket = await websockets.connect(
            url.replace("http://", "ws://") + "/ws/chat/",
            additional_headers={"Cookie": self.cookie, "Origin": url},
        )
        self.reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        await self.socket.close()
        self.reader.cancel()

    async def ask(self, content: str, phase: str) -> Ask:
        ask = Ask(self, content, phase)
        self.watch.asks.append(ask)
        self.refs += 1
        ref = f"{self.index}-{self.refs}"
        self.by_ref[ref] = ask
        await self.socket.send(
            json.dumps({"type": "prompt", "model": "sim-chat", "content": content, "ref": ref})
        )
        return ask

    async def cancel(self, ask: Ask) -> None:
        ask.cancelled = True
        request_id = await ask.accepted
        await self.socket.send(json.dumps({"type": "cancel", "request": request_id}))

    async def _read(self) -> None:
        async for raw in self.socket:
            self.watch.saw(self, str(raw), "chat")
            frame = json.loads(raw)
            request = frame.get("request")
            if frame["type"] == "accepted":
                ask = self.by_ref.pop(frame["ref"])
                ask.request_id = request
                self.by_request[request] = ask
                ask.accepted.set_result(request)
                for early in self.early.pop(request, []):
                    self._apply(ask, early)
            elif frame["type"] == "error" and frame.get("ref") in self.by_ref:
                ask = self.by_ref.pop(frame["ref"])
                ask.accepted.set_exception(AssertionError(f"prompt refused: {frame}"))
                ask.end("refused")
            elif request in self.by_request:
                self._apply(self.by_request[request], frame)
            elif request:
                self.watch.early_frames += 1
                self.early.setdefault(request, []).append(frame)

    @staticmethod
    def _apply(ask: Ask, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if "cache" in frame:
            ask.cache.append(str(frame["cache"]))
        if kind == "tokens":
            ask.first_tokens.set()
        elif kind == "status" and frame.get("restart") and frame.get("status") == "queued":
            ask.restarts += 1
        elif kind == "done":
            ask.text = frame["content"]
            ask.end("done")
        elif kind in {"failed", "cancelled"}:
            ask.end(kind)


class ApiPerson(Person):
    kind = "api"

    def __init__(
        self, index: int, owner_id: int, watch: Watch, key: str, client: httpx.AsyncClient
    ) -> None:
        super().__init__(index, owner_id, watch)
        self.key, self.client = key, client
        self.claimed: set[str] = set()  # ledger rows already matched to an ask

    async def ask(self, content: str, phase: str) -> Ask:
        ask = Ask(self, content, phase)
        self.watch.asks.append(ask)
        ask.task = asyncio.create_task(self._stream(ask))
        return ask

    async def cancel(self, ask: Ask) -> None:
        """Hang up: the server sees the connection close."""
        assert ask.task is not None
        ask.cancelled = True
        ask.end("hung up")
        ask.task.cancel()

    async def _stream(self, ask: Ask) -> None:
        try:
            await self._read_stream(ask)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            ask.end(f"broken: {exc!r}")

    async def _read_stream(self, ask: Ask) -> None:
        body = {
            "model": "sim-chat",
            "stream": True,
            "messages": [{"role": "user", "content": ask.content}],
        }
        headers = {"Authorization": f"Bearer {self.key}"}
        async with self.client.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers
        ) as response:
            self.watch.saw(self, json.dumps(dict(response.headers)), "api headers")
            if "x-barista-cache" in response.headers:
                ask.cache.append(response.headers["x-barista-cache"])
            if response.status_code != 200:
                self.watch.saw(self, (await response.aread()).decode(), "api error")
                ask.end(f"api {response.status_code}")
                return
            ask.request_id = response.headers["x-barista-request-id"]
            async for line in response.aiter_lines():
                if not line:
                    continue
                self.watch.saw(self, line, "api stream")
                if line.startswith(":"):
                    continue  # an SSE comment: place in line, keep-alive
                if line == "data: [DONE]":
                    break
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    ask.end("failed")
                    continue
                for choice in chunk["choices"]:
                    ask.text += choice["delta"].get("content") or ""
                    ask.first_tokens.set()
            ask.end("done")


# --- The ledger and Redis, read from a thread (the crowd's event loop must keep going) --


async def until(predicate: Any, timeout: float = 20.0, what: str = "") -> Any:
    def wait() -> Any:
        try:
            return wait_for(predicate, timeout=timeout, describe=lambda: what)
        finally:
            db_connection.close()

    return await asyncio.to_thread(wait)


async def request_id_of(ask: Ask) -> str:
    """The ledger row of an ask: a chat prompt's "accepted" frame names it; an API request
    waiting in line has sent no headers yet, so its row is found in the ledger."""
    if isinstance(ask.person, ChatPerson) or ask.accepted.done():
        return await asyncio.wait_for(ask.accepted, 20)
    person = ask.person
    assert isinstance(person, ApiPerson)

    def claim() -> str | None:
        rows = Row.objects.filter(owner_id=person.owner_id).order_by("queued_at")
        for pk, messages in rows.values_list("id", "messages"):
            if str(pk) not in person.claimed and messages[-1]["content"] == ask.content:
                person.claimed.add(str(pk))
                return str(pk)
        return None

    ask.request_id = await until(
        claim, what=f"person {person.index}: no row for {ask.content!r}; ended {ask.outcome}"
    )
    ask.accepted.set_result(ask.request_id)
    return ask.request_id


def leads(redis_conn: redis.Redis, request_id: str) -> bool:
    """The request is the one in flight for its cache key, and has a job."""
    row = Row.objects.filter(id=request_id).first()
    if row is None or not row.cache_key or row.coalesced_with is not None:
        return False
    in_flight = redis_conn.get(coalescing.INFLIGHT + row.cache_key)
    job = queues.connection().exists(Job.key_for(request_id))  # on the queues' Redis
    return in_flight == request_id.encode() and bool(job)


def joined(redis_conn: redis.Redis, ask: Ask) -> bool:
    """The request found its place: following a leader, or leading."""
    assert ask.request_id is not None
    row = Row.objects.filter(id=ask.request_id).first()
    if row is not None and row.coalesced_with is not None:
        ask.was_follower = True
        return True
    return leads(redis_conn, ask.request_id)


def status_is(request_id: str, status: str) -> bool:
    return Row.objects.filter(id=request_id, status=status).exists()


# --- The crowd ----------------------------------------------------------------------------


async def settle(asks: list[Ask], timeout: float = 30.0) -> None:
    try:
        await asyncio.wait_for(asyncio.gather(*(a.ended for a in asks)), timeout)
    except TimeoutError:
        stuck = [(a.person.index, a.phase, a.request_id) for a in asks if not a.ended.done()]
        raise AssertionError(f"asks with no end after {timeout} s: {stuck}") from None


async def join_in_order(redis_conn: redis.Redis, asks: list[Ask]) -> None:
    for ask in asks:
        await request_id_of(ask)
        await until(lambda ask=ask: joined(redis_conn, ask), what=f"{ask.request_id} joined")


async def phase_hand_over(
    people: list[Person], sim: Simulator, redis_conn: redis.Redis
) -> dict[str, Ask]:
    """Queues paused: a leader and its followers wait in line; the chain of hand-overs is
    built one step at a time, each step confirmed in the ledger and Redis."""
    text = question("cortado")
    leader, first, second, third, *rest = people[1:17]
    ask = {"leader": await leader.ask(text, "hand-over")}
    await request_id_of(ask["leader"])
    await until(lambda: leads(redis_conn, ask["leader"].request_id or ""), what="leader leads")
    # The oldest follower takes over: these three join one after another.
    for name, person in (("first", first), ("second", second), ("third", third)):
        ask[name] = await person.ask(text, "hand-over")
        await join_in_order(redis_conn, [ask[name]])
    others = [await person.ask(text, "hand-over") for person in rest]
    await asyncio.gather(*(join_in_order(redis_conn, [a]) for a in others))
    # The leader hangs up while waiting: its oldest follower leads (and gets a job).
    await leader.cancel(ask["leader"])
    first_id = await request_id_of(ask["first"])
    await until(lambda: leads(redis_conn, first_id), what="first follower took over")
    # ...and cancels too: the next one leads.
    await first.cancel(ask["first"])
    second_id = await request_id_of(ask["second"])
    await until(lambda: leads(redis_conn, second_id), what="second follower took over")
    # Its backend call is cut after its first tokens reached the followers.
    sim.control(cut_after=CUT_AFTER)
    for name in settings.BARISTA_QUEUES:
        queue_pause(name=name, paused=False)
    await until(lambda: status_is(second_id, Row.Status.FAILED), what="second leader cut")
    sim.control(cut_after=0)
    for index, other in enumerate(others):
        ask[f"other-{index}"] = other
    await settle(list(ask.values()))
    return ask


async def phase_hits(people: list[Person]) -> list[Ask]:
    """Each person's canary prompt, twice (the second from their own cache); and a question
    one person had answered, asked by everyone else."""
    text = question("flat white")
    seeded = [await people[0].ask(text, "hits")]
    first = [await p.ask(canary_prompt(p.index), "hits") for p in people]
    await settle(seeded + first)

    async def again(person: Person) -> list[Ask]:
        asks = [await person.ask(text, "hits")]
        await settle(asks)
        asks.append(await person.ask(canary_prompt(person.index), "hits"))
        await settle(asks[1:])
        return asks

    second = await asyncio.gather(*(again(p) for p in people[1:]))
    return seeded + first + [a for asks in second for a in asks]


async def phase_stampede(people: list[Person], redis_conn: redis.Redis) -> dict[str, Any]:
    """A slow answer streaming, two waves joining it, its leader hanging up mid-stream."""
    text = question("ristretto")
    rng = random.Random(7)
    leader = people[0]
    lead = await leader.ask(text, "stampede")
    await request_id_of(lead)
    await until(lambda: leads(redis_conn, lead.request_id or ""), what="stampede leader")
    first_wave = [await p.ask(text, "stampede") for p in people[1:15]]
    await asyncio.gather(*(request_id_of(a) for a in first_wave))
    await asyncio.wait_for(lead.first_tokens.wait(), 20)
    await leader.cancel(lead)
    second_wave = []
    for person in people[15:]:
        second_wave.append(await person.ask(text, "stampede"))
        if person.kind == "chat":  # the same question twice at once, on one socket
            second_wave.append(await person.ask(text, "stampede"))

    async def maybe_cancel(ask: Ask) -> None:
        if rng.random() < STAMPEDE_CANCEL_SHARE:
            await asyncio.sleep(rng.uniform(0.0, 1.0))  # a person's whim, not a wait
            if not ask.ended.done():
                await ask.person.cancel(ask)

    await asyncio.gather(*(maybe_cancel(a) for a in first_wave + second_wave))
    await settle([lead, *first_wave, *second_wave])
    return {"leader": lead, "first_wave": first_wave, "second_wave": second_wave}


async def crowd_run(
    url: str, specs: list[tuple[int, int, str]], watch: Watch, sim: Simulator, redis_conn: Any
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        people: list[Person] = []
        for index, owner_id, credential in specs:
            if index % 2 == 0:
                chat = ChatPerson(index, owner_id, watch, credential)
                await chat.connect(url)
                people.append(chat)
            else:
                people.append(ApiPerson(index, owner_id, watch, credential, client))
        try:
            handed = await phase_hand_over(people, sim, redis_conn)
            hits = await phase_hits(people)
            stampede = await phase_stampede(people, redis_conn)
            # One more hit, counted by the web process after everything above: once the
            # metrics store has it, it has every count the web process made before it.
            probe = await people[1].ask(canary_prompt(1), "probe")
            await settle([probe])
        finally:
            for person in people:
                if isinstance(person, ChatPerson):
                    await person.close()
    return {"people": people, "hand-over": handed, "hits": hits, "stampede": stampede}


@pytest.mark.parametrize("scope", list(SCOPES))
def test_shared_questions_reach_only_their_askers(
    scope, start_simulator, start_worker, start_web, settings, redis_conn
):
    """30 people (chat and API) ask the same questions and their own canary prompts
    through cache hits, coalescing, fan-out and hand-over: no frame reaches anyone but
    its owner under either scope, and under per-user scope no answer crosses people."""
    env, share_answers = SCOPES[scope]
    sharing = scope != "per-user"
    sim = start_simulator(*SIMULATOR)
    sim.register(alias="sim-chat", share_answers=share_answers)
    # Nothing is answered until the first phase has built its chain of followers.
    for name in settings.BARISTA_QUEUES:
        queue_pause(name=name, paused=True)
    start_worker(**CROWD_ENV, **env)
    url = start_web(**CROWD_ENV, **env)
    specs = []
    for index in range(CROWD):
        user = make_user(f"p{index:03d}")
        if index % 2 == 0:
            specs.append((index, user.pk, f"{settings.SESSION_COOKIE_NAME}={session_cookie(user)}"))
        else:
            specs.append((index, user.pk, api_key_create(owner=user, name="chaos")[1]))
    watch = Watch()
    started = time.monotonic()
    run = asyncio.run(crowd_run(url, specs, watch, sim, redis_conn))
    elapsed = time.monotonic() - started
    wait_for(
        lambda: not Row.objects.pending().exists(),
        timeout=30,
        describe=lambda: list(Row.objects.pending().values_list("id", "status")),
    )
    rows = {str(row.id): row for row in Row.objects.all()}
    asks: list[Ask] = watch.asks

    # (1) Nothing reached anyone but its owner: no other person's canary, and no frame that
    # names a request the ledger does not give to the person who received it.
    wrong_owner = [
        f"person {person.index} was sent request {named} "
        f"(owner {rows[named].owner_id if named in rows else 'unknown'})"
        for person in run["people"]
        for named in sorted(person.named)
        if named not in rows or rows[named].owner_id != person.owner_id
    ]
    assert watch.mismatches == []
    assert wrong_owner == []
    # Every answer delivered, and every answer in the ledger, is the answer to the question
    # it was delivered for (the simulator quotes the question it was asked).
    done = [a for a in asks if a.outcome == "done"]
    misdelivered = [
        (a.person.index, a.content, a.text[:60])
        for a in done
        if not a.text.startswith(f'You said: "{a.content}"')
        or a.text != rows[a.request_id or ""].answer
    ]
    assert misdelivered == []
    for row in rows.values():
        if row.status == Row.Status.DONE:
            assert row.answer.startswith(f'You said: "{row.messages[-1]["content"]}"'), row.id
        owner = int(row.owner.username[1:]) if row.owner.username.startswith("p") else -1
        assert all(int(found) == owner for found in CANARY.findall(row.answer)), row.id
    # A lower bound on success: everything no one cancelled was answered (in the hand-over
    # phase the cut call fails, and under per-user scope every call cut with it).
    unanswered = [
        (a.person.index, a.phase, a.content, a.outcome)
        for a in asks
        if not a.cancelled and a.outcome != "done" and a.phase != "hand-over"
    ]
    assert unanswered == []
    assert len(done) >= 2 * CROWD + 20

    owner_of = {key: row.owner_id for key, row in rows.items()}
    hits = [r for r in rows.values() if r.cache_outcome == Row.CacheOutcome.HIT]
    followers = [r for r in rows.values() if r.coalesced_with is not None]
    firsts: dict[tuple[int, str], Row] = {}
    for row in sorted(rows.values(), key=lambda r: r.queued_at):
        firsts.setdefault((row.owner_id, row.cache_key), row)
    # Answered from someone else's work: a person's first ask of a question was a hit, or
    # it followed a request of someone else's.
    borrowed_hits = [r for r in firsts.values() if r.cache_outcome == Row.CacheOutcome.HIT]
    cross_followers = [r for r in followers if owner_of[str(r.coalesced_with)] != r.owner_id]
    told = Counter(value for a in asks for value in a.cache)
    handed, stampede = run["hand-over"], run["stampede"]
    promoted = [
        a for a in asks if a.was_follower and rows[a.request_id or ""].coalesced_with is None
    ]
    restarts = sum(a.restarts for a in asks)

    # Refused frames and answers caught up from the ledger, as /metrics reports them, once
    # the web process's counts include the last hit.
    wait_for(
        lambda: metrics_totals(redis_conn).get("req|hit|sim-chat", 0) >= len(hits),
        timeout=10,
        describe=lambda: (metrics_totals(redis_conn), len(hits)),
    )
    counted = delivery_counts(url)
    assert counted["refused_frames"] == 0

    if not sharing:
        # (2) No answer crosses people: every cache key is one person's, nobody followed
        # anyone else's request, nobody's first ask of a question was a hit — and nobody
        # was told how a request was answered (there is nothing of anyone else's to tell).
        key_owners = Counter(key for key, _ in {(r.cache_key, r.owner_id) for r in rows.values()})
        assert [key for key, owners in key_owners.items() if key and owners > 1] == []
        assert cross_followers == []
        assert borrowed_hits == []
        assert told == Counter()
        assert promoted == []
        # The paths were still taken, within each person's own requests: their repeated
        # canary prompts came from their own cache; their two identical questions at once
        # were merged.
        repeats = [a for a in run["hits"] if a.content.startswith("canary") and a.phase == "hits"]
        assert {rows[a.request_id or ""].cache_outcome for a in repeats[CROWD:]} == {"hit"}
        assert followers, "no person's identical questions were merged"
    else:
        # (3) The shared paths were taken, still with no frame to the wrong person.
        # Everyone but the first to ask was answered from the cache, and told so.
        after_seed = [a for a in run["hits"] if "flat white" in a.content][1:]
        assert {rows[a.request_id or ""].cache_outcome for a in after_seed} == {"hit"}
        told_after_seed = Counter(
            (a.person.kind, value) for a in after_seed for value in set(a.cache)
        )
        assert told_after_seed[("chat", "hit")] == len(
            [a for a in after_seed if a.person.kind == "chat"]
        )
        assert told_after_seed[("api", "hit")] == len(
            [a for a in after_seed if a.person.kind == "api"]
        )
        # The first wave followed the stampede's leader, which kept answering them after
        # its own person hung up.
        lead = stampede["leader"].request_id
        assert {str(rows[a.request_id].coalesced_with) for a in stampede["first_wave"]} == {lead}
        assert rows[lead].status == Row.Status.CANCELLED
        # Hand-over: the leader hung up and the first follower cancelled before anything
        # ran; the second's backend call was cut after the followers saw its tokens; the
        # third answered everyone left.
        first, second, third = (
            rows[handed[n].request_id or ""] for n in ("first", "second", "third")
        )
        assert [a.phase for a in promoted].count("hand-over") == 3
        assert (first.status, second.status, third.status) == ("cancelled", "failed", "done")
        others = [a for name, a in handed.items() if name.startswith("other") and not a.cancelled]
        assert {a.outcome for a in others} == {"done"}
        assert {str(rows[a.request_id or ""].coalesced_with) for a in others} == {str(third.id)}
        assert restarts > 0
        assert told["coalesced"] > 0 and told["hit"] > 0
        assert cross_followers and borrowed_hits

    record(
        f"isolation with shared questions ({scope} scope)",
        people=CROWD,
        prompts=len(asks),
        answered=len(done),
        outcomes=dict(Counter(a.outcome for a in asks)),
        frames_checked=watch.frames,
        wrong_owner_frames=len(wrong_owner) + len(watch.mismatches),
        frames_before_accepted=watch.early_frames,
        cache_hits=len(hits),
        hits_from_another_persons_answer=len(borrowed_hits),
        coalesced_followers=len(followers),
        followers_of_another_person=len(cross_followers),
        hand_overs=len(promoted),
        restarts_sent_to_followers=restarts,
        told=dict(told),
        api_hits_told=dict(
            Counter(
                value
                for a in asks
                if a.person.kind == "api" and a.request_id in rows
                if rows[a.request_id].cache_outcome == Row.CacheOutcome.HIT
                for value in a.cache
            )
        ),
        backend_calls=sim.stats()["requests_total"],
        guard_refusals=counted["refused_frames"],
        answers_caught_up_from_ledger=counted["caught_up_answers"],
        seconds=round(elapsed, 1),
    )
