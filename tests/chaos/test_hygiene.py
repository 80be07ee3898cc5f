"""Hygiene: Django's deployment checks pass under production settings, and bandit finds
nothing of medium severity or above in Barista's code (the low ones are explained in
docs/security.md)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

from django.conf import settings

from tests.chaos.conftest import record

PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "barista.example.com",
}  # and nothing else: the check passes on the real defaults


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=settings.BASE_DIR,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )


def test_deployment_checks_pass_under_production_settings():
    result = run(
        sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    # And they do fail when production is misconfigured: the check is not a rubber stamp.
    weak = run(
        sys.executable,
        "manage.py",
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={**PRODUCTION, "SECURE_SSL_REDIRECT": "0", "SECURE_HSTS_SECONDS": "0"},
    )
    assert weak.returncode != 0 and "W008" in weak.stderr + weak.stdout
    record("hygiene", check_deploy="no issues (W008/W004 seen when switched off)")


def test_bandit_finds_nothing_of_medium_severity_or_more():
    result = run(sys.executable, "-m", "bandit", "-r", "apps", "project", "-q", "-ll", "-f", "txt")
    assert result.returncode == 0, result.stdout
    everything = run(sys.executable, "-m", "bandit", "-r", "apps", "project", "-q", "-f", "json")
    import json

    low = json.loads(everything.stdout)["results"]
    record(
        "hygiene",
        bandit_medium_or_high=0,
        bandit_low=sorted({f"{r['test_id']} {r['filename']}" for r in low}),
    )
