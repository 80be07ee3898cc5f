from django.contrib import admin

from apps.gateway.models import PromptRequest


@admin.register(PromptRequest)
class PromptRequestAdmin(admin.ModelAdmin[PromptRequest]):
    list_display = [
        "id",
        "owner",
        "model",
        "status",
        "cache_outcome",
        "backend",
        "source",
        "queued_at",
        "finished_at",
    ]
    list_filter = ["status", "cache_outcome", "source", "model"]
    search_fields = ["id", "owner__username"]
    list_select_related = ["owner", "backend"]
    readonly_fields = [f.name for f in PromptRequest._meta.fields]
    date_hierarchy = "queued_at"

    def has_add_permission(self, request: object) -> bool:
        return False
