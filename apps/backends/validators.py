"""Base URLs staff may register. Callers never supply one; these checks keep a mistyped or
malicious registration from pointing workers at cloud metadata services."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

# Cloud instance-metadata endpoints by name (addresses are caught by the link-local check).
METADATA_HOSTS = {
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
}
METADATA_ADDRESSES = {
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
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
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a host name: resolved at call time
    if address.is_link_local or address in METADATA_ADDRESSES or address.is_multicast:
        raise ValidationError(
            "Link-local, multicast and cloud metadata addresses are refused.", code="address"
        )
