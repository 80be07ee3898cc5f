"""Sign-in is throttled per account and per address: past the bound, even the right
password is refused (429, and the password is not checked) until the window ends."""

from __future__ import annotations

import re

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

PASSWORD = "pw-alice-correct"


def sign_in(username: str, password: str, address: str = "10.0.0.1") -> tuple[int, bool, str]:
    client = Client()
    response = client.post(
        "/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=address
    )
    signed_in = "_auth_user_id" in client.session
    return response.status_code, signed_in, response.content.decode()


def test_an_account_is_locked_after_five_failures_whatever_the_address(alice, bob, settings):
    alice.set_password(PASSWORD)
    alice.save()
    for attempt in range(5):
        status, signed_in, _ = sign_in("alice", "wrong", address=f"10.0.1.{attempt}")
        assert (status, signed_in) == (200, False)
    status, signed_in, page = sign_in("alice", PASSWORD, address="10.0.2.1")
    assert (status, signed_in) == (429, False)
    assert re.search(r"Too many failed sign-ins. Try again in 1?\d minutes?\.", page)
    assert sign_in("ALICE ", PASSWORD)[0] == 429  # the same account, however it is typed
    # Another person from the same addresses is not affected.
    bob.set_password("pw-bob")
    bob.save()
    assert sign_in("bob", "pw-bob", address="10.0.1.0")[:2] == (302, True)

    # The window ends: the right password works again.
    settings.BARISTA_SIGNIN_WINDOW = 1  # a new window (counters are per window)
    assert sign_in("alice", PASSWORD)[:2] == (302, True)


def test_one_address_guessing_many_accounts_is_stopped(alice, settings):
    settings.BARISTA_SIGNIN_ADDRESS_FAILURES = 10
    alice.set_password(PASSWORD)
    alice.save()
    for guess in range(10):
        assert sign_in(f"user{guess}", "guess", address="10.9.9.9")[0] == 200
    assert sign_in("alice", PASSWORD, address="10.9.9.9")[:2] == (429, False)
    assert sign_in("alice", PASSWORD, address="10.9.9.10")[:2] == (302, True)


def test_a_success_clears_the_account_s_failures(alice):
    alice.set_password(PASSWORD)
    alice.save()
    for _ in range(4):
        sign_in("alice", "wrong")
    assert sign_in("alice", PASSWORD)[:2] == (302, True)
    for _ in range(4):
        sign_in("alice", "wrong")
    assert sign_in("alice", PASSWORD)[:2] == (302, True)
