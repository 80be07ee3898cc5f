from django.contrib import admin

from apps.backends.forms import BackendForm
from apps.backends.models import Backend


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin[Backend]):
    form = BackendForm  # the API key is write-only and stored encrypted, as in the console
    list_display = [
        "name",
        "alias",
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
