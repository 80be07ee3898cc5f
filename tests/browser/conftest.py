from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import global_settings
from playwright.sync_api import Browser, sync_playwright


def chromium_path() -> str:
    path = os.environ.get("BARISTA_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail(
            "Browser tests need Debian's chromium: run `make test` (it installs it) "
            "or set BARISTA_CHROMIUM to a Chromium binary."
        )
    return path


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    # Playwright's sync API keeps an event loop running in this thread, which trips
    # Django's async-safety check on the test's own (plain, sequential) ORM calls. The
    # browser lives only as long as one test, so the check stays on everywhere else.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            # The machine has no network beyond loopback: keep Chromium from trying.
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture(autouse=True)
def _real_password_hasher(settings: Any) -> None:
    # Users made here sign in through a separate daphne process with production settings,
    # which does not know the fast test hasher.
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS


def fill_sign_in(page: Any, username: str) -> None:
    """Fill in the sign-in form the page shows (users made by ``make_user``)."""
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(f"{username}-pw")
    page.get_by_role("button", name="Sign in").click()
