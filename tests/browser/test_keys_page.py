"""A person makes an API key in a real headless Chromium, sees it once, and revokes it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from apps.api.models import ApiKey
from apps.api.services import KEY_REUSE_SECONDS, api_key_authenticate, hash_key
from tests.browser.conftest import fill_sign_in
from tests.conftest import OUTPUT_DIR, make_user, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_make_a_key_see_it_once_then_revoke_it(browser, chat_backend, start_web):
    make_user("kim")
    url = start_web()
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{url}/settings/keys/")
    fill_sign_in(page, "kim")
    page.get_by_label("Name").fill("reporting script")
    page.get_by_label("sim-chat").check()
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key").inner_text()
    assert secret.startswith("bar-") and api_key_authenticate(secret) is not None
    row = page.locator("#keys tbody tr").first
    expect(row).to_contain_text("reporting script")
    expect(row).to_contain_text("sim-chat")
    OUTPUT_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT_DIR / "api-keys.png"), full_page=True)
    page.reload()
    expect(page.locator("#new-key")).to_have_count(0)  # shown once
    assert secret not in page.content()
    row.get_by_role("button", name="Revoke").click()
    expect(page.locator("#keys tbody tr").first).to_contain_text("revoked")
    assert ApiKey.objects.get(hashed=hash_key(secret)).revoked_at is not None
    # Revoked by the web process: this one, which read the key above, refuses it within
    # the second it keeps a key for.
    wait_for(lambda: api_key_authenticate(secret) is None, timeout=KEY_REUSE_SECONDS + 2)
    page.close()
