"""Websockets are accepted only from a page of this very origin.

Channels' ``AllowedHostsOriginValidator`` compares the Origin's host name with
ALLOWED_HOSTS and ignores scheme and port: a page served by another program on the same
host (``http://127.0.0.1:3000``, say) could open the chat socket with the person's
cookies and read their answers. Here the Origin must equal the request's own origin —
scheme, host and port, as the browser sent them in ``Host`` — or be listed in
``CSRF_TRUSTED_ORIGINS``; and the host must be one ALLOWED_HOSTS names.
"""

from __future__ import annotations

from typing import Any

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host


class SameOriginValidator:
    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not same_origin(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


def same_origin(scope: dict[str, Any]) -> bool:
    headers = {name.lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
    origin, host = headers.get(b"origin"), headers.get(b"host")
    if not origin or not host:
        return False
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:  # TLS ended at a proxy Django is told to trust: its header, first value
        name = proxy[0].removeprefix("HTTP_").replace("_", "-").lower().encode()
        forwarded = headers.get(name, "").split(",")[0].strip()
        if forwarded == proxy[1]:
            scheme = "https"
    return origin in (f"{scheme}://{host}", *settings.CSRF_TRUSTED_ORIGINS)
