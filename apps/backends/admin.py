from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from apps.backends.forms import BackendForm
from apps.backends.models import Backend
from apps.backends.services import backend_save


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin[Backend]):
    form = BackendForm  # the API key is write-only and stored encrypted, as in the console
    list_display = [
        "name",
        "alias",
        "kind",
        "model_name",
        "base_url",
        "weight",
        "max_concurrency",
        "state",
        "tier",
        "simulated",
    ]
    list_filter = ["state", "tier", "simulated", "alias"]
    list_editable = ["state", "weight"]
    search_fields = ["name", "alias", "model_name"]

    def save_model(self, request: HttpRequest, obj: Backend, form: Any, change: bool) -> None:
        # The change list's inline form has no key fields: the stored key is kept.
        backend_save(
            backend=obj,
            api_key=form.cleaned_data.get("api_key", ""),
            clear_api_key=form.cleaned_data.get("clear_api_key", False),
        )
