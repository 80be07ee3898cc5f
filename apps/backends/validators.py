"""Base URLs staff may register. Callers never supply one; these checks keep a mistyped or
malicious registration from pointing workers at cloud metadata services or, when
``BARISTA_BACKENDS_ALLOW_PRIVATE`` is off, the internal network.

An address written in the URL is judged here by the same rule as every connection
(``apps.core.egress.refusal``); a host name is judged when it is called, on what it then
resolves to.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

from apps.core import egress

# A key variable's companion naming the one server its key may go to.
KEY_ORIGIN_SUFFIX = "_ORIGIN"

# Cloud instance-metadata endpoints by name (their addresses are refused by egress).
METADATA_HOSTS = {
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
}


def validate_backend_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"}:
        raise ValidationError("Use an http:// or https:// URL.", code="scheme")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise ValidationError("The URL has no host.", code="host")
    if parts.username or parts.password:
        raise ValidationError(
            "Put credentials in the API key setting, not in the URL.", code="credentials"
        )
    if host in METADATA_HOSTS:
        raise ValidationError("Cloud metadata addresses are refused.", code="metadata")
    address = _literal_address(host)
    if address is None:
        return  # a host name: checked on what it resolves to, at every connection
    reason = egress.refusal(address, allow_private=settings.BARISTA_BACKENDS_ALLOW_PRIVATE)
    if reason is not None:
        hint = " (BARISTA_BACKENDS_ALLOW_PRIVATE is off)" if reason == egress.PRIVATE else ""
        raise ValidationError(
            "%(host)s is %(reason)s: refused.%(hint)s",
            code="address",
            params={"host": host, "reason": reason, "hint": hint},
        )


def _literal_address(host: str) -> egress.Address | None:
    """The address ``host`` is written as, if it is one — including the short and numeric
    IPv4 forms resolvers accept (``127.1``, ``2852039166``)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of a URL (the port its scheme implies when none is written):
    what a key is bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower().rstrip("."), port


def key_variable_origin(variable: str) -> str:
    """Where the operator allows the key in ``variable`` to be sent: the URL in
    ``<variable>_ORIGIN`` (e.g. ``BARISTA_BACKEND_KEY_OPENAI_ORIGIN=https://api.openai.com``),
    or "" when they set none."""
    return os.environ.get(f"{variable}{KEY_ORIGIN_SUFFIX}", "").strip()


def key_variable_refusal(variable: str, base_url: str) -> str | None:
    """Why the key in ``variable`` may not be sent to ``base_url``, or None when it may."""
    allowed = key_variable_origin(variable)
    if allowed and origin(allowed) != origin(base_url):
        return (
            f"{variable} may only be sent to {allowed} (its {variable}{KEY_ORIGIN_SUFFIX} "
            "variable): this URL points at another server."
        )
    return None
