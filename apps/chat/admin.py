from django.contrib import admin

from apps.chat.models import Conversation, Message


class MessageInline(admin.TabularInline[Message, Conversation]):
    model = Message
    extra = 0
    fields = ["content", "request", "created_at"]
    readonly_fields = ["created_at", "request"]


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin[Conversation]):
    list_display = ["title", "owner", "model", "updated_at"]
    search_fields = ["title", "owner__username"]
    list_select_related = ["owner"]
    inlines = [MessageInline]
