"""Backends are edited in the console only (its rules: a write-only key, sent only to the
server it was saved for, every change audited); what staff change in the Django admin
reaches the same audit log."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db


def test_backends_are_not_in_the_admin(staff, chat_backend):
    client = Client()
    client.force_login(staff)
    assert client.get("/admin/backends/backend/").status_code == 404
    assert client.get(f"/admin/backends/backend/{chat_backend.pk}/change/").status_code == 404


def test_changes_made_in_the_admin_are_in_the_console_audit_log(staff, alice):
    client = Client()
    client.force_login(staff)
    page = f"/admin/auth/user/{alice.pk}/change/"
    form = {
        "username": alice.username,
        "is_active": "",  # deactivated
        "is_staff": "on",  # and made staff
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "last_login_0": "",
        "last_login_1": "",
    }
    response = client.post(page, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    alice.refresh_from_db()
    assert (alice.is_active, alice.is_staff) == (False, True)
    client.post(f"/admin/auth/user/{alice.pk}/delete/", {"post": "yes"})
    assert not User.objects.filter(pk=alice.pk).exists()

    log = client.get("/console/audit/").content.decode()
    assert "admin.change" in log and "admin.delete" in log
    assert f"user {alice.username}" in log
    assert "Changed Active, Staff status" in log
