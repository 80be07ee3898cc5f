"""API keys: made on a person's own page, by staff in the console, or by a command; shown
once, stored hashed, revocable; one person never sees or revokes another's."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from apps.api.models import ApiKey, PersonLimits
from apps.api.services import (
    KEY_REUSE_SECONDS,
    api_key_authenticate,
    api_key_create,
    hash_key,
    person_limits_set,
)
from apps.console.models import AuditEntry
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_person_makes_a_key_sees_it_once_and_revokes_it(alice, bob, chat_backend):
    client = signed_in(alice)
    page = client.post(
        "/settings/keys/",
        {"name": "my script", "models": ["sim-chat"], "requests_per_minute": 30},
        follow=True,  # post, redirect, get: a reload makes no second key
    ).content.decode()
    key = ApiKey.objects.get()
    plain = page.split('<code class="secret" id="new-key">')[1].split("</code>")[0]
    assert plain.startswith("bar-") and key.hashed == hash_key(plain)
    assert plain not in key.hashed and key.prefix == plain[:10]
    assert (key.owner, key.name, key.allowed_models, key.requests_per_minute) == (
        alice,
        "my script",
        ["sim-chat"],
        30,
    )
    assert plain not in client.get("/settings/keys/").content.decode()  # never again
    assert api_key_authenticate(plain) == key

    # Bob sees none of it and cannot revoke it.
    assert "my script" not in signed_in(bob).get("/settings/keys/").content.decode()
    assert signed_in(bob).post(f"/settings/keys/{key.pk}/revoke/").status_code == 404
    assert api_key_authenticate(plain) == key

    client.post(f"/settings/keys/{key.pk}/revoke/")
    assert api_key_authenticate(plain) is None
    assert Client().get("/settings/keys/").status_code == 302  # signed out: sign in first


def test_a_key_is_read_once_a_second_and_a_change_is_seen_within_it(
    alice, django_assert_num_queries
):
    key, plain = api_key_create(owner=alice, name="busy program")
    assert api_key_authenticate(plain) == key
    with django_assert_num_queries(0):  # a burst asks the database once
        assert api_key_authenticate(plain) == key
    # Revoked by another process (no signal reaches this one): refused within the second.
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    wait_for(lambda: api_key_authenticate(plain) is None, timeout=KEY_REUSE_SECONDS + 2)

    # A change made here is seen at once: limits staff set, the owner's account.
    key, plain = api_key_create(owner=alice, name="second")

    def person_limit() -> int | None:
        found = api_key_authenticate(plain)
        assert found is not None
        limits = found.principal().person
        return limits.requests_per_minute if limits else None

    assert person_limit() is None
    person_limits_set(
        owner=alice, requests_per_minute=5, tokens_per_minute=None, max_concurrent=None
    )
    assert person_limit() == 5
    alice.is_active = False
    alice.save()
    assert api_key_authenticate(plain) is None


def test_a_new_keys_plaintext_never_rests_in_the_session_table(alice, chat_backend):
    from django.contrib.sessions.models import Session

    client = signed_in(alice)
    response = client.post("/settings/keys/", {"name": "secretive"})
    assert response.status_code == 302
    stored = " ".join(str(s.get_decoded()) + s.session_data for s in Session.objects.all())
    page = client.get("/settings/keys/").content.decode()
    plain = page.split('<code class="secret" id="new-key">')[1].split("</code>")[0]
    assert plain.startswith("bar-") and plain not in stored
    assert plain not in client.get("/settings/keys/").content.decode()  # shown once
    # The session's half alone (another browser with the same session) shows nothing.
    client.post("/settings/keys/", {"name": "second"})
    client.cookies.pop("barista_new_key")
    assert 'id="new-key"' not in client.get("/settings/keys/").content.decode()


def test_limits_past_their_bounds_are_a_form_error_not_a_server_error(alice, chat_backend):
    client = signed_in(alice)
    for field in ("requests_per_minute", "tokens_per_minute", "max_concurrent"):
        response = client.post("/settings/keys/", {"name": "huge", field: 10**20})
        assert response.status_code == 200, field
        assert "Ensure this value is less than or equal to" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_staff_make_and_revoke_keys_in_the_console_audited(staff, alice, chat_backend):
    client = signed_in(staff)
    page = client.post(
        "/console/keys/", {"owner": alice.pk, "name": "for alice"}, follow=True
    ).content.decode()
    plain = page.split('<code class="secret" id="new-key">')[1].split("</code>")[0]
    key = ApiKey.objects.get()
    assert key.owner == alice and api_key_authenticate(plain) == key
    client.post(f"/console/keys/{key.pk}/revoke/")
    assert api_key_authenticate(plain) is None
    assert [e.action for e in AuditEntry.objects.order_by("pk")] == ["key.create", "key.revoke"]
    assert all(plain not in e.detail for e in AuditEntry.objects.all())
    person = signed_in(alice)
    assert person.get("/console/keys/").status_code == 403
    assert person.post(f"/console/keys/{key.pk}/revoke/").status_code == 403


def test_the_command_prints_a_working_key(alice):
    out = io.StringIO()
    call_command("create_api_key", "--user", "alice", "--name", "ci", stdout=out)
    plain = out.getvalue().strip()
    key = api_key_authenticate(plain)
    assert key is not None and key.owner == alice and key.name == "ci"
    with pytest.raises(Exception, match="No user named"):
        call_command("create_api_key", "--user", "nobody", "--name", "x")


def test_a_person_may_hold_only_so_many_keys(alice, staff, chat_backend, settings):
    settings.BARISTA_MAX_KEYS_PER_PERSON = 2
    client = signed_in(alice)
    for name in ("one", "two"):
        assert client.post("/settings/keys/", {"name": name}).status_code == 302
    refused = client.post("/settings/keys/", {"name": "three"})
    assert refused.status_code == 200
    assert "has 2 keys, the most allowed: revoke one" in refused.content.decode()
    # Nor can staff make a third for her.
    page = signed_in(staff).post("/console/keys/", {"owner": alice.pk, "name": "three"})
    assert "has 2 keys, the most allowed" in page.content.decode()
    assert ApiKey.objects.filter(owner=alice).count() == 2
    # A revoked key frees its place.
    ApiKey.objects.filter(name="one").update(revoked_at=timezone.now())
    assert client.post("/settings/keys/", {"name": "three"}).status_code == 302


def test_staff_set_limits_on_a_person_audited(staff, alice, chat_backend):
    client = signed_in(staff)
    response = client.post(
        "/console/keys/limits/",
        {"owner": alice.pk, "requests_per_minute": "30", "max_concurrent": "2"},
        follow=True,
    )
    assert "Limits on alice" in response.content.decode()
    limits = PersonLimits.objects.get(owner=alice)
    assert (limits.requests_per_minute, limits.tokens_per_minute, limits.max_concurrent) == (
        30,
        None,
        2,
    )
    key, _ = api_key_create(owner=alice, name="new")
    person = key.principal().person
    assert person is not None and person.requests_per_minute == 30
    entry = AuditEntry.objects.get(action="person.limits")
    assert entry.target == "alice" and "requests_per_minute=30" in entry.detail
    assert signed_in(alice).post("/console/keys/limits/", {"owner": alice.pk}).status_code == 403
