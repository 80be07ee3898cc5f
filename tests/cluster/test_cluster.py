"""Barista as several hosts behind HAProxy (issue 20), on the cluster of docs/deploy.md."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect

from cluster.harness import (
    LB_HOST_NAME,
    MODEL_ALIAS,
    WEB_HOSTS,
    WEB_PORT,
    WORKER_HOSTS,
    Cluster,
    address,
)
from tests.cluster.conftest import sign_in

pytestmark = pytest.mark.cluster


def access_log_lines(cluster: Cluster, host: str, needle: str) -> int:
    log = cluster.run_dir / "logs" / f"{host}.access.log"
    if not log.exists():
        return 0
    return sum(needle in line for line in log.read_text().splitlines())


def test_api_requests_through_the_load_balancer_are_answered_by_both_web_hosts(
    cluster: Cluster,
) -> None:
    before = {host: access_log_lines(cluster, host, "/v1/chat/completions") for host in WEB_HOSTS}
    served: Counter[str] = Counter()
    headers = {"Authorization": f"Bearer {cluster.api_key}"}
    with httpx.Client(base_url=cluster.lb_url, headers=headers, timeout=60) as client:
        for i in range(8):
            answer = client.post(
                "/v1/chat/completions",
                json={"model": MODEL_ALIAS, "messages": [{"role": "user", "content": f"q{i}"}]},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"]
            served[answer.headers["x-barista-web"]] += 1
    # Round robin, no stickiness: each web host answered its share.
    assert served == {"web1": 4, "web2": 4}
    # And the web hosts themselves say so (daphne's access logs), not only HAProxy's header.
    deadline = time.monotonic() + 10
    while True:
        after = {h: access_log_lines(cluster, h, "/v1/chat/completions") for h in WEB_HOSTS}
        if all(after[h] - before[h] >= 4 for h in WEB_HOSTS) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {h: after[h] - before[h] for h in WEB_HOSTS} == {"web1": 4, "web2": 4}


def test_monitoring_sees_the_whole_fleet_from_any_web_host(cluster: Cluster) -> None:
    token = (cluster.secrets_dir / "metrics_token").read_text().strip()
    for host in WEB_HOSTS:
        # Each web host, asked directly (as Prometheus scrapes each target).
        base = f"http://{address(host)}:{WEB_PORT}"
        ready = httpx.get(f"{base}/readyz", headers={"Host": LB_HOST_NAME}, timeout=10)
        assert ready.status_code == 200 and ready.json()["checks"]["workers"] == 2
        metrics = httpx.get(
            f"{base}/metrics",
            headers={"Host": LB_HOST_NAME, "Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert metrics.status_code == 200
        assert "barista_workers 2.0" in metrics.text


async def open_chat(cluster: Cluster, session: str) -> tuple[ClientConnection, str]:
    """A chat socket through the load balancer; and the web host it landed on."""
    socket = await connect(
        f"ws://{cluster.lb_url.removeprefix('http://')}/ws/chat/",
        origin=cluster.lb_url,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={session}"},
        open_timeout=20,
    )
    assert socket.response is not None
    return socket, socket.response.headers["x-barista-web"]


async def next_frame(socket: ClientConnection, timeout: float = 60) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(socket.recv(), timeout))


def ledger_row(ledger: psycopg.Connection[Any], request_id: str) -> tuple[str, str, int]:
    row = ledger.execute(
        "SELECT status, answer, attempts FROM gateway_promptrequest WHERE id = %s",
        [request_id],
    ).fetchone()
    assert row is not None, f"request {request_id} is not in the ledger"
    return row[0], row[1], row[2]


async def test_a_chat_socket_on_one_web_host_gets_the_answer_a_worker_host_made(
    cluster: Cluster, ledger: psycopg.Connection[Any], cluster_redis: redis.Redis
) -> None:
    session = sign_in(cluster).cookies["sessionid"]
    socket, web = await open_chat(cluster, session)
    assert web in WEB_HOSTS
    async with socket:
        await socket.send(json.dumps({"type": "prompt", "model": MODEL_ALIAS, "content": "hi"}))
        accepted = await next_frame(socket)
        assert accepted["type"] == "accepted", accepted
        request_id = accepted["request"]
        frames = []
        while True:
            frame = await next_frame(socket)
            frames.append(frame)
            if frame["type"] in ("done", "failed", "error", "cancelled"):
                break
    assert frame["type"] == "done", frames
    status, answer, _ = ledger_row(ledger, request_id)
    assert status == "done"
    assert frame["content"] == answer and answer
    # The worker that ran it, as RQ recorded it: a host of its own, not the web host.
    worker = cluster_redis.hget(f"rq:job:{request_id}", "worker_name")
    assert worker in {f"gateway-{host}" for host in WORKER_HOSTS}, worker
    print(f"socket on {web}, answered by {worker}, {len(frames)} frames")


async def test_a_web_host_killed_mid_stream_the_page_ends_with_the_ledger_answer_once(
    cluster: Cluster, ledger: psycopg.Connection[Any]
) -> None:
    session = sign_in(cluster).cookies["sessionid"]
    socket, web = await open_chat(cluster, session)
    await socket.send(
        json.dumps({"type": "prompt", "model": MODEL_ALIAS, "content": "a long story please"})
    )
    accepted = await next_frame(socket)
    assert accepted["type"] == "accepted", accepted
    request_id = accepted["request"]
    # Wait for the first tokens: the stream is under way on `web`.
    while (frame := await next_frame(socket))["type"] != "tokens":
        assert frame["type"] in ("status", "queue"), frame
    cluster.kill(web)  # SIGKILL: the host is gone, its sockets with it
    try:
        status, _, _ = ledger_row(ledger, request_id)
        assert status == "running", "the answer ended before the web host died: no proof"
        with pytest.raises(Exception):  # noqa: B017 - the socket is dead, however it says so
            while True:
                await next_frame(socket, timeout=10)
        # The page reconnects through the load balancer: it lands on the other web host
        # (HAProxy redispatches a refused connection, then marks the host down).
        other, landed = await open_chat(cluster, session)
        assert landed != web
        async with other:
            await other.send(json.dumps({"type": "follow", "request": request_id}))
            finals = []
            while True:
                frame = await next_frame(other)
                if frame["type"] == "error":
                    pytest.fail(f"follow refused: {frame}")
                if frame["type"] in ("done", "failed", "cancelled"):
                    finals.append(frame)
                    break
            # Nothing more for this request after its final frame (shown once).
            with pytest.raises(TimeoutError):
                extra = await next_frame(other, timeout=2)
                pytest.fail(f"a frame after the final one: {extra}")
        status, answer, _ = ledger_row(ledger, request_id)
        assert [f["type"] for f in finals] == ["done"] and status == "done"
        assert finals[0]["content"] == answer and answer
        print(f"killed {web} mid-stream; {landed} finished it from the ledger")
    finally:
        cluster.start_web(web)
        cluster.wait_all_web_up()


async def answering(
    socket: ClientConnection, cluster_redis: redis.Redis, content: str
) -> tuple[str, str]:
    """Send a prompt and wait for its first tokens: its request id, and the worker host
    answering it."""
    await socket.send(json.dumps({"type": "prompt", "model": MODEL_ALIAS, "content": content}))
    accepted = await next_frame(socket)
    assert accepted["type"] == "accepted", accepted
    request_id = accepted["request"]
    while (frame := await next_frame(socket))["type"] != "tokens":
        assert frame["type"] in ("status", "queue"), frame
    worker = str(cluster_redis.hget(f"rq:job:{request_id}", "worker_name"))
    host = worker.removeprefix("gateway-")
    assert host in WORKER_HOSTS, worker
    return request_id, host


async def test_a_worker_host_drained_with_sigterm_finishes_its_answer_first(
    cluster: Cluster, ledger: psycopg.Connection[Any], cluster_redis: redis.Redis
) -> None:
    session = sign_in(cluster).cookies["sessionid"]
    socket, _ = await open_chat(cluster, session)
    async with socket:
        request_id, host = await answering(socket, cluster_redis, "go")
        # Drain: SIGTERM, as a process manager stops it for a release.
        drained = asyncio.create_task(asyncio.to_thread(cluster.kill, host, signal.SIGTERM))
        try:
            finals = []
            while True:
                frame = await next_frame(socket)
                if frame["type"] in ("done", "failed", "cancelled", "error"):
                    finals.append(frame)
                    break
            await drained
            assert cluster.services[host].process.returncode is not None
            status, answer, attempts = ledger_row(ledger, request_id)
            assert [f["type"] for f in finals] == ["done"] and status == "done"
            assert finals[0]["content"] == answer and answer
            # Finished by the draining worker within its grace, not run a second time.
            assert attempts == 1
            print(f"drained {host}: its answer finished first ({len(answer)} chars)")
        finally:
            await drained
            cluster.start_worker(host)


@pytest.mark.timeout(300)
async def test_a_worker_host_cut_off_mid_answer_its_prompt_is_answered_once_by_the_other(
    cluster: Cluster, ledger: psycopg.Connection[Any], cluster_redis: redis.Redis
) -> None:
    session = sign_in(cluster).cookies["sessionid"]
    socket, _ = await open_chat(cluster, session)
    async with socket:
        request_id, host = await answering(socket, cluster_redis, "cut")
        worker = f"gateway-{host}"
        cluster.cut(host)
        try:
            status, _, _ = ledger_row(ledger, request_id)
            assert status == "running", "the answer ended before the cut: no proof"
            started = time.monotonic()
            finals = []
            while True:
                # The other workers notice the silent heartbeat (about TTL + maintenance
                # interval, 30 s by default) and run the prompt again.
                frame = await next_frame(socket, timeout=150)
                if frame["type"] in ("done", "failed", "cancelled", "error"):
                    finals.append(frame)
                    break
            took = time.monotonic() - started
            status, answer, attempts = ledger_row(ledger, request_id)
            assert [f["type"] for f in finals] == ["done"] and status == "done"
            assert finals[0]["content"] == answer and answer
            assert attempts == 2
            finisher = str(cluster_redis.hget(f"rq:job:{request_id}", "worker_name"))
            assert finisher != worker and finisher.removeprefix("gateway-") in WORKER_HOSTS
        finally:
            cluster.mend(host)
            mended = datetime.now(UTC)
        # The cut-off host comes back with its stale run: first see it reach Redis again
        # (a heartbeat written after the link came back), then that the ledger holds.
        deadline = time.monotonic() + 60
        back = False
        while not back and time.monotonic() < deadline:
            seen = cluster_redis.hget(f"rq:worker:{worker}", "last_heartbeat")
            back = bool(seen) and datetime.fromisoformat(str(seen)) > mended
            await asyncio.sleep(0.5)
        assert back, f"{worker} did not come back to Redis after its link did"
        assert cluster.services[host].process.poll() is None
        await asyncio.sleep(5)  # its backend call, resumed, has 2.5 s of answer to finish
        assert ledger_row(ledger, request_id) == (status, answer, attempts)
        print(
            f"cut {host} mid-answer; {finisher} answered it after {took:.1f} s; "
            f"one answer recorded, {attempts} attempts"
        )
