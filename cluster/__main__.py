"""``python -m cluster [up|smoke|clean]``: the cluster of docs/deploy.md on this machine.

up     start it and keep it running until Ctrl-C or SIGTERM, then remove all of it
smoke  start it, send a few requests through the load balancer, remove all of it
clean  remove what a killed run left (processes in its namespaces, namespaces, bridge)
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import time

import httpx

from cluster.harness import (  # noqa: E402
    LB_HOST_NAME,
    MODEL_ALIAS,
    Cluster,
    ClusterUnavailable,
    address,
    clean,
)


def _smoke(cluster: Cluster) -> None:
    served: collections.Counter[str] = collections.Counter()
    headers = {"Authorization": f"Bearer {cluster.api_key}", "Host": LB_HOST_NAME}
    with httpx.Client(base_url=cluster.lb_url, headers=headers, timeout=30) as client:
        for i in range(6):
            answer = client.post(
                "/v1/chat/completions",
                json={"model": MODEL_ALIAS, "messages": [{"role": "user", "content": f"hi {i}"}]},
            )
            answer.raise_for_status()
            served[answer.headers.get("x-barista-web", "?")] += 1
            text = answer.json()["choices"][0]["message"]["content"]
            print(f"  answer {i} via {answer.headers.get('x-barista-web')}: {text[:40]!r}…")
    print(f"• answers per web host: {dict(served)}")
    if len(served) < 2:
        raise SystemExit("smoke: the answers did not come through both web hosts")


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", default="up", choices=["up", "smoke", "clean"])
    command = parser.parse_args().command
    if command == "clean":
        removed = clean()
        print("\n".join(f"removed {thing}" for thing in removed) or "nothing to remove")
        return 0
    cluster = Cluster(log=print)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        try:
            started = time.monotonic()
            cluster.start()
        except ClusterUnavailable as exc:
            print(f"The cluster cannot run here: {exc}", file=sys.stderr)
            return 2
        print(
            f"• up in {time.monotonic() - started:.1f} s. Load balancer: {cluster.lb_url} "
            f"(Host: {LB_HOST_NAME}); user {cluster.username}, password and API key in "
            f"{cluster.secrets_dir}; logs in {cluster.run_dir / 'logs'}"
        )
        if command == "smoke":
            _smoke(cluster)
            return 0
        key_file = cluster.secrets_dir / "api_key"
        print(
            f'  try: curl -H "Authorization: Bearer $(cat {key_file})" '
            f"http://{address('lb')}/v1/models\n  Ctrl-C stops and removes it all."
        )
        reported: set[str] = set()
        while True:
            for key, service in cluster.services.items():
                if key not in reported and service.process.poll() is not None:
                    reported.add(key)
                    print(
                        f"! {key} exited with code {service.process.returncode}; see {service.log}"
                    )
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    finally:
        print("• stopping: processes by PID, then namespaces, veths, bridge")
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
