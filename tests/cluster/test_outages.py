"""The cluster through outages of what every host shares, and through a release.

Redis and PostgreSQL are each stopped under load and started again: requests sent while
one is away get a clear 503 from Barista (not the load balancer's page, not a hang), the
hosts recover without being restarted, and every prompt accepted before, during or after
the outage ends answered in the ledger. Then both web hosts are restarted one after the
other, as docs/deploy.md tells, while 50 chat streams run: every stream ends answered.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest
from websockets.exceptions import ConnectionClosed

from cluster.harness import MODEL_ALIAS, WEB_HOSTS, WORKER_HOSTS, Cluster
from tests.cluster.conftest import sign_in
from tests.cluster.test_cluster import ledger_row, next_frame, open_chat
from tests.conftest import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

FINAL = ("done", "failed", "cancelled")


@dataclass
class Outcome:
    status: int  # -1: no HTTP answer at all
    seconds: float
    body: dict[str, Any]


@dataclass
class Load:
    """API clients through the load balancer, each sending one prompt after another."""

    cluster: Cluster
    clients: int = 6
    outcomes: Counter[int] = field(default_factory=Counter)
    failures: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def ask(self, text: str, timeout: float = 60) -> Outcome:
        body = {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": text}]}
        headers = {"Authorization": f"Bearer {self.cluster.api_key}"}
        started = time.monotonic()
        try:
            answer = httpx.post(
                f"{self.cluster.lb_url}/v1/chat/completions",
                json=body,
                headers=headers,
                timeout=timeout,
            )
        except httpx.HTTPError:
            return Outcome(-1, time.monotonic() - started, {})
        try:
            payload = answer.json()
        except ValueError:
            payload = {"not_json": answer.text[:300]}
        return Outcome(answer.status_code, time.monotonic() - started, payload)

    def _client(self, index: int) -> None:
        sent = 0
        while not self._stop.is_set():
            outcome = self.ask(f"load {index}.{sent} {time.time()}")
            sent += 1
            self.outcomes[outcome.status] += 1
            if outcome.status != 200:
                self.failures.append(outcome)
                time.sleep(0.2)  # a client backs off a little after an error

    def start(self) -> Load:
        for index in range(self.clients):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)


def database_now(ledger: psycopg.Connection[Any]) -> datetime:
    row = ledger.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]


def ledger_since(ledger: psycopg.Connection[Any], since: datetime) -> Counter[str]:
    rows = ledger.execute(
        "SELECT status, count(*) FROM gateway_promptrequest WHERE queued_at >= %s GROUP BY status",
        [since],
    ).fetchall()
    return Counter({status: count for status, count in rows})


def settled(ledger: psycopg.Connection[Any], since: datetime, timeout: float) -> Counter[str]:
    """Wait until no prompt accepted since ``since`` is still queued or running (the
    reconciler re-runs those whose jobs the outage lost); the ledger's counts then."""
    wait_for(
        lambda: not ({"queued", "running"} & set(+ledger_since(ledger, since))),
        timeout=timeout,
        interval=1,
        describe=lambda: ledger_since(ledger, since),
    )
    return ledger_since(ledger, since)


def same_processes(cluster: Cluster) -> dict[str, int]:
    """The web and worker processes, all still the ones started with the cluster."""
    alive = {}
    for host in (*WEB_HOSTS, *WORKER_HOSTS):
        process = cluster.services[host].process
        assert process.poll() is None, f"{host} exited ({process.returncode})"
        alive[host] = process.pid
    return alive


def outage(
    cluster: Cluster,
    ledger: psycopg.Connection[Any],
    *,
    stop: Any,
    start: Any,
    what: str,
    down_for: float = 4,
) -> None:
    """Load; ``stop``; 503s said clearly while down; ``start``; recovery; the ledger."""
    before = same_processes(cluster)
    since = database_now(ledger)
    load = Load(cluster).start()
    try:
        wait_for(lambda: load.outcomes[200] >= 12, timeout=60, describe=lambda: load.outcomes)
        answered_before = load.outcomes[200]
        stop()
        went = time.monotonic()
        refusals = []
        while time.monotonic() - went < down_for:
            refusals.append(load.ask(f"while {what} is down {time.time()}", timeout=30))
        start()
        came_back = time.monotonic()
        wait_for(lambda: load.ask(f"after {time.time()}").status == 200, timeout=60, interval=0.2)
        recovered_in = time.monotonic() - came_back
        recovered_outcomes = load.outcomes[200]
        wait_for(
            lambda: load.outcomes[200] >= recovered_outcomes + 12,
            timeout=60,
            describe=lambda: load.outcomes,
        )
    finally:
        load.stop()
    # While it was down: Barista's own 503, in OpenAI's shape, naming what is down.
    assert refusals
    for refusal in refusals:
        assert refusal.status == 503, refusal
        error = refusal.body["error"]
        assert error["code"] == "unavailable", refusal
        assert what.lower() in error["message"].lower(), refusal
    slowest = max(r.seconds for r in refusals)
    assert slowest < 10, f"a refusal took {slowest:.1f} s"
    # The clients under load saw answers, or the same clear 503: nothing else.
    assert set(load.outcomes) <= {200, 503}, (load.outcomes, load.failures[:3])
    # Recovered by themselves: the same processes, never restarted.
    assert same_processes(cluster) == before
    # Nothing accepted was lost: every prompt ends answered (or cancelled by a client
    # that hung up on a 503), none failed, none left waiting.
    counts = settled(ledger, since, timeout=180)
    assert set(counts) <= {"done", "cancelled"}, counts
    print(
        f"{what} outage: {len(refusals)} refusals while down (slowest {slowest:.2f} s); "
        f"recovered {recovered_in:.1f} s after it came back; load {dict(load.outcomes)}, "
        f"{answered_before} answered before; ledger {dict(counts)}"
    )


def test_redis_restarted_under_load(cluster: Cluster, ledger: psycopg.Connection[Any]) -> None:
    # The cluster's Redis keeps nothing on disk: it comes back empty, queues and all.
    outage(cluster, ledger, stop=cluster.stop_redis, start=cluster.start_redis, what="Redis")


def test_postgresql_restarted_under_load(cluster: Cluster, ledger: psycopg.Connection[Any]) -> None:
    pages = sign_in(cluster)
    seen: dict[str, httpx.Response] = {}

    def stop() -> None:
        cluster.stop_postgres()
        # A page (the chat page reads the session from the database) says it too.
        seen["page"] = pages.get("/")

    try:
        outage(
            cluster,
            Reconnecting(ledger),  # type: ignore[arg-type]
            stop=stop,
            start=cluster.start_postgres,
            what="database",
        )
    finally:
        pages.close()
    page = seen["page"]
    assert page.status_code == 503, page.text[:300]
    assert "database" in page.text and page.headers["retry-after"]


class Reconnecting:
    """The operator's connection to the ledger, connected again after PostgreSQL
    restarted (the server ended its session)."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, *args: Any) -> Any:
        try:
            return self._connection.execute(*args)
        except psycopg.OperationalError:
            self._connection = psycopg.connect(self._connection.info.dsn, autocommit=True)
            return self._connection.execute(*args)


@dataclass
class Stream:
    """One person's chat page: prompts one after another; when its socket drops, it
    reconnects through the load balancer and follows the prompt it was waiting for."""

    cluster: Cluster
    session: str
    index: int
    finished: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    reconnects: int = 0

    async def _connect(self) -> Any:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket, _ = await open_chat(self.cluster, self.session)
                return socket
            except Exception:  # refused, reset, timed out: the host is restarting
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def run(self, stop: asyncio.Event) -> None:
        socket = await self._connect()
        sent = 0
        pending: str | None = None
        try:
            while pending is not None or not stop.is_set():
                try:
                    if pending is None:
                        text = f"stream {self.index}.{sent}"
                        await socket.send(
                            json.dumps({"type": "prompt", "model": MODEL_ALIAS, "content": text})
                        )
                        sent += 1
                        while (frame := await next_frame(socket))["type"] != "accepted":
                            assert frame["type"] in ("queue", "status"), frame
                        pending = str(frame["request"])
                    frame = await next_frame(socket)
                    if frame.get("request") == pending and frame["type"] in FINAL:
                        self.finished.append((pending, frame))
                        pending = None
                    elif frame["type"] == "error":
                        pytest.fail(f"stream {self.index}: {frame}")
                except ConnectionClosed:
                    # The web host went away: as the page does, reconnect and follow.
                    self.reconnects += 1
                    socket = await self._connect()
                    if pending is not None:
                        await socket.send(json.dumps({"type": "follow", "request": pending}))
        finally:
            await socket.close()


async def test_a_rolling_restart_of_both_web_hosts_while_50_streams_run(
    cluster: Cluster, ledger: psycopg.Connection[Any]
) -> None:
    session = sign_in(cluster).cookies["sessionid"]
    streams = [Stream(cluster, session, index) for index in range(50)]
    stop = asyncio.Event()
    running = [asyncio.create_task(stream.run(stop)) for stream in streams]
    try:
        await wait_until(lambda: all(s.finished for s in streams), timeout=120)
        # The release, as docs/deploy.md tells it: one web host at a time, drained at the
        # load balancer, stopped, started, checked ready, put back.
        for host in WEB_HOSTS:
            await asyncio.to_thread(cluster.lb_command, f"disable server web/{host}")
            await asyncio.sleep(1)
            await asyncio.to_thread(cluster.kill, host, signal.SIGTERM)
            await asyncio.to_thread(cluster.start_web, host)
            await asyncio.to_thread(cluster.lb_command, f"enable server web/{host}")
            await asyncio.to_thread(cluster.wait_all_web_up)
        # Every stream goes on with a prompt after the release, then stops.
        after = {id(s): len(s.finished) for s in streams}
        await wait_until(lambda: all(len(s.finished) > after[id(s)] for s in streams), 120)
    finally:
        stop.set()
        results = await asyncio.gather(*running, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    reconnects = sum(s.reconnects for s in streams)
    # Each restart cut the streams on its host: the pages moved, mid-answer or between.
    assert reconnects >= 2, "no stream was on a restarted host: no proof"
    answers = 0
    for stream in streams:
        for request_id, final in stream.finished:
            status, answer, _ = ledger_row(ledger, request_id)
            assert final["type"] == "done" and status == "done", (final, status)
            assert final["content"] == answer and answer
            answers += 1
    print(f"rolling restart: 50 streams, {answers} answers, {reconnects} reconnects")


async def wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.2)
