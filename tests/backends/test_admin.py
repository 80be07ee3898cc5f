"""The Django admin stores a backend's key as the console does: encrypted, write-only, and
kept when staff edit other fields (on the form or in the change list)."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.backends.models import Backend

pytestmark = pytest.mark.django_db

SECRET = "sk-admin-canary-7c2e"


def admin_form(**changes: str) -> dict[str, str]:
    data = {
        "name": "gpu-1",
        "alias": "chat",
        "base_url": "http://127.0.0.1:9/v1",
        "model_name": "sim-model",
        "tier": "primary",
        "weight": "1",
        "max_concurrency": "16",
        "timeout": "60",
        "price_input_per_million": "0",
        "price_output_per_million": "0",
        "api_key_env": "",
        "state": "enabled",
    }
    data.update(changes)
    return data


def test_a_key_typed_in_the_admin_is_stored_encrypted_and_kept_on_edit(staff):
    client = Client()
    client.force_login(staff)
    response = client.post("/admin/backends/backend/add/", admin_form(api_key=SECRET))
    assert response.status_code == 302
    backend = Backend.objects.get(name="gpu-1")
    assert backend.api_key() == SECRET
    assert SECRET not in backend.api_key_encrypted

    url = f"/admin/backends/backend/{backend.pk}/change/"
    assert SECRET not in client.get(url).content.decode()
    client.post(url, admin_form(weight="3"))
    backend.refresh_from_db()
    assert (backend.weight, backend.api_key()) == (3, SECRET)

    changelist = {
        "form-TOTAL_FORMS": "1",
        "form-INITIAL_FORMS": "1",
        "form-0-id": str(backend.pk),
        "form-0-state": "draining",
        "form-0-weight": "2",
        "_save": "Save",
    }
    assert client.post("/admin/backends/backend/", changelist).status_code == 302
    backend.refresh_from_db()
    assert (backend.state, backend.weight, backend.api_key()) == ("draining", 2, SECRET)

    client.post(url, admin_form(clear_api_key="on"))
    backend.refresh_from_db()
    assert backend.api_key() == ""
