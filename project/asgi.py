"""ASGI entry point: Django views over HTTP, the /v1/ API and websockets on Channels."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

# Imported after Django is set up: consumers import models.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from apps.api.consumers import OpenAIConsumer  # noqa: E402
from apps.chat.consumers import ChatConsumer  # noqa: E402
from apps.console.consumers import MetricsConsumer  # noqa: E402
from apps.core.origin import SameOriginValidator  # noqa: E402

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
    path("ws/metrics/", MetricsConsumer.as_asgi()),
]

application = ProtocolTypeRouter(
    {
        # /v1/ is served by a Channels consumer: no sync middleware, no thread hops, and it
        # can stream events from the worker (DESIGN.md, decision 8). Everything else: Django.
        "http": URLRouter(
            [re_path(r"^v1(?:/|$)", OpenAIConsumer.as_asgi()), re_path(r"", django_asgi_app)]  # type: ignore[arg-type]
        ),
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
