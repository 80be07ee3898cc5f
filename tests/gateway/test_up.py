"""`make up` runs `manage.py up`: everything starts, answers, survives a dead worker, and
stops on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading

import httpx
import pytest
import redis
from django.core.management import call_command

from apps.backends.models import Backend
from apps.gateway.localrun import port_in_use
from tests.conftest import BASE_DIR, wait_for


@pytest.mark.django_db
def test_first_run_setup_creates_the_admin_and_three_simulated_backends_once(monkeypatch):
    from django.contrib.auth.models import User

    monkeypatch.setenv("BARISTA_ADMIN_USER", "boss")
    monkeypatch.setenv("BARISTA_ADMIN_PASSWORD", "a-long-pass-phrase")
    call_command("barista_setup")
    call_command("barista_setup")
    boss = User.objects.get(username="boss")
    assert boss.is_superuser and boss.check_password("a-long-pass-phrase")
    backends = list(Backend.objects.order_by("name"))
    assert [b.name for b in backends] == ["sim-fast", "sim-medium", "sim-slow"]
    assert all(b.simulated for b in backends)
    assert sorted({b.alias for b in backends}) == ["sim-chat", "sim-deep"]
    assert sum(b.alias == "sim-chat" for b in backends) == 2


def consecutive_free_ports(count: int) -> int:
    # Below Linux's ephemeral range (32768+), where outgoing connections take source ports
    # and could grab one of ours between this check and the bind.
    for _ in range(100):
        base = random.randrange(20_000, 32_000)
        if not any(port_in_use(base + i) for i in range(count)):
            return base
    raise RuntimeError("no run of free ports")


def up_env(tmp_path, sims: int) -> dict[str, str]:
    """`make up`'s defaults, on ports and in a directory of the test's own."""
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL"}}
    env.update(
        {
            "BARISTA_VAR_DIR": str(tmp_path),
            "PORT": str(sims + 3),
            "BARISTA_EMBEDDED_REDIS_PORT": str(sims + 4),
            "BARISTA_SIMULATOR_PORT": str(sims),
            "BARISTA_ADMIN_PASSWORD": "up-test-password",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_up(env: dict[str, str], *, workers: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", "up", "--workers", str(workers)],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def ready(web: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{web}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_up_starts_everything_and_ctrl_c_stops_it(tmp_path):
    sims = consecutive_free_ports(5)  # three simulators, the web server, Redis
    web = sims + 3
    process = start_up(up_env(tmp_path, sims), workers=1)
    try:
        wait_for(lambda: ready(web), timeout=90, interval=0.5)
        assert httpx.get(f"http://127.0.0.1:{web}/accounts/login/").status_code == 200
        models = httpx.get(f"http://127.0.0.1:{sims + 2}/v1/models").json()
        assert models["data"][0]["id"] == "sim-slow-model"
        assert (tmp_path / "db.sqlite3").exists()
        # The embedded Redis wants the password generated for this checkout, kept private.
        password_file = tmp_path / "redis_password"
        assert password_file.stat().st_mode & 0o777 == 0o600
        password = password_file.read_text().strip()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=sims + 4).ping()
        assert redis.Redis(host="127.0.0.1", port=sims + 4, password=password).ping()
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "Barista is up" in output
    assert "Stopped." in output
    assert "up-test-password" not in output  # a given password is never echoed
    assert (tmp_path / "redis_password").read_text().strip() not in output
    for port in range(sims, sims + 5):
        assert not port_in_use(port), f"port {port} still open after Ctrl-C"


def test_make_up_stops_when_make_alone_is_sent_sigint(tmp_path):
    """`kill -INT <make's pid>` reaches make only (not the terminal's whole group, as
    Ctrl-C does), and GNU make does not pass it on: `up` sees it and stops everything."""
    sims = consecutive_free_ports(5)
    web = sims + 3
    env = {**up_env(tmp_path, sims), "BARISTA_WORKERS": "1"}
    make = subprocess.Popen(
        ["make", "--no-print-directory", "up"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group: the signal goes to make and nothing else
    )
    try:
        wait_for(lambda: ready(web), timeout=120, interval=0.5)
        make.send_signal(signal.SIGINT)
        output, _ = make.communicate(timeout=60)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    assert "make was interrupted: stopping" in output
    assert "Stopped." in output
    for port in range(sims, sims + 5):
        assert not port_in_use(port), f"port {port} still open after make was interrupted"


class Output:
    """A process's output, read as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def search(self, pattern: str) -> re.Match[str] | None:
        return re.search(pattern, self.text)


@pytest.mark.timeout(300)
def test_a_worker_killed_under_up_is_restarted_and_every_prompt_in_flight_answered_once(
    tmp_path,
):
    prompts = 200
    sims = consecutive_free_ports(5)
    web = sims + 3
    env = up_env(tmp_path, sims)
    process = start_up(env, workers=2)
    output = Output(process)
    try:
        wait_for(lambda: ready(web), timeout=90, interval=0.5, describe=lambda: output.text)
        # `up` prints its children's pids once everything answers (after /readyz does).
        pids = wait_for(lambda: output.search(r"worker 1 (\d+)"), describe=lambda: output.text)
        doomed = int(pids.group(1))
        key = subprocess.run(
            [sys.executable, "manage.py", "create_api_key", "--user", "admin", "--name", "load"],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

        async def burst() -> list[httpx.Response]:
            answered = 0
            limits = httpx.Limits(max_connections=prompts + 10)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{web}/v1",
                headers={"Authorization": f"Bearer {key}"},
                timeout=120,
                limits=limits,
            ) as client:

                async def ask(index: int) -> httpx.Response:
                    nonlocal answered
                    response = await client.post(
                        "/chat/completions",
                        json={
                            "model": "sim-chat",
                            "messages": [{"role": "user", "content": f"plum {index:03d}"}],
                        },
                    )
                    answered += 1
                    return response

                tasks = [asyncio.create_task(ask(i)) for i in range(prompts)]
                # Prompts are streaming from both workers: kill one of them.
                while answered < 10:
                    await asyncio.sleep(0.05)
                os.kill(doomed, signal.SIGKILL)
                return await asyncio.gather(*tasks)

        responses = asyncio.run(burst())
        for index, response in enumerate(responses):
            assert response.status_code == 200, (index, response.text)
            assert f'"plum {index:03d}"' in response.json()["choices"][0]["message"]["content"]
        restarted = output.search(r"worker 1 restarted \(pid (\d+)\)")
        assert restarted, output.text
        os.kill(int(restarted.group(1)), 0)  # it runs
        assert "worker 1 exited unexpectedly (code -9); restarting in 1 s" in output.text
        assert process.poll() is None  # and the rest never stopped
        with sqlite3.connect(tmp_path / "db.sqlite3") as db:
            rows = db.execute(
                "SELECT status, COUNT(*), MAX(attempts) FROM gateway_promptrequest GROUP BY status"
            ).fetchall()
        assert [(status, count) for status, count, _ in rows] == [("done", prompts)]
        assert rows[0][2] == 2  # the killed worker held prompts; each was answered once more
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    assert process.returncode == 0, output.text


@pytest.mark.django_db
def test_a_database_from_version_zero_is_refused_with_what_to_do():
    from django.core.management.base import CommandError
    from django.db.migrations.recorder import MigrationRecorder

    from apps.gateway.management.commands.up import _refuse_a_version_zero_database

    _refuse_a_version_zero_database()  # a database of this version: fine
    MigrationRecorder.Migration.objects.create(app="gateway", name="0002_cache_key_coalesced_with")
    with pytest.raises(CommandError, match="version zero.*rm -r var/"):
        _refuse_a_version_zero_database()
