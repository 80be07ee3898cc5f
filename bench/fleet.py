"""The balancer under a mixed fleet: two fast backends, one five times slower, and one that
starts failing (500s) and hanging halfway through. Prompts arrive at about 80 % of the
fleet's capacity; for each strategy, p50/p99 time to answer and the share that failed."""

from __future__ import annotations

import itertools
import time

import httpx
import redis

from bench.harness import fleet, median, ms, percentile, record, setup_django

FAST_TTFT, SLOW_TTFT, CAP = 0.4, 2.0, 4
DURATION = 20.0  # seconds of offered load per strategy
STRATEGIES = ["peak_ewma", "round_robin", "weighted", "least_inflight"]


def main() -> dict[str, dict[str, float]]:
    env = setup_django()
    from django.conf import settings
    from django.contrib.auth.models import User

    from apps.backends.models import Backend
    from apps.gateway.admission import Principal
    from apps.gateway.localrun import free_port, worker_argv
    from apps.gateway.models import PromptRequest
    from apps.gateway.services import request_submit

    conn = redis.Redis.from_url(settings.REDIS_URL)
    user = User.objects.create_user("fleet")
    capacity = 3 * CAP / FAST_TTFT + CAP / SLOW_TTFT  # prompts/s the fleet can answer
    remaining = capacity - CAP / FAST_TTFT  # once the bad one is out
    loads = {
        "80 % of the whole fleet": 0.8 * capacity,
        "80 % of what is left after the turn": 0.8 * remaining,
    }
    results: dict[str, dict[str, float]] = {}
    with fleet(env) as running:
        specs = [
            ("fast-1", FAST_TTFT),
            ("fast-2", FAST_TTFT),
            ("slow", SLOW_TTFT),
            ("turns-bad", FAST_TTFT),
        ]
        ports = {}
        for name, ttft in specs:
            ports[name] = free_port()
            url = running.simulator(
                ports[name], "--ttft", str(ttft), "--tps", "0", "--tokens", "20"
            )
            Backend.objects.create(
                name=name,
                alias="fleet",
                model_name="sim-model",
                base_url=url,
                simulated=True,
                max_concurrency=CAP,
                timeout=3.0,
            )

        def control(name: str, **changes: object) -> None:
            httpx.post(f"http://127.0.0.1:{ports[name]}/control", json=changes).raise_for_status()

        for (load, rate), strategy in itertools.product(loads.items(), STRATEGIES):
            PromptRequest.objects.all().delete()
            for key in conn.scan_iter("barista:backend:*"):
                conn.delete(key)  # every strategy starts with no history
            control("turns-bad", error_rate=0, hang_rate=0, reset_stats=True)
            worker = running.spawn(worker_argv(), BARISTA_BALANCER=strategy)
            time.sleep(2.0)
            started, sent, turned = time.monotonic(), 0, False
            while (elapsed := time.monotonic() - started) < DURATION:
                if not turned and elapsed >= DURATION / 2:
                    control("turns-bad", error_rate=0.5, hang_rate=0.3)
                    turned = True
                while sent < elapsed * rate:
                    request_submit(
                        principal=Principal(user.pk),
                        model="fleet",
                        messages=[{"role": "user", "content": f"q{sent}"}],
                        # Every strategy asks the same questions: measure the balancer,
                        # not the cache.
                        bypass_cache=True,
                    )
                    sent += 1
                time.sleep(0.005)
            deadline = time.monotonic() + 60
            while (
                PromptRequest.objects.filter(status__in=["queued", "running"]).exists()
                and time.monotonic() < deadline
            ):
                time.sleep(0.2)
            worker.terminate()
            worker.wait()
            rows = list(PromptRequest.objects.all())
            times = [
                (r.finished_at - r.queued_at).total_seconds()
                for r in rows
                if r.finished_at and r.status == "done"
            ]
            failed = sum(r.status != "done" for r in rows)
            results[f"{load}|{strategy}"] = {
                "rate": rate,
                "sent": len(rows),
                "p50": median(times),
                "p99": percentile(times, 0.99),
                "failed": failed / len(rows),
            }
            print(load, strategy, results[f"{load}|{strategy}"], flush=True)

    rows_md = []
    for key, r in results.items():
        load, name = key.split("|")
        base = results[f"{load}|round_robin"]["p99"]
        rows_md.append(
            f"| {load} ({r['rate']:.0f}/s) | {name} | {r['sent']:.0f} | {ms(r['p50'])} | "
            f"{ms(r['p99'])} | {r['p99'] / base:.2f} | {r['failed']:.1%} |"
        )
    lines = "\n".join(rows_md)
    table = f"""## Balancer under a mixed fleet

`bench/fleet.py` — four simulated backends, each answering at most {CAP} at once (429 with
Retry-After beyond; Barista's cap for each is the same), per-request timeout 3 s: two
answering in {FAST_TTFT} s, one in {SLOW_TTFT} s (five times slower), and one as fast that,
halfway through each run, starts answering half its requests with HTTP 500 and hanging on
30 %. Prompts arrive steadily for {DURATION:.0f} s, at two loads: 80 % of the whole fleet's
capacity ({capacity:.0f}/s) — after the turn that is more than the three healthy backends
can answer ({remaining:.0f}/s), so every strategy queues — and 80 % of what is left after
the turn. One gateway worker. Time is from submission to the recorded answer; a failed
prompt is one that ended without an answer.

| load | strategy | prompts | p50 | p99 | p99 vs round-robin | failed |
|---|---|---|---|---|---|---|
{lines}

Goal: the default (`peak_ewma`) p99 ≤ 0.5 × round-robin's, and 0 failed prompts."""
    print(table)
    record("fleet", table)
    return results


if __name__ == "__main__":
    main()
