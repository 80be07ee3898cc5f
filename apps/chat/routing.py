from django.urls import path

from apps.chat.consumers import ChatConsumer
from apps.console.consumers import MetricsConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
    path("ws/metrics/", MetricsConsumer.as_asgi()),
]
