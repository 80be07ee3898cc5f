"""The capacity model of issue 20 (docs/scaling.md), measured on the namespace cluster.

``python -m bench.capacity`` (as root; wrap it in ``flock /tmp/barista-cluster.lock`` — one
cluster per machine). It starts the cluster of docs/deploy.md (``cluster.harness``) and:

* swaps its slow simulator (2.5 s an answer) for an instant one, 50 tokens an answer, and
  lifts the backend's concurrency cap, so CPU and Redis — what the model is about — bind;
* gives the queues and the channel layer Redis servers of their own
  (``BARISTA_QUEUE_REDIS_URL``, ``BARISTA_CHANNELS_REDIS_URLS``: more redis-servers on the
  ``redis`` host) and restarts web and worker processes with them, so the three Redis
  roles are counted apart: **main** (cache, merging, live state, counters), **queues**
  (RQ, the fair lane) and **channels** (pub/sub frames);
* measures, in interleaved rounds of 1 and 2 web+worker pairs, prompts/s at a fixed number
  of clients through the load balancer (non-streamed and streamed, each prompt new: a
  cache miss), and per prompt: CPU-seconds of every process tree (daphne, workers,
  PostgreSQL, both Redis servers, HAProxy, the simulator, this load generator, the whole
  machine) and, per Redis role, commands (``INFO commandstats``) and bytes
  (``INFO stats`` total_net_input_bytes / total_net_output_bytes);
* measures the ceiling of one Redis server here with ``redis-benchmark`` (the same
  redis-server binary, on loopback, in the same run);
* predicts from those costs the ceiling of one deployment and how it grows, and compares
  the prediction with what 1 and 2 pairs measured on this machine.

It writes its section of docs/benchmarks.md and the measured part of docs/scaling.md
(between ``<!-- capacity:begin -->`` and ``<!-- capacity:end -->``). It always stops the
cluster it started.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
import redis

from apps.backends.live.leases import _ACQUIRE
from bench.harness import (
    BASE_DIR,
    command_calls,
    command_stats,
    machine,
    median,
    percentile,
    record,
)
from cluster.harness import (
    LB_HOST_NAME,
    MODEL_ALIAS,
    Cluster,
    ClusterUnavailable,
    address,
    check_available,
)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))  # of each configuration, interleaved
CLIENTS = int(os.environ.get("BENCH_CLIENTS", 64))
RAMP = float(os.environ.get("BENCH_RAMP", 3.0))  # seconds of load before a window opens
WINDOW = float(os.environ.get("BENCH_WINDOW", 10.0))  # seconds measured
IDLE_WINDOW = 5.0
TOKENS = 50
CHANNELS_PORT = 6380
CHANNELS_KEY = "redis-channels"
QUEUES_PORT = 6381
QUEUES_KEY = "redis-queues"
# For the model's table: cores of each host kind (an assumption, said in the doc).
HOST_CORES = 4
NETWORK_BYTES_PER_SECOND = 125_000_000  # 1 Gbit/s
BENCH_REQUESTS = 100_000
BENCH_CLIENTS = 50
PUBLISH_PAYLOAD = 400  # bytes; about one token frame (the run prints the measured size)
SCALING_DOC = BASE_DIR / "docs" / "scaling.md"
BEGIN, END = "<!-- capacity:begin -->", "<!-- capacity:end -->"
MODEL_LINK = " The model built on these figures: [scaling.md](scaling.md)."

# Process tree -> the kind of process it is counted as.
KINDS = {
    "web1": "web",
    "web2": "web",
    "worker1": "worker",
    "worker2": "worker",
    "db": "postgres",
    "redis": "redis-main",
    QUEUES_KEY: "redis-queues",
    CHANNELS_KEY: "redis-channels",
    "lb": "haproxy",
    "sim": "simulator",
}
KIND_ORDER = [
    "web",
    "worker",
    "postgres",
    "redis-main",
    "redis-queues",
    "redis-channels",
    "haproxy",
    "simulator",
    "load generator",
    "kernel",
    "machine (all)",
]
ROLES = ("main", "queues", "channels")
ROLE_NAMES = {"main": "main Redis", "queues": "queue Redis", "channels": "channel Redis"}

# One of Barista's Lua scripts as it is: the kind of command the main Redis mostly runs,
# for redis-benchmark's EVALSHA test.
LEASE_SCRIPT = _ACQUIRE.text


def say(line: str) -> None:
    print(line, flush=True)


# --- Counting ----------------------------------------------------------------------------


def tree_cpu(pid: int) -> tuple[float, set[int]]:
    """CPU-seconds of a process and all its descendants, live or reaped (each node's own
    time plus what its reaped children left in its children_* fields), and their PIDs."""
    try:
        nodes = [psutil.Process(pid)]
        nodes += nodes[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0, set()
    total = 0.0
    for node in nodes:
        try:
            t = node.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total, {node.pid for node in nodes}


def others_cpu(mine: set[int]) -> float:
    """CPU-seconds of every user-space process that is neither the cluster's nor this
    one: the machine is shared, and what others use is not Barista's cost."""
    total = 0.0
    for proc in psutil.process_iter(["ppid", "cpu_times"]):
        info = proc.info
        # Kernel threads (children of kthreadd, PID 2) are the kernel's share, counted
        # with the machine's remainder.
        if proc.pid in mine or proc.pid == 2 or info["ppid"] == 2 or info["cpu_times"] is None:
            continue
        t = info["cpu_times"]
        total += t.user + t.system + t.children_user + t.children_system
    return total


def machine_busy() -> tuple[float, float]:
    """CPU-seconds the machine was busy, and those the hypervisor took (steal)."""
    t = psutil.cpu_times()
    # Guest time is already inside user; idle, iowait and steal are not this machine's work.
    return t.user + t.nice + t.system + t.irq + t.softirq, getattr(t, "steal", 0.0)


@dataclass
class RedisCounters:
    calls: Counter[str]
    usec: Counter[str]
    net_in: int
    net_out: int


def redis_counters(client: redis.Redis) -> RedisCounters:
    calls, usec = command_stats(client)
    net = client.info("stats")
    return RedisCounters(
        calls=calls,
        usec=usec,
        net_in=int(net["total_net_input_bytes"]),
        net_out=int(net["total_net_output_bytes"]),
    )


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, tuple[int, float]]  # service key -> (pid, CPU-seconds of its tree)
    loadgen: float
    others: float
    busy: float
    steal: float
    redis: dict[str, RedisCounters]


def snapshot(cluster: Cluster, clients: dict[str, redis.Redis]) -> Snapshot:
    """Every reading at once, as nearly as can be; ``at`` is the middle of the readings,
    which the window's prompts are counted against."""
    started = time.monotonic()
    cpu = {}
    mine = {os.getpid()}
    for key, service in cluster.services.items():
        if key in KINDS and service.process.poll() is None:
            seconds, pids = tree_cpu(service.process.pid)
            cpu[key] = (service.process.pid, seconds)
            mine |= pids
    own = psutil.Process().cpu_times()
    busy, steal = machine_busy()
    others = others_cpu(mine)
    counters = {role: redis_counters(client) for role, client in clients.items()}
    return Snapshot(
        at=(started + time.monotonic()) / 2,
        cpu=cpu,
        loadgen=own.user + own.system,
        others=others,
        busy=busy,
        steal=steal,
        redis=counters,
    )


@dataclass
class RoleCost:
    commands: float = 0.0  # per prompt, as INFO commandstats counts (Lua's inner calls too)
    scripts: float = 0.0  # EVALSHA + EVAL per prompt
    publishes: float = 0.0
    usec: float = 0.0  # µs in commands per prompt (a script's inner calls counted twice)
    bytes_in: float = 0.0
    bytes_out: float = 0.0
    calls: dict[str, float] = field(default_factory=dict)  # per prompt, by command


@dataclass
class Window:
    pairs: int
    stream: bool
    prompts: int = 0
    failed: int = 0
    seconds: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    cpu_ms: dict[str, float] = field(default_factory=dict)  # kind -> CPU-ms per prompt
    by_process_ms: dict[str, float] = field(default_factory=dict)  # service key -> the same
    busy_cores: float = 0.0
    others_cores: float = 0.0  # what processes outside this benchmark used meanwhile
    steal_cores: float = 0.0  # what the hypervisor gave to other machines
    redis: dict[str, RoleCost] = field(default_factory=dict)
    by_web: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.prompts / self.seconds if self.seconds else 0.0


def costs(
    before: Snapshot, after: Snapshot, prompts: int, window: Window, per_second: bool = False
) -> None:
    """Fill ``window`` with what happened between two snapshots, per prompt (or, with
    ``per_second``, per second of the window)."""
    per = (after.at - before.at) if per_second else max(prompts, 1)
    window.seconds = after.at - before.at
    kinds: dict[str, float] = dict.fromkeys(KINDS.values(), 0.0)
    for key, (pid, seconds) in after.cpu.items():
        if key in before.cpu and before.cpu[key][0] == pid:
            kinds[KINDS[key]] += seconds - before.cpu[key][1]
            window.by_process_ms[key] = (seconds - before.cpu[key][1]) * 1000 / per
    window.cpu_ms = {
        kind: kinds[kind] * 1000 / per for kind in KIND_ORDER if kind in KINDS.values()
    }
    window.cpu_ms["load generator"] = (after.loadgen - before.loadgen) * 1000 / per
    others = after.others - before.others
    mine = after.busy - before.busy - others
    window.cpu_ms["kernel"] = (mine - sum(kinds.values()) - after.loadgen + before.loadgen) * (
        1000 / per
    )
    window.cpu_ms["machine (all)"] = mine * 1000 / per
    window.busy_cores = (after.busy - before.busy) / window.seconds
    window.others_cores = others / window.seconds
    window.steal_cores = (after.steal - before.steal) / window.seconds
    for role in ROLES:
        a, b = before.redis[role], after.redis[role]
        calls = b.calls - a.calls
        # Less the two INFO commands of the first snapshot (the second's are not counted
        # in its own reading).
        calls["info"] -= 2
        calls = +calls
        usec = b.usec - a.usec
        window.redis[role] = RoleCost(
            commands=sum(calls.values()) / per,
            scripts=(calls["evalsha"] + calls["eval"]) / per,
            publishes=calls["publish"] / per,
            usec=(sum(usec.values()) - usec["info"]) / per,
            bytes_in=(b.net_in - a.net_in) / per,
            bytes_out=(b.net_out - a.net_out) / per,
            calls={name: n / per for name, n in calls.items()},
        )


# --- Load ----------------------------------------------------------------------------------


class Connection:
    """One client's keep-alive HTTP/1.1 connection to the load balancer, spoken by hand.

    httpx cost about 5 CPU-ms a request here (measured against the instant simulator), a
    tenth of what a prompt costs Barista, on the same two cores; this costs a fraction of
    that, leaving the cores to what is measured. It speaks exactly what HAProxy answers:
    a Content-Length body or a chunked one."""

    def __init__(self, head: bytes, host: str, port: int) -> None:
        self.head, self.host, self.port = head, host, port  # head: up to "Content-Length: "
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader = self.reader
        self.writer.write(b"%s%d\r\n\r\n%s" % (self.head, len(body), body))
        await self.writer.drain()
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int((await reader.readline()).split(b";")[0], 16):
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            while (await reader.readline()) not in (b"\r\n", b""):
                pass  # trailers
            data = b"".join(parts)
        else:
            data = await reader.read()
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, data


async def ask(connection: Connection, stream: bool) -> tuple[bool, str]:
    body = {
        "model": MODEL_ALIAS,
        # New every time: a cache miss, answered by a worker.
        "messages": [{"role": "user", "content": f"capacity {uuid.uuid4().hex}"}],
        "stream": stream,
    }
    try:
        status, headers, data = await asyncio.wait_for(
            connection.post(json.dumps(body).encode()), timeout=60
        )
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
        connection.close()
        return False, "?"
    ok = status == 200 and (b"[DONE]" in data if stream else b'"choices"' in data)
    return ok, headers.get("x-barista-web", "?")


async def load(
    cluster: Cluster,
    clients: dict[str, redis.Redis],
    *,
    pairs: int,
    stream: bool,
    ramp: float = RAMP,
    window: float = WINDOW,
    measure: bool = True,
) -> Window:
    """CLIENTS clients asking in a loop; after ``ramp`` s, ``window`` s are measured."""
    result = Window(pairs=pairs, stream=stream)
    # (finished at, seconds taken, web host or None if it failed), counted afterwards
    # against the instants of the two snapshots, so prompts, CPU and Redis counters
    # cover one and the same interval.
    answers: list[tuple[float, float, str | None]] = []
    stop = asyncio.Event()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: {LB_HOST_NAME}\r\n"
        f"Authorization: Bearer {cluster.api_key}\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: "
    ).encode()

    async def one_client() -> None:
        connection = Connection(head, address("lb"), 80)
        try:
            while not stop.is_set():
                started = time.monotonic()
                ok, web = await ask(connection, stream)
                finished = time.monotonic()
                answers.append((finished, finished - started, web if ok else None))
        finally:
            connection.close()

    tasks = [asyncio.create_task(one_client()) for _ in range(CLIENTS)]
    await asyncio.sleep(ramp)
    opened = time.monotonic()
    before = await asyncio.to_thread(snapshot, cluster, clients) if measure else None
    await asyncio.sleep(window)
    after = await asyncio.to_thread(snapshot, cluster, clients) if measure else None
    closed = time.monotonic()
    stop.set()
    await asyncio.gather(*tasks)
    if before is not None and after is not None:
        opened, closed = before.at, after.at
    latencies: list[float] = []
    by_web: Counter[str] = Counter()
    for finished, took, web in answers:
        if not opened <= finished < closed:
            continue
        if web is None:
            result.failed += 1
        else:
            result.prompts += 1
            latencies.append(took)
            by_web[web] += 1
    result.seconds = closed - opened
    if before is not None and after is not None:
        costs(before, after, result.prompts, result)
    if latencies:
        result.p50, result.p99 = median(latencies), percentile(latencies, 0.99)
    result.by_web = dict(by_web)
    return result


# --- The cluster, as this benchmark needs it ----------------------------------------------


def start_role_redis(cluster: Cluster, key: str, port: int) -> str:
    """Another redis-server on the ``redis`` host, for one role alone. Listed with the
    cluster's services: its PID goes to the state file `clean` reads, and the
    namespace's removal ends it if this run does not."""
    return cluster.start_redis_server(key, port, secrets.token_urlsafe(24))


def start_fast_simulator(cluster: Cluster) -> None:
    cluster.kill("sim", signal.SIGTERM)
    cluster.start_simulator(ttft=0, tps=0, tokens=TOKENS)


def wait_worker(cluster: Cluster, host: str, queues: redis.Redis) -> None:
    """Until the worker on ``host`` has registered with RQ (on the queues' Redis)."""
    deadline = time.monotonic() + 90
    while not queues.sismember("rq:workers", f"rq:worker:gateway-{host}"):
        cluster._check_alive(host)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker on {host} did not register")
        time.sleep(0.2)


def start_worker(cluster: Cluster, host: str, queues: redis.Redis) -> None:
    # RQ refuses a second worker of the same name while the first is still registered.
    deadline = time.monotonic() + 30
    while queues.sismember("rq:workers", f"rq:worker:gateway-{host}"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the stopped worker on {host} is still registered")
        time.sleep(0.2)
    cluster.start_worker(host)
    wait_worker(cluster, host, queues)


def restart_all(cluster: Cluster, extra: dict[str, str], queues: redis.Redis) -> None:
    """Web and worker processes again, with ``extra`` in their environment (and in that
    of any started later)."""
    cluster.env_overrides.update(extra)
    for host in ("web1", "web2", "worker1", "worker2"):
        cluster.kill(host, signal.SIGTERM)
    for host in ("worker1", "worker2"):
        start_worker(cluster, host, queues)
    for host in ("web1", "web2"):
        cluster.start_web(host)  # waits until its /readyz says ready
    cluster.wait_all_web_up(timeout=60)


def configure(cluster: Cluster, pairs: int, queues: redis.Redis) -> None:
    """1 pair: web2 drained at the load balancer, worker2 stopped. 2 pairs: both back."""
    if pairs == 1:
        cluster.lb_command("disable server web/web2")
        cluster.kill("worker2", signal.SIGTERM)
        state = cluster.web_states().get("web2", "")
        assert state.startswith("MAINT"), f"web2 is {state}, not drained"
    else:
        if cluster.services["worker2"].process.poll() is not None:
            start_worker(cluster, "worker2", queues)
        cluster.lb_command("enable server web/web2")
        cluster.wait_all_web_up(timeout=60)


def lift_backend_cap(cluster: Cluster) -> None:
    # The registered backend's default cap (32 in flight) must not be what binds: the
    # model is about CPU and Redis. (bench.api_overhead registers its simulator likewise.)
    cluster.manage(
        "shell",
        stdin=(
            "from apps.backends.models import Backend\n"
            f"Backend.objects.filter(alias={MODEL_ALIAS!r}).update(max_concurrency=10000)\n"
        ),
    )


# --- The ceiling of one Redis server ------------------------------------------------------


@dataclass
class Ceiling:
    test: str
    ops: float  # per second, as redis-benchmark reports
    cpu_us: float  # redis-server CPU-µs per operation
    counted: int  # commands INFO commandstats counts per operation

    @property
    def per_core(self) -> float:
        """Operations per second of one Redis core: the ceiling where Redis itself binds."""
        return 1e6 / self.cpu_us if self.cpu_us else 0.0


def redis_ceiling() -> list[Ceiling]:
    """redis-benchmark against the cluster's redis-server binary, on loopback, no
    pipelining, 50 clients: simple commands, PUBLISH to one subscriber, and one of
    Barista's Lua scripts by EVALSHA."""
    from apps.gateway.localrun import free_port
    from cluster.harness import _redis_server

    tool, cli = shutil.which("redis-benchmark"), shutil.which("redis-cli")
    if tool is None or cli is None:
        say("redis-benchmark is not installed (apt-get install redis-tools): no ceiling")
        return []
    port, password = free_port(), secrets.token_urlsafe(16)
    server = subprocess.Popen(
        [_redis_server(), "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    assert server.stdin is not None
    server.stdin.write(
        f'port {port}\nbind 127.0.0.1\nrequirepass "{password}"\nsave ""\nappendonly no\n'.encode()
    )
    server.stdin.close()
    subscriber = None
    try:
        client = redis.Redis(port=port, password=password)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        sha = client.script_load(LEASE_SCRIPT)
        # One subscriber, as a web process is to every frame of its requests.
        subscriber = subprocess.Popen(
            [cli, "-p", str(port), "subscribe", "bench:frames"],
            env=os.environ | {"REDISCLI_AUTH": password},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        tests: list[tuple[str, list[str]]] = [
            (name, ["-t", name.lower()]) for name in ("SET", "GET", "INCR", "LPUSH", "RPOP")
        ]
        tests += [
            (
                f"PUBLISH {PUBLISH_PAYLOAD} B, 1 subscriber",
                ["publish", "bench:frames", "x" * PUBLISH_PAYLOAD],
            ),
            (
                "EVALSHA lease script (5 calls inside)",
                ["-r", "100000", "evalsha", sha, "1", "bench:lease:__rand_int__", "1000000"]
                + ["60", "m:__rand_int__"],
            ),
        ]
        rows = []
        redis_process = psutil.Process(server.pid)
        for name, args in tests:
            calls = command_calls(client).total()
            cpu = redis_process.cpu_times()
            # The password on the command line: a throwaway server on loopback, gone in a
            # minute (redis-benchmark reads no password from the environment).
            done = subprocess.run(
                [tool, "-h", "127.0.0.1", "-p", str(port), "-a", password, "--csv"]
                + ["-n", str(BENCH_REQUESTS), "-c", str(BENCH_CLIENTS), *args],
                capture_output=True,
                text=True,
                check=True,
            )
            after = redis_process.cpu_times()
            used = after.user + after.system - cpu.user - cpu.system
            calls = command_calls(client).total() - calls
            counted = round(calls / BENCH_REQUESTS)  # INFO commandstats' count per operation
            ops = 0.0
            for row in csv.reader(done.stdout.splitlines()):
                try:
                    ops = float(row[1])
                except (IndexError, ValueError):
                    continue
            rows.append(Ceiling(name, ops, used * 1e6 / BENCH_REQUESTS, counted))
            say(f"  redis-benchmark {name}: {ops:,.0f} ops/s, {rows[-1].cpu_us:.1f} µs CPU/op")
        return rows
    finally:
        if subscriber is not None:
            subscriber.terminate()
            subscriber.wait()
        server.terminate()
        server.wait()


# --- The run -------------------------------------------------------------------------------


@dataclass
class Run:
    windows: list[Window] = field(default_factory=list)
    idle: Window | None = None
    ceiling: list[Ceiling] = field(default_factory=list)
    frame_bytes: float = 0.0


async def rounds(cluster: Cluster, clients: dict[str, redis.Redis], run: Run) -> None:
    queues = clients["queues"]
    say("• warm-up: both pairs, both kinds of request")
    for stream in (False, True):
        warm = await load(cluster, clients, pairs=2, stream=stream, ramp=3, window=1, measure=False)
        say(f"  {warm.prompts} answered, {warm.failed} failed")
    say(f"• idle: {IDLE_WINDOW:.0f} s with no prompt (background: health checks, heartbeats)")
    before = snapshot(cluster, clients)
    await asyncio.sleep(IDLE_WINDOW)
    after = snapshot(cluster, clients)
    run.idle = Window(pairs=2, stream=False)
    costs(before, after, 0, run.idle, per_second=True)
    for round_ in range(ROUNDS):
        for pairs in (1, 2):
            configure(cluster, pairs, queues)
            for stream in (False, True):
                window = await load(cluster, clients, pairs=pairs, stream=stream)
                run.windows.append(window)
                split = ", ".join(
                    f"{k} {v:.1f}"
                    for k, v in window.by_process_ms.items()
                    if KINDS[k] in ("web", "worker")
                )
                say(
                    f"  round {round_ + 1}, {pairs} pair(s), "
                    f"{'streamed' if stream else 'whole'}: {window.rps:.0f} prompts/s "
                    f"({window.failed} failed, p99 {window.p99:.1f} s); cores busy "
                    f"{window.busy_cores:.2f}, of which others' {window.others_cores:.2f}, "
                    f"stolen {window.steal_cores:.2f}; "
                    f"CPU-ms per prompt: {split}, load generator "
                    f"{window.cpu_ms['load generator']:.1f}, kernel {window.cpu_ms['kernel']:.1f}"
                    f"; main Redis {window.redis['main'].commands:.0f} commands, queue Redis "
                    f"{window.redis['queues'].commands:.0f}; "
                    f"answered by {window.by_web}"
                )


def measure_cluster(run: Run) -> None:
    cluster = Cluster(log=say)
    # Refused (another cluster is here): nothing of ours to stop, and theirs is left alone.
    cluster.start()
    failed = True
    try:
        say("• instant simulator, backend cap lifted; queues and channel layer on Redis apart")
        start_fast_simulator(cluster)
        lift_backend_cap(cluster)
        queues_url = start_role_redis(cluster, QUEUES_KEY, QUEUES_PORT)
        channels_url = start_role_redis(cluster, CHANNELS_KEY, CHANNELS_PORT)
        clients = {
            "main": redis.Redis.from_url(cluster.redis_url),
            "queues": redis.Redis.from_url(queues_url),
            "channels": redis.Redis.from_url(channels_url),
        }
        env = {"BARISTA_QUEUE_REDIS_URL": queues_url, "BARISTA_CHANNELS_REDIS_URLS": channels_url}
        restart_all(cluster, env, clients["queues"])
        asyncio.run(rounds(cluster, clients, run))
        publishes = sum(w.redis["channels"].publishes for w in run.windows if not w.stream)
        if publishes:
            ins = [w.redis["channels"] for w in run.windows if not w.stream]
            run.frame_bytes = median([c.bytes_in / c.publishes for c in ins if c.publishes])
        failed = False
    finally:
        say("• stopping the cluster")
        # After a failure its run directory stays for reading (logs; also its data and
        # secrets, which a throwaway cluster's are); `make cluster-clean` removes it.
        cluster.stop(remove_files=not failed)
        if failed:
            say(f"! logs kept in {cluster.run_dir / 'logs'}")


def main() -> None:
    try:
        check_available()
    except ClusterUnavailable as exc:
        print(f"capacity: no cluster on this machine ({exc}); nothing measured")
        return

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so that every `finally` stops what it started

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = time.monotonic()
    run = Run()
    say("• the ceiling of one Redis server (redis-benchmark, loopback)")
    run.ceiling = redis_ceiling()
    try:
        measure_cluster(run)
    except ClusterUnavailable as exc:
        print(f"capacity: {exc}; nothing measured")
        return
    say(f"• done in {time.monotonic() - started:.0f} s")
    markdown = report(run)
    print(markdown)
    record("capacity", markdown)
    write_scaling(markdown)


# --- The model and the report ------------------------------------------------------------


def med_cost(windows: list[Window], get: Callable[[Window], float]) -> float:
    values = [float(get(w)) for w in windows]
    return median(values) if values else 0.0


@dataclass
class Costs:
    """Median costs per prompt of one set of windows."""

    rps: float
    cpu: dict[str, float]
    redis: dict[str, RoleCost]
    busy_cores: float
    others_cores: float
    steal_cores: float
    p50: float
    p99: float
    by_process: dict[str, float]

    @classmethod
    def of(cls, windows: list[Window]) -> Costs:
        cpu = {k: median([w.cpu_ms.get(k, 0.0) for w in windows] or [0.0]) for k in KIND_ORDER}
        roles = {}
        for role in ROLES:
            cost = roles[role] = RoleCost()
            for n in RoleCost.__dataclass_fields__:
                if n != "calls":
                    setattr(cost, n, median([getattr(w.redis[role], n) for w in windows] or [0]))
            names = {name for w in windows for name in w.redis[role].calls}
            cost.calls = {
                name: median([w.redis[role].calls.get(name, 0.0) for w in windows])
                for name in names
            }
        return cls(
            rps=med_cost(windows, lambda w: w.rps),
            cpu=cpu,
            redis=roles,
            busy_cores=med_cost(windows, lambda w: w.busy_cores),
            others_cores=med_cost(windows, lambda w: w.others_cores),
            steal_cores=med_cost(windows, lambda w: w.steal_cores),
            p50=med_cost(windows, lambda w: w.p50),
            p99=med_cost(windows, lambda w: w.p99),
            by_process={
                key: median([w.by_process_ms.get(key, 0.0) for w in windows] or [0.0])
                for key in KINDS
            },
        )


def box_prediction(c: Costs, pairs: int, cores: float) -> tuple[float, str]:
    """Prompts/s this machine should answer with ``pairs`` web+worker pairs, from costs
    per prompt: each Python process and each Redis server is one core at most, and all of
    them (and the load generator, and the kernel) share the ``cores`` left to them."""
    processes = "1 process" if pairs == 1 else f"{pairs} processes"
    bounds = {
        f"{processes} web, 1 core each": pairs * 1000 / c.cpu["web"],
        f"{processes} worker, 1 core each": pairs * 1000 / c.cpu["worker"],
        "main Redis, 1 core": 1000 / c.cpu["redis-main"],
        "queue Redis, 1 core": 1000 / c.cpu["redis-queues"],
        f"the {cores:.3f} cores left by others": cores * 1000 / c.cpu["machine (all)"],
    }
    binding = min(bounds, key=lambda k: bounds[k])
    return bounds[binding], binding


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def report(run: Run) -> str:
    whole = [w for w in run.windows if not w.stream]
    one = Costs.of([w for w in whole if w.pairs == 1])
    two = Costs.of([w for w in whole if w.pairs == 2])
    one_s = Costs.of([w for w in run.windows if w.stream and w.pairs == 1])
    two_s = Costs.of([w for w in run.windows if w.stream and w.pairs == 2])
    cols = [("1 pair", one), ("2 pairs", two), ("1 pair, streamed", one_s)]
    cols.append(("2 pairs, streamed", two_s))
    cores = os.cpu_count() or 1

    def row(label: str, get: Callable[[Costs], float], digits: int = 1, source: str = "") -> str:
        cells = " | ".join(fmt(get(c), digits) for _, c in cols)
        return f"| {label} | {cells} | {source} |"

    tree = "process tree"

    def redis_rows(role: str, name: str, *, first: bool = False) -> list[str]:
        def of(c: Costs) -> RoleCost:
            return c.redis[role]

        return [
            row(
                f"{name}: commands",
                lambda c: of(c).commands,
                1,
                "INFO commandstats Δ calls (calls inside Lua scripts included)"
                if first
                else "as above",
            ),
            row(f"{name}: of which EVALSHA/EVAL", lambda c: of(c).scripts, 1, ""),
            row(
                f"{name}: µs in commands",
                lambda c: of(c).usec,
                0,
                "Δ usec (a script's inner calls counted in it and again on their own)"
                if first
                else "",
            ),
            row(
                f"{name}: bytes in",
                lambda c: of(c).bytes_in,
                0,
                "INFO stats Δ total_net_input_bytes" if first else "",
            ),
            row(
                f"{name}: bytes out",
                lambda c: of(c).bytes_out,
                0,
                "INFO stats Δ total_net_output_bytes" if first else "",
            ),
        ]

    costs_table = [
        "| per prompt | " + " | ".join(n for n, _ in cols) + " | source |",
        "|---|" + "---|" * len(cols) + "---|",
        row("**prompts/s**", lambda c: c.rps, 0, f"answered in the window, {CLIENTS} clients"),
        row("latency p50, s", lambda c: c.p50, 2, "client side, through HAProxy"),
        row("latency p99, s", lambda c: c.p99, 2, "client side"),
        row("web (daphne) CPU, ms", lambda c: c.cpu["web"], 2, "process trees web1 + web2"),
        row("worker CPU, ms", lambda c: c.cpu["worker"], 2, "worker1 + worker2"),
        row("PostgreSQL CPU, ms", lambda c: c.cpu["postgres"], 2, "postmaster and backends"),
        row("main Redis CPU, ms", lambda c: c.cpu["redis-main"], 2, "redis-server :6379"),
        row(
            "queue Redis CPU, ms",
            lambda c: c.cpu["redis-queues"],
            2,
            f"redis-server :{QUEUES_PORT}",
        ),
        row(
            "channel Redis CPU, ms",
            lambda c: c.cpu["redis-channels"],
            2,
            f"redis-server :{CHANNELS_PORT}",
        ),
        row("HAProxy CPU, ms", lambda c: c.cpu["haproxy"], 2, tree),
        row("simulator CPU, ms", lambda c: c.cpu["simulator"], 2, tree),
        row("load generator CPU, ms", lambda c: c.cpu["load generator"], 2, "this process"),
        row(
            "kernel CPU, ms",
            lambda c: c.cpu["kernel"],
            2,
            "busy time no process accounts for: ≈ 0, as the kernel's work is charged to the "
            "processes; slightly below 0 when readings taken a moment apart disagree",
        ),
        row(
            "**all of the above**, ms",
            lambda c: c.cpu["machine (all)"],
            2,
            "/proc/stat busy (user+nice+system+irq+softirq) less other processes'",
        ),
        row("cores busy, whole machine", lambda c: c.busy_cores, 2, f"of {cores}"),
        row(
            "cores used by other processes",
            lambda c: c.others_cores,
            2,
            "not this benchmark's (the machine is shared); not counted above",
        ),
        row(
            "cores stolen by the hypervisor",
            lambda c: c.steal_cores,
            2,
            "/proc/stat steal: a virtual machine's neighbours",
        ),
        *redis_rows("main", "main Redis", first=True),
        *redis_rows("queues", "queue Redis"),
        row("channel Redis: commands", lambda c: c.redis["channels"].commands, 1, "as above"),
        row("channel Redis: of which PUBLISH", lambda c: c.redis["channels"].publishes, 1, ""),
        row("channel Redis: bytes in", lambda c: c.redis["channels"].bytes_in, 0, "as above"),
        row("channel Redis: bytes out", lambda c: c.redis["channels"].bytes_out, 0, "as above"),
    ]
    split = [
        "| CPU-ms per prompt (all prompts) | web1 | web2 | worker1 | worker2 |",
        "|---|---|---|---|---|",
    ]
    for name, c in cols:
        cells = " | ".join(f"{c.by_process[k]:.2f}" for k in ("web1", "web2"))
        cells += " | " + " | ".join(f"{c.by_process[k]:.2f}" for k in ("worker1", "worker2"))
        split.append(f"| {name} | {cells} |")
    tops = []
    for role in ROLES:
        most = sorted(one.redis[role].calls.items(), key=lambda item: -item[1])[:6]
        listed = ", ".join(f"{name} {n:.1f}" for name, n in most)
        tops.append(f"- {ROLE_NAMES[role]}: {listed}")
    idle_line = ""
    if run.idle is not None:
        idle = run.idle
        background = sum(idle.by_process_ms.values())
        busy_main = one.rps * one.redis["main"].commands
        busy_queues = one.rps * one.redis["queues"].commands
        idle_line = (
            f"With no prompts at all (2 pairs, {IDLE_WINDOW:.0f} s), the cluster's own "
            f"background — HAProxy's health checks, heartbeats, backend health checks — "
            f"used {background:.0f} CPU-ms a second, "
            f"{idle.redis['main'].commands:.0f} main-Redis commands a second and "
            f"{idle.redis['queues'].commands:.0f} queue-Redis commands: at 1 pair's "
            f"rate, {100 * background / (one.rps * one.cpu['machine (all)']):.0f} % of the "
            f"CPU, {100 * idle.redis['main'].commands / busy_main:.0f} % of the main "
            f"Redis's commands and {100 * idle.redis['queues'].commands / busy_queues:.0f} % "
            "of the queue Redis's, left in the per-prompt figures."
        )

    ceiling_table = [
        "| redis-benchmark test | ops/s | redis-server CPU per op | ops/s per Redis core "
        "(1 s ÷ CPU per op) |",
        "|---|---|---|---|",
    ]
    for t in run.ceiling:
        ceiling_table.append(f"| {t.test} | {fmt(t.ops)} | {t.cpu_us:.1f} µs | {fmt(t.per_core)} |")
    simple = [c for c in run.ceiling if c.counted == 1 and not c.test.startswith("PUBLISH")]
    simple_core = median([c.per_core for c in simple]) if simple else 0.0
    simple_us = median([c.cpu_us for c in simple]) if simple else 0.0
    publish = next((c for c in run.ceiling if c.test.startswith("PUBLISH")), None)
    evalsha = next((c for c in run.ceiling if c.test.startswith("EVALSHA")), None)
    frame = f"{run.frame_bytes:.0f} B" if run.frame_bytes else "—"
    ceiling_notes = ""
    if evalsha is not None and publish is not None:
        ceiling_notes = (
            f"An EVALSHA of Barista's lease script counted as {evalsha.counted} commands in "
            f"INFO commandstats (the script and the calls in it) and cost {evalsha.cpu_us:.1f} µs "
            f"of Redis CPU, against {simple_us:.1f} µs for a simple command and "
            f"{publish.cpu_us:.1f} µs for a PUBLISH to one subscriber (the channel Redis took "
            f"{frame} in per PUBLISH of the cluster's frames, framing, channel names and "
            "subscriptions included). redis-benchmark shares this machine's "
            f"{cores} cores with the server, so its ops/s is what it could push; the last "
            "column is what one Redis core would do."
        )

    # --- The model: separate machines, from the 1-pair rounds' costs ---
    m, ms = one, one_s
    main_cpu, chan_cpu = m.cpu["redis-main"], m.cpu["redis-channels"]
    queue_cpu = m.cpu["redis-queues"]
    main_cmds, queue_cmds = m.redis["main"].commands, m.redis["queues"].commands
    main_bytes = m.redis["main"].bytes_in + m.redis["main"].bytes_out
    queue_bytes = m.redis["queues"].bytes_in + m.redis["queues"].bytes_out
    chan_bytes = m.redis["channels"].bytes_in + m.redis["channels"].bytes_out
    per_web_core = 1000 / m.cpu["web"]
    per_worker_core = 1000 / m.cpu["worker"]
    per_pg_core = 1000 / m.cpu["postgres"]
    main_cap = 1000 / main_cpu
    queue_cap = 1000 / queue_cpu
    chan_cap = 1000 / chan_cpu
    lb_per_core = 1000 / m.cpu["haproxy"]
    model_rows = [
        "| component | cost per prompt | predicted ceiling | formula (source) |",
        "|---|---|---|---|",
        f"| web host | {m.cpu['web']:.2f} CPU-ms (streamed {ms.cpu['web']:.2f}) | "
        f"{fmt(per_web_core)} prompts/s per core (streamed {fmt(1000 / ms.cpu['web'])}) | "
        "1 s ÷ daphne CPU per prompt; one daphne per core |",
        f"| worker host | {m.cpu['worker']:.2f} CPU-ms (streamed {ms.cpu['worker']:.2f}) | "
        f"{fmt(per_worker_core)} prompts/s per core (streamed "
        f"{fmt(1000 / ms.cpu['worker'])}) | 1 s ÷ run_worker CPU per prompt; one worker per "
        "core |",
        f"| PostgreSQL | {m.cpu['postgres']:.2f} CPU-ms | {fmt(per_pg_core)} prompts/s per "
        "core | 1 s ÷ postgres CPU per prompt (CPU only: the cluster runs fsync=off) |",
    ]
    for name, cpu, cmds, nbytes, cap, why in (
        ("main Redis", main_cpu, main_cmds, main_bytes, main_cap, "one server (Lua scripts)"),
        ("queue Redis", queue_cpu, queue_cmds, queue_bytes, queue_cap, "one server (RQ)"),
    ):
        model_rows.append(
            f"| **{name}** | {cpu:.2f} CPU-ms, {cmds:.0f} commands, {fmt(nbytes)} B | "
            f"**{fmt(cap)} prompts/s for the whole deployment** | 1 core ÷ redis-server CPU "
            f"per prompt: single-threaded, {why} |"
        )
        if simple_core:  # redis-benchmark ran
            each = cpu * 1000 / cmds
            model_rows.append(
                f"| {name}, by command count | {cmds:.0f} commands ({each:.1f} µs each) | "
                f"{fmt(simple_core / cmds)} prompts/s | simple commands per Redis core "
                f"({fmt(simple_core)}/s, redis-benchmark) ÷ commands per prompt; here a "
                f"command cost {each:.1f} µs of Redis CPU on average, a simple one "
                f"{simple_us:.1f} |"
            )
        model_rows.append(
            f"| {name}, network | {fmt(nbytes)} B in + out | "
            f"{fmt(NETWORK_BYTES_PER_SECOND / nbytes)} prompts/s | 1 Gbit/s ÷ bytes |"
        )
    model_rows.append(
        f"| main and queue Redis as one server (the default) | {main_cpu + queue_cpu:.2f} "
        f"CPU-ms, {main_cmds + queue_cmds:.0f} commands | "
        f"{fmt(1000 / (main_cpu + queue_cpu))} prompts/s for the whole deployment | 1 core ÷ "
        "the two roles' CPU per prompt together |"
    )
    model_rows += [
        f"| channel Redis | {chan_cpu:.2f} CPU-ms (streamed {ms.cpu['redis-channels']:.2f}), "
        f"{m.redis['channels'].publishes:.1f} PUBLISH, {fmt(chan_bytes)} B | "
        f"{fmt(chan_cap)} prompts/s per shard | 1 core ÷ CPU per prompt, × shards "
        "(BARISTA_CHANNELS_REDIS_URLS) |",
        f"| HAProxy | {m.cpu['haproxy']:.2f} CPU-ms | {fmt(lb_per_core)} prompts/s per core | "
        "1 s ÷ haproxy CPU per prompt |",
    ]

    def deployment(n: int, shards: int, *, queues_apart: bool) -> tuple[float, str]:
        bounds = {
            "web hosts": n * HOST_CORES * per_web_core,
            "worker hosts": n * HOST_CORES * per_worker_core,
            "channel Redis": shards * chan_cap,
            "PostgreSQL": HOST_CORES * per_pg_core,
            "HAProxy": HOST_CORES * lb_per_core,
        }
        if queues_apart:
            bounds["main Redis"] = main_cap
            bounds["queue Redis"] = queue_cap
            bounds["main Redis's network"] = NETWORK_BYTES_PER_SECOND / main_bytes
            bounds["queue Redis's network"] = NETWORK_BYTES_PER_SECOND / queue_bytes
        else:  # the default: one Redis for both roles
            bounds["main Redis"] = 1000 / (main_cpu + queue_cpu)
            bounds["main Redis's network"] = NETWORK_BYTES_PER_SECOND / (main_bytes + queue_bytes)
        binding = min(bounds, key=lambda k: bounds[k])
        return bounds[binding], binding

    growth = [
        f"| web hosts + worker hosts ({HOST_CORES} cores each) | channel Redis shards | "
        "predicted prompts/s, queues on a Redis of their own | bound by | "
        "with the queues on the main Redis (the default) | bound by |",
        "|---|---|---|---|---|---|",
    ]
    for n, shards in ((1, 1), (2, 1), (3, 1), (4, 1), (6, 1), (8, 1), (8, 4)):
        apart, apart_bound = deployment(n, shards, queues_apart=True)
        shared, shared_bound = deployment(n, shards, queues_apart=False)
        growth.append(
            f"| {n} + {n} | {shards} | {fmt(apart)} | {apart_bound} | {fmt(shared)} | "
            f"{shared_bound} |"
        )

    # --- This machine: predicted from the 1-pair costs, against what was measured ---
    box = [
        "| this machine | predicted prompts/s | bound by | measured, median | per round |",
        "|---|---|---|---|---|",
    ]
    predicted = {}
    for pairs, measured, kind in ((1, one, "whole"), (2, two, "whole")):
        left = cores - measured.others_cores
        predicted[pairs], binding = box_prediction(one, pairs, left)
        per_round = ", ".join(fmt(w.rps) for w in whole if w.pairs == pairs)
        box.append(
            f"| {pairs} pair{'s' if pairs > 1 else ''}, {kind} answers | "
            f"{fmt(predicted[pairs])} | {binding} | {fmt(measured.rps)} | {per_round} |"
        )
    ratio = two.rps / one.rps if one.rps else 0.0
    ratio_s = two_s.rps / one_s.rps if one_s.rps else 0.0
    failed = sum(w.failed for w in run.windows)
    nl = "\n"
    return f"""## Capacity: per-prompt costs, one Redis's ceiling, 1 and 2 web+worker pairs

`python -m bench capacity` (root; the namespace cluster of docs/deploy.md, with an instant
simulator — {TOKENS} tokens, no delay — the backend's cap lifted, and the queues and the
channel layer each on a Redis server of its own). Every prompt new (a cache miss), {CLIENTS}
clients through HAProxy; {ROUNDS} interleaved rounds of 1 pair (web2 drained at HAProxy,
worker2 stopped) and 2 pairs, each a {WINDOW:.0f} s window of whole answers and one of
streamed answers, after {RAMP:.0f} s of load. Medians of the rounds; {failed} prompt(s)
failed.{MODEL_LINK}

{nl.join(costs_table)}

CPU rows: the Δ CPU-seconds (utime + stime, psutil; reaped children included) of each
process tree over the window, ÷ prompts answered in it. Redis rows: Δ of `INFO
commandstats` and `INFO stats` over the same window, ÷ the same prompts.

Each Redis role's commands per prompt, most frequent (1 pair, whole
answers, medians of the rounds): {"; ".join(t.removeprefix("- ") for t in tops)}.

How the work spread over the processes (CPU-ms of each process ÷ all prompts answered):

{nl.join(split)}

{idle_line}

### The ceiling of one Redis server, same run

redis-server {redis_version()} (the cluster's binary) on loopback, `redis-benchmark -n
{BENCH_REQUESTS} -c {BENCH_CLIENTS}`, no pipelining:

{nl.join(ceiling_table)}

{ceiling_notes}

### Predicted: one deployment on separate machines

From the 1-pair rounds' costs. Each Python process and each Redis server uses one core at
most.

{nl.join(model_rows)}

How it grows (whole answers; hosts of {HOST_CORES} cores; PostgreSQL and HAProxy on one such
host each):

{nl.join(growth)}

### Predicted against measured: this machine

Every host here shares the same {cores} cores, so the prediction is the least of: what each
web and worker process can do on one core, what one Redis core can do, and what the cores
left by other processes can do at the total CPU per prompt (cluster, load generator and
kernel). Predicted from the 1-pair rounds' costs, for both configurations:

{nl.join(box)}

2 pairs ÷ 1 pair: measured {ratio:.2f}× (streamed {ratio_s:.2f}×), predicted
{predicted[2] / predicted[1]:.2f}×.
"""


def redis_version() -> str:
    from cluster.harness import _redis_server

    out = subprocess.run(
        [_redis_server(), "--version"], capture_output=True, text=True, check=False
    ).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return "?"


def write_scaling(markdown: str) -> None:
    """Refresh the measured part of docs/scaling.md; the prose around it stays."""
    # Its own heading and the link to this very doc are the benchmarks page's.
    body = markdown.split("\n", 1)[1].replace(MODEL_LINK, "").strip()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"{BEGIN}\n{body}\n\n_Measured {stamp} on {machine()}._\n{END}"
    text = SCALING_DOC.read_text() if SCALING_DOC.exists() else "# Scaling Barista\n"
    if BEGIN in text and END in text:
        start, rest = text.split(BEGIN, 1)
        text = start + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    SCALING_DOC.write_text(text)


if __name__ == "__main__":
    main()
