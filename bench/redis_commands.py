"""Which Redis commands one API request costs, command by command.

Starts Barista as ``bench.api_overhead`` does (embedded defaults, one worker per core,
daphne), sends ``COUNT`` misses and then ``COUNT`` hits one after another, and prints the
``INFO commandstats`` difference per request for each. Run: ``python -m bench.redis_commands``.
Beside them, the floor RQ itself sets: stock RQ enqueueing ``COUNT`` no-op jobs and its
``SimpleWorker`` running them, on a Redis server of its own started for this run.

``python -m bench.redis_commands --by-key`` says where a miss's commands go instead: it
watches Redis (MONITOR) during ``BENCH_COUNT`` misses and during as long a quiet spell,
and prints the difference per miss by command and key family (a job id, a hash, a second
folded into ``<id>``, ``<hash>``, ``<n>``), so each of Barista's parts (RQ's job records,
the fairness lanes, backends' live state, the cache, merging, metrics, the channel layer)
shows its share. Commands a script runs are listed as well as its EVALSHA.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import redis

from bench.api_overhead import Target, _as_hit, barista
from bench.harness import command_calls, fleet, setup_django

COUNT = int(os.environ.get("BENCH_COUNT", 200))
WIDTHS = (("miss", 8), ("hit", 8), ("RQ no-op job", 14))  # the columns printed


def calls(url: str) -> Counter[str]:
    return command_calls(redis.Redis.from_url(url))


def per_request(target: Target) -> Counter[str]:
    assert target.redis_url is not None
    with httpx.Client(base_url=target.url, headers=target.headers, timeout=30) as client:
        client.post("/v1/chat/completions", json=target.body()).raise_for_status()  # warm
        before = calls(target.redis_url)
        for _ in range(COUNT):
            client.post("/v1/chat/completions", json=target.body()).raise_for_status()
        after = calls(target.redis_url)
    after["info"] -= 1  # this function's own second INFO
    return Counter({k: v for k, v in (after - before).items() if v})


def rq_floor() -> Counter[str]:
    """What stock RQ asks of Redis for ``COUNT`` no-op jobs, enqueued and run (JSON
    serializer, as Barista's), on an embedded Redis of its own."""
    import tempfile
    from pathlib import Path

    from rq import Queue, SimpleWorker
    from rq.serializers import JSONSerializer

    from apps.gateway.localrun import EmbeddedRedis, free_port

    server = EmbeddedRedis(port=free_port(), data_dir=Path(tempfile.mkdtemp()), persist=False)
    server.start()
    try:
        connection = redis.Redis.from_url(server.url)
        queue = Queue("floor", connection=connection, serializer=JSONSerializer)
        before = command_calls(connection)
        for _ in range(COUNT):
            queue.enqueue("builtins.len", [1, 2], result_ttl=60)
        SimpleWorker([queue], connection=connection, serializer=JSONSerializer).work(
            burst=True, logging_level="ERROR"
        )
        after = command_calls(connection)
    finally:
        server.stop()
    after["info"] -= 1  # the second INFO
    return Counter({k: v for k, v in (after - before).items() if v})


def family(command: str) -> str:
    """``HSET rq:job:<id>`` for ``HSET "rq:job:1f0c…" "status" "started"``."""
    words = [word.strip('"') for word in command.split(" ")]
    key = words[1] if len(words) > 1 else ""
    key = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", key)
    key = re.sub(r"[0-9a-f]{32,}", "<hash>", key)
    key = re.sub(r"\d{6,}", "<n>", key)
    return f"{words[0].upper()} {key}".strip()


def watched(url: str, seconds: float, during: Callable[[], None] | None = None) -> Counter[str]:
    """Commands Redis ran in ``seconds`` (while ``during`` runs, if given), by family."""
    found: Counter[str] = Counter()
    ends = time.monotonic() + seconds
    with redis.Redis.from_url(url).monitor() as monitor:
        worker = threading.Thread(target=during or (lambda: None))
        worker.start()
        for event in monitor.listen():
            found[family(event["command"])] += 1
            if time.monotonic() > ends:
                break
        worker.join()
    return found


def by_key(target: Target) -> None:
    assert target.redis_url is not None
    window = max(10.0, COUNT * 0.5)
    with httpx.Client(base_url=target.url, headers=target.headers, timeout=30) as client:

        def misses() -> None:
            for _ in range(COUNT):
                client.post("/v1/chat/completions", json=target.body()).raise_for_status()

        for _ in range(3):  # warm
            client.post("/v1/chat/completions", json=target.body()).raise_for_status()
        quiet = watched(target.redis_url, window)
        busy = watched(target.redis_url, window, misses)
    per_miss = {name: (busy[name] - quiet[name]) / COUNT for name in busy | quiet}
    print(f"per miss ({COUNT} misses in {window:.0f} s, less a quiet {window:.0f} s):")
    for name, count in sorted(per_miss.items(), key=lambda item: -item[1]):
        if abs(count) >= 0.25:
            print(f"{count:8.2f}  {name}")
    print(f"{sum(per_miss.values()):8.2f}  total; quiet: {sum(quiet.values()) / window:.0f}/s")


def main() -> None:
    from apps.gateway.localrun import free_port

    env = setup_django()
    with fleet(env) as running:
        simulator = running.simulator(free_port(), "--ttft", "0", "--tps", "0", "--tokens", "20")
        miss = barista(running, {}, free_port(), simulator)
        if "--by-key" in sys.argv:
            by_key(miss)
            return
        found = {"miss": per_request(miss), "hit": per_request(_as_hit(miss, "hit"))}
        assert miss.redis_url is not None
        # Every request left its channels: a leak would show here.
        left = redis.Redis.from_url(miss.redis_url).pubsub_channels()
    found["RQ no-op job"] = rq_floor()
    names = sorted(set().union(*found.values()), key=lambda n: -found["miss"][n])
    header = "".join(f"{k:>{w}}" for k, w in WIDTHS)
    print(f"{'command':<24}{header}   (per request or job, {COUNT} each)")
    for name in names:
        print(f"{name:<24}" + "".join(f"{found[k][name] / COUNT:>{w}.2f}" for k, w in WIDTHS))
    totals = {k: sum(v.values()) / COUNT for k, v in found.items()}
    print(f"{'total':<24}" + "".join(f"{totals[k]:>{w}.2f}" for k, w in WIDTHS))
    print(f"pub/sub channels still subscribed afterwards: {len(left)} {left[:5]}")


if __name__ == "__main__":
    main()
