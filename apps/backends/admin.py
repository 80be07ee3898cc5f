from django.contrib import admin

from apps.backends.models import Backend


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin[Backend]):
    list_display = [
        "name",
        "alias",
        "model_name",
        "base_url",
        "weight",
        "max_concurrency",
        "enabled",
        "simulated",
    ]
    list_filter = ["enabled", "simulated", "alias"]
    list_editable = ["enabled", "weight"]
    search_fields = ["name", "alias", "model_name"]
