from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from project.env import envbool, envint, envlist, envstr


def test_envbool_reads_common_spellings_and_rejects_typos(monkeypatch):
    monkeypatch.setenv("FLAG", "yes")
    assert envbool("FLAG", False) is True
    monkeypatch.setenv("FLAG", "0")
    assert envbool("FLAG", True) is False
    monkeypatch.setenv("FLAG", "ture")
    with pytest.raises(ImproperlyConfigured, match="FLAG"):
        envbool("FLAG", True)


def test_envint_fails_loudly_on_garbage_and_out_of_range(monkeypatch):
    monkeypatch.setenv("N", "80a")
    with pytest.raises(ImproperlyConfigured, match="N must be an integer"):
        envint("N", 1)
    monkeypatch.setenv("N", "0")
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        envint("N", 5, minimum=1)
    monkeypatch.delenv("N")
    assert envint("N", 5) == 5


def test_secrets_can_come_from_a_file(monkeypatch, tmp_path):
    secret = tmp_path / "key"
    secret.write_text("s3cret\n")
    monkeypatch.delenv("TOKEN", raising=False)
    monkeypatch.setenv("TOKEN_FILE", str(secret))
    assert envstr("TOKEN") == "s3cret"


def test_an_empty_value_leaves_the_word_to_the_file(monkeypatch, tmp_path):
    # .env.example lists every name with an empty value; a deployment that copies it and
    # gives the secret as a file must get the file's value, not the empty string.
    secret = tmp_path / "key"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("TOKEN", "")
    monkeypatch.setenv("TOKEN_FILE", str(secret))
    assert envstr("TOKEN") == "s3cret"
    monkeypatch.delenv("TOKEN_FILE")
    assert envstr("TOKEN", "default") == ""  # empty and no file: empty, as before


def test_envlist_splits_and_trims(monkeypatch):
    monkeypatch.setenv("HOSTS", " a.example, b.example ,,")
    assert envlist("HOSTS", []) == ["a.example", "b.example"]


def test_a_list_of_secrets_can_come_from_a_file(monkeypatch, tmp_path):
    urls = tmp_path / "urls"
    urls.write_text("redis://:a@10.0.0.1:6379/0,redis://:b@10.0.0.2:6379/0\n")
    monkeypatch.delenv("SHARDS", raising=False)
    monkeypatch.setenv("SHARDS_FILE", str(urls))
    assert envlist("SHARDS", []) == ["redis://:a@10.0.0.1:6379/0", "redis://:b@10.0.0.2:6379/0"]


def django_check(tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
    """``manage.py check`` in a process of its own, with exactly this configuration."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "REDIS_URL")}
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=settings.BASE_DIR,
        env={**keep, "BARISTA_VAR_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_debug_is_off_unless_asked_and_production_needs_its_settings(tmp_path):
    nothing = django_check(tmp_path)
    assert nothing.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in nothing.stderr
    assert "make up" in nothing.stderr
    no_hosts = django_check(tmp_path, SECRET_KEY="s" * 50)
    assert no_hosts.returncode != 0 and "ALLOWED_HOSTS must be set" in no_hosts.stderr
    production = django_check(tmp_path, SECRET_KEY="s" * 50, ALLOWED_HOSTS="barista.example")
    assert production.returncode == 0, production.stderr
    local = django_check(tmp_path, DEBUG="1")
    assert local.returncode == 0, local.stderr
    key = tmp_path / "secret_key"
    assert key.stat().st_mode & 0o777 == 0o600  # generated private


def test_debug_with_a_host_other_than_this_machine_is_refused(tmp_path):
    exposed = django_check(tmp_path, DEBUG="1", ALLOWED_HOSTS="127.0.0.1,barista.example")
    assert exposed.returncode != 0
    assert "DEBUG is on, which is for this machine only" in exposed.stderr


def test_debug_error_pages_hide_connection_urls_with_their_passwords():
    from project.reporting import SecretUrlsFilter

    safe = SecretUrlsFilter().get_safe_settings()
    assert ":" not in str(safe["REDIS_URL"]) or "*" in str(safe["REDIS_URL"])
    assert settings.REDIS_URL not in str(safe)
