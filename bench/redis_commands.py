"""Which Redis commands one API request costs, command by command.

Starts Barista as ``bench.api_overhead`` does (embedded defaults, one worker per core,
daphne), sends ``COUNT`` misses and then ``COUNT`` hits one after another, and prints the
``INFO commandstats`` difference per request for each. Run: ``python -m bench.redis_commands``.
"""

from __future__ import annotations

import os
from collections import Counter

import httpx
import redis

from bench.api_overhead import Target, _as_hit, barista
from bench.harness import command_calls, fleet, setup_django

COUNT = int(os.environ.get("BENCH_COUNT", 200))


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


def main() -> None:
    from apps.gateway.localrun import free_port

    env = setup_django()
    with fleet(env) as running:
        simulator = running.simulator(free_port(), "--ttft", "0", "--tps", "0", "--tokens", "20")
        miss = barista(running, {}, free_port(), simulator)
        found = {"miss": per_request(miss), "hit": per_request(_as_hit(miss, "hit"))}
        assert miss.redis_url is not None
        # Every request left its channels: a leak would show here.
        left = redis.Redis.from_url(miss.redis_url).pubsub_channels()
    names = sorted(set().union(*found.values()), key=lambda n: -found["miss"][n])
    print(f"{'command':<24}{'miss':>8}{'hit':>8}   (per request, {COUNT} requests each)")
    for name in names:
        print(f"{name:<24}{found['miss'][name] / COUNT:>8.2f}{found['hit'][name] / COUNT:>8.2f}")
    totals = {k: sum(v.values()) / COUNT for k, v in found.items()}
    print(f"{'total':<24}{totals['miss']:>8.2f}{totals['hit']:>8.2f}")
    print(f"pub/sub channels still subscribed afterwards: {len(left)} {left[:5]}")


if __name__ == "__main__":
    main()
