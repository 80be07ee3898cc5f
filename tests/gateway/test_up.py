"""`make up` runs `manage.py up`: everything starts, answers, and stops on Ctrl-C."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import httpx
import pytest
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


def test_up_starts_everything_and_ctrl_c_stops_it(tmp_path):
    sims = consecutive_free_ports(5)  # three simulators, the web server, Redis
    web, redis_port = sims + 3, sims + 4
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL"}}
    env.update(
        {
            "BARISTA_VAR_DIR": str(tmp_path),
            "PORT": str(web),
            "BARISTA_EMBEDDED_REDIS_PORT": str(redis_port),
            "BARISTA_SIMULATOR_PORT": str(sims),
            "BARISTA_ADMIN_PASSWORD": "up-test-password",
            "PYTHONUNBUFFERED": "1",
        }
    )
    process = subprocess.Popen(
        [sys.executable, "manage.py", "up", "--workers", "1"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{web}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=90, interval=0.5)
        assert httpx.get(f"http://127.0.0.1:{web}/accounts/login/").status_code == 200
        models = httpx.get(f"http://127.0.0.1:{sims + 2}/v1/models").json()
        assert models["data"][0]["id"] == "sim-slow-model"
        assert (tmp_path / "db.sqlite3").exists()
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "Barista is up" in output
    assert "Stopped." in output
    assert "up-test-password" not in output  # a given password is never echoed
    for port in range(sims, sims + 5):
        assert not port_in_use(port), f"port {port} still open after Ctrl-C"


@pytest.mark.django_db
def test_a_database_from_version_zero_is_refused_with_what_to_do():
    from django.core.management.base import CommandError
    from django.db.migrations.recorder import MigrationRecorder

    from apps.gateway.management.commands.up import _refuse_a_version_zero_database

    _refuse_a_version_zero_database()  # a database of this version: fine
    MigrationRecorder.Migration.objects.create(app="gateway", name="0002_cache_key_coalesced_with")
    with pytest.raises(CommandError, match="version zero.*rm -r var/"):
        _refuse_a_version_zero_database()
