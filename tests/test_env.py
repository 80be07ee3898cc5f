from __future__ import annotations

import pytest
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


def test_envlist_splits_and_trims(monkeypatch):
    monkeypatch.setenv("HOSTS", " a.example, b.example ,,")
    assert envlist("HOSTS", []) == ["a.example", "b.example"]
