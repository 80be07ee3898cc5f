"""Backends are reached only at addresses they may be at, checked where the connection is
made: on what a host name resolves to at that moment (DNS rebinding), with the IPv6 forms
that carry an IPv4 address unwrapped, before a single byte is sent — and the same rule
refuses such an address typed into a backend's URL."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.exceptions import ValidationError
from django.test import Client

from apps.backends.models import Backend
from apps.backends.providers.openai_compat import BackendError, embed
from apps.backends.validators import validate_backend_url
from apps.core import egress
from apps.core.clients import backend_http_client

ALWAYS_REFUSED = [
    ("169.254.169.254", egress.METADATA),
    ("::ffff:169.254.169.254", egress.METADATA),  # IPv4-mapped
    ("64:ff9b::a9fe:a9fe", egress.METADATA),  # NAT64
    ("2002:a9fe:a9fe::1", egress.METADATA),  # 6to4
    ("2001:0:4136:e378:8000:63bf:5601:5601", egress.METADATA),  # Teredo, client 169.254.169.254
    ("::a9fe:a9fe", egress.METADATA),  # IPv4-compatible
    ("100.100.100.200", egress.METADATA),
    ("fd00:ec2::254", egress.METADATA),
    ("169.254.1.1", egress.LINK_LOCAL),
    ("fe80::1", egress.LINK_LOCAL),
    ("fe80::1%eth0", egress.LINK_LOCAL),
    ("::ffff:169.254.1.1", egress.LINK_LOCAL),
    ("0.0.0.0", egress.UNSPECIFIED),  # noqa: S104 — an address to judge, not to bind
    ("::", egress.UNSPECIFIED),
    ("::ffff:0.0.0.0", egress.UNSPECIFIED),
    ("224.0.0.1", egress.MULTICAST),
    ("ff02::1", egress.MULTICAST),
]
PRIVATE = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.9",
    "192.168.1.1",
    "100.64.0.1",
    "::1",
    "fd12:3456::1",
    "::ffff:127.0.0.1",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
]
PUBLIC = ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("allow_private", [True, False])
@pytest.mark.parametrize(("address", "reason"), ALWAYS_REFUSED)
def test_metadata_link_local_unspecified_and_multicast_are_refused_in_every_form(
    address, reason, allow_private
):
    assert egress.refusal(ipaddress.ip_address(address), allow_private=allow_private) == reason


@pytest.mark.parametrize("address", PRIVATE)
def test_private_and_loopback_addresses_are_refused_only_when_the_setting_says_so(address):
    ip = ipaddress.ip_address(address)
    assert egress.refusal(ip, allow_private=True) is None
    assert egress.refusal(ip, allow_private=False) == egress.PRIVATE


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address):
    ip = ipaddress.ip_address(address)
    assert egress.refusal(ip, allow_private=True) is None
    assert egress.refusal(ip, allow_private=False) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://[::ffff:169.254.169.254]/latest",
        "http://[::ffff:a9fe:a9fe]/latest",
        "http://[64:ff9b::a9fe:a9fe]/v1",
        "http://2852039166/latest",  # 169.254.169.254 as one number
        "http://0.0.0.0:8000/v1",
    ],
)
def test_mapped_nat64_and_numeric_forms_are_refused_at_save_time(url):
    with pytest.raises(ValidationError):
        validate_backend_url(url)


def test_private_urls_are_refused_at_save_time_when_the_setting_is_off(settings):
    settings.BARISTA_BACKENDS_ALLOW_PRIVATE = False
    for url in ["http://127.0.0.1:9101/v1", "http://10.0.0.5/v1", "http://127.1/v1"]:
        with pytest.raises(ValidationError, match="BARISTA_BACKENDS_ALLOW_PRIVATE"):
            validate_backend_url(url)
    validate_backend_url("https://api.openai.com/v1")  # names are checked when called


# --- Real connections ---------------------------------------------------------------------


class Listener(socketserver.ThreadingTCPServer):
    """A server on 127.0.0.1 that records every connection it accepts and answers each
    request with a model list."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[bytes] = []
        self.tls = tls
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, peer = super().get_request()
        return (self.tls.wrap_socket(sock, server_side=True) if self.tls else sock), peer

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = self.request.recv(4096)
            if not chunk:
                break
            received += chunk
        self.server.requests.append(received)  # type: ignore[attr-defined]
        body = b'{"data": [{"id": "sim-model"}]}'
        self.request.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def resolving(monkeypatch, answers: dict[str, list[str]]) -> None:
    """Make the guard's resolver answer ``answers`` for these names (a DNS server that
    says what a rebinding attacker's would)."""
    real = egress.resolve

    async def resolve(host: str, port: int) -> list[egress.Address]:
        if host in answers:
            return [ipaddress.ip_address(a) for a in answers[host]]
        return await real(host, port)

    monkeypatch.setattr(egress, "resolve", resolve)


async def get(url: str) -> httpx.Response:
    async with backend_http_client() as client:
        return await client.get(url)


async def test_a_name_that_resolves_to_a_refused_address_is_never_connected_to(
    listener, monkeypatch
):
    # The first answer is the listener itself; the second, the metadata service. Any
    # refused address refuses the name: the listener must see nothing.
    resolving(
        monkeypatch,
        {"rebind.example": ["127.0.0.1", "169.254.169.254"], "good.example": ["127.0.0.1"]},
    )
    with pytest.raises(egress.AddressRefused) as refused:
        await get(f"http://rebind.example:{listener.port}/v1/models")
    assert isinstance(refused.value, httpx.ConnectError)  # every caller's handling applies
    assert str(refused.value) == (
        "refused: rebind.example resolves to 169.254.169.254, a cloud metadata address"
    )

    # The setup could have reached the listener: an allowed name does, at the checked
    # address, still asking for its own name. That is the one connection it accepted.
    response = await get(f"http://good.example:{listener.port}/v1/models")
    assert response.status_code == 200
    assert len(listener.requests) == 1
    assert f"host: good.example:{listener.port}".encode() in listener.requests[0].lower()


async def test_localhost_is_refused_before_connecting_when_private_addresses_are_off(
    listener, settings
):
    settings.BARISTA_BACKENDS_ALLOW_PRIVATE = False
    with pytest.raises(egress.AddressRefused, match="a private or loopback address"):
        await get(f"http://localhost:{listener.port}/v1/models")
    settings.BARISTA_BACKENDS_ALLOW_PRIVATE = True
    assert (await get(f"http://localhost:{listener.port}/v1/models")).status_code == 200
    assert len(listener.requests) == 1  # the allowed call alone


async def test_tls_still_verifies_the_backends_name_not_the_checked_address(tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path, "good.example")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the one CA the client trusts
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    server = Listener(tls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        resolving(monkeypatch, {"good.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
        response = await get(f"https://good.example:{server.port}/v1/models")
        assert response.status_code == 200  # SNI and the certificate say good.example
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await get(f"https://other.example:{server.port}/v1/models")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("host", ["[::ffff:169.254.169.254]", "[64:ff9b::a9fe:a9fe]"])
async def test_mapped_and_nat64_literals_are_refused_at_connect_time(host):
    with pytest.raises(egress.AddressRefused, match="a cloud metadata address"):
        await get(f"http://{host}/latest/meta-data/")


async def test_a_proxy_from_the_environment_does_not_carry_a_call_past_the_check(
    listener, monkeypatch
):
    # A proxy would resolve the name itself, where the guard cannot see: none is used.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{listener.port}")
    resolving(monkeypatch, {"rebind.example": ["169.254.169.254"]})
    with pytest.raises(egress.AddressRefused):
        await get("http://rebind.example/latest/meta-data/")
    resolving(monkeypatch, {"good.example": ["127.0.0.1"]})
    assert (await get(f"http://good.example:{listener.port}/v1/models")).status_code == 200
    assert len(listener.requests) == 1 and listener.requests[0].startswith(b"GET /v1/models ")


async def test_a_refused_backend_fails_the_call_with_a_reason_and_no_address(listener, monkeypatch):
    resolving(monkeypatch, {"rebind.example": ["169.254.169.254"]})
    backend = Backend(name="gpu-1", alias="a", model_name="m", base_url="http://rebind.example/v1")
    async with backend_http_client() as client:
        with pytest.raises(BackendError) as failed:
            await embed(client, backend, inputs=["hi"], params={})
    assert failed.value.message == (
        "refused to call backend gpu-1: it resolves to a cloud metadata address"
    )
    assert not failed.value.unreachable  # no use waiting for it to come back


@pytest.mark.django_db
def test_test_connection_says_the_address_was_refused(staff, listener, settings):
    settings.BARISTA_BACKENDS_ALLOW_PRIVATE = False
    client = Client()
    client.force_login(staff)
    data = {
        "name": "gpu-1",
        "alias": "chat",
        "base_url": f"http://localhost:{listener.port}/v1",
        "model_name": "sim-model",
        "tier": "primary",
        "weight": "1",
        "max_concurrency": "16",
        "timeout": "60",
        "price_input_per_million": "0",
        "price_output_per_million": "0",
        "api_key_env": "",
        "state": "enabled",
        "action": "test",
    }
    page = client.post("/console/backends/add/", data).content.decode()
    assert "refused to call gpu-1: localhost resolves to" in page
    assert "a private or loopback address (BARISTA_BACKENDS_ALLOW_PRIVATE is off)" in page

    settings.BARISTA_BACKENDS_ALLOW_PRIVATE = True
    page = client.post("/console/backends/add/", data).content.decode()
    assert "gpu-1 is up and serves sim-model" in page
    # The allowed test's two requests alone: the refused one sent nothing.
    paths = [request.split(b" ")[1] for request in listener.requests]
    assert paths == [b"/v1/models", b"/metrics"]
