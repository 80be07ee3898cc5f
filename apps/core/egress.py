"""Where backends may be reached, checked where the connection is made.

A backend's base URL is checked when staff save it (``apps.backends.validators``), but a
host name can resolve to anything when it is called (DNS rebinding), and an address can
be written in forms that hide what it reaches (``::ffff:169.254.169.254``,
``64:ff9b::a9fe:a9fe``). So every connection to a backend is checked here, on the
addresses the name resolves to at that moment:

* ``refusal(address)`` — the one rule, shared with the save-time check: never a cloud
  metadata service, a link-local, unspecified or multicast address, and a private or
  loopback one only while ``BARISTA_BACKENDS_ALLOW_PRIVATE`` is on;
* ``GuardedTransport`` — an httpx transport whose connections resolve the host once,
  refuse if any address it resolves to is refused, and then connect to a checked address
  (so a second DNS answer cannot differ). TLS still names the host (SNI, certificate), and
  nothing is sent to a refused address, not even a TCP handshake.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

import httpcore
import httpx
from django.conf import settings

type Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance-metadata services. Most sit at link-local addresses (refused as such anyway);
# these are listed so that they are refused by name and whatever the private setting.
METADATA_ADDRESSES: frozenset[Address] = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, Oracle, DigitalOcean
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task credentials
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("168.63.129.16"),  # Azure WireServer
    }
)

METADATA = "a cloud metadata address"
LINK_LOCAL = "a link-local address"
UNSPECIFIED = "an unspecified address"
MULTICAST = "a multicast address"
PRIVATE = "a private or loopback address"  # refused while BARISTA_BACKENDS_ALLOW_PRIVATE is off

_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # 0.0.0.0 reaches this host on Linux
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated, still parsed by some stacks


def destinations(address: Address) -> list[Address]:
    """The addresses a connection to ``address`` reaches: the IPv4 address an IPv6 one
    carries (IPv4-mapped, NAT64, 6to4, Teredo, IPv4-compatible), else itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    if address.scope_id:  # fe80::1%eth0: the zone changes nothing about what it is
        address = ipaddress.IPv6Address(int(address))
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)  # the Teredo server and the client behind it
    return [address]


def refusal(address: Address, *, allow_private: bool) -> str | None:
    """Why backends may not be reached at ``address`` (say, "a link-local address"), or
    None when they may. Used at save time and at every connection."""
    for target in destinations(address):
        if target in METADATA_ADDRESSES:
            return METADATA
        if target.is_unspecified or target in _THIS_NETWORK:
            return UNSPECIFIED
        if target.is_link_local:
            return LINK_LOCAL
        if target.is_multicast:
            return MULTICAST
        # Not public: private ranges, loopback, shared (CGNAT) and reserved space.
        if not allow_private and not target.is_global:
            return PRIVATE
    return None


class AddressRefused(httpx.ConnectError):
    """A backend's host resolves to an address backends may not be reached at; raised
    before connecting. An ``httpx.ConnectError``, so every caller's handling of a backend
    it cannot reach applies; ``reason`` is safe to show anyone."""

    def __init__(self, host: str, address: Address, reason: str) -> None:
        super().__init__(f"refused: {host} resolves to {address}, {reason}")
        self.host = host
        self.address = address
        self.reason = reason


async def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to, in the resolver's order (tests replace this)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[Address] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ipaddress.ip_address(sockaddr[0])
            if address not in found:
                found.append(address)
    return found


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's asyncio network backend, with every TCP connection checked first."""

    def __init__(self) -> None:
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 — httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                addresses = await resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from None
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        # Any refused address refuses the host: a name that resolves to a public address
        # and to the metadata service must not get a second try at the latter.
        allow_private = settings.BARISTA_BACKENDS_ALLOW_PRIVATE
        for address in addresses:
            reason = refusal(address, allow_private=allow_private)
            if reason is not None:
                raise AddressRefused(host, address, reason)
        # Connect to the checked addresses themselves (in turn, as urllib3 does), never to
        # the name again: a second lookup could answer differently.
        error: Exception = httpcore.ConnectError(f"could not connect to {host}")
        for address in addresses:
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                return await self._backend.connect_tcp(
                    str(address),
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 — httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("backends are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request and error mapping unchanged), whose connections
    go through ``GuardedNetworkBackend``. No proxy: a proxy would resolve the name itself,
    past the check."""

    def __init__(self, *, limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        # Certificates as httpx loads them (SSL_CERT_FILE honoured: which CAs to trust is
        # no way around the check), loaded once for both pools.
        ssl_context = httpx.create_ssl_context()
        super().__init__(verify=ssl_context, limits=limits)
        # httpx (0.28, 0.29) offers no way to hand its pool a network backend, so the pool
        # it made is swapped for one made the same way plus the guard. `_pool` is private
        # to httpx (pinned <1 in pyproject.toml): fail loudly if it ever moves, rather than
        # run unguarded. tests/backends/test_egress.py connects through this class.
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("httpx changed its transport: the backend address guard needs work")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedNetworkBackend(),
        )
