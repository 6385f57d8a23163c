"""SSRF guard for media downloads: which hosts the backend may connect to, checked on every connection.

A requests adapter whose connections resolve the host name once (`socket.getaddrinfo`), check every address,
and connect to a checked address, so a name cannot resolve to a public address for the check and to a private
one for the connection (DNS rebinding). Since each redirect hop opens (or reuses) a connection through the
adapter, every hop is checked.

Allowed: public (globally routable) addresses; any address of a host named in `allowed` (`host` or
`host:port`) or returned by `trusted()` (Label Studio's host); every address when `allow_private`.
Refused otherwise: private, loopback, link-local, shared, reserved, multicast and unspecified addresses
(IPv4-mapped IPv6 addresses count as their IPv4 address).
With an HTTP(S) proxy configured (HTTP_PROXY, HTTPS_PROXY), the proxy resolves the media host, and only the
proxy's own address is checked.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class HostNotAllowed(Exception):
    """A media host resolved to an address the configuration does not allow."""


def is_public(address: str) -> bool:
    """True for a globally routable unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


@dataclass(frozen=True)
class HostPolicy:
    """Which (host, port) the backend may connect to; see the module docstring."""

    allow_private: bool = False
    allowed: frozenset[str] = frozenset()
    trusted: Callable[[], Iterable[str]] = field(default=lambda: ())

    def named(self, host: str, port: int) -> bool:
        host = host.lower().rstrip(".")
        return (host in self.allowed or f"{host}:{port}" in self.allowed
                or host in {h.lower() for h in self.trusted() if h})

    def resolve(self, host: str, port: int) -> list[tuple]:
        """getaddrinfo results for (host, port), once; HostNotAllowed if any address is not allowed."""
        name = host.strip("[]").rstrip(".")
        infos = socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM)
        if self.allow_private or self.named(name, port):
            return infos
        refused = sorted({info[4][0] for info in infos if not is_public(info[4][0])})
        if refused:
            raise HostNotAllowed(
                f"media host {host}:{port} resolves to a non-public address ({', '.join(refused)}); allow it with "
                "MEDIA_ALLOWED_HOSTS=<host[:port]> or MEDIA_ALLOW_PRIVATE_HOSTS=true")
        return infos


class _GuardedConnection:
    """Mixin for urllib3 connections: connect only to an address `policy` allowed."""

    policy: HostPolicy

    def _new_conn(self):
        infos = self.policy.resolve(self.host, self.port)
        original = self._dns_host
        self._dns_host = infos[0][4][0]  # the checked address; TLS still verifies self.host
        try:
            return super()._new_conn()
        finally:
            self._dns_host = original


class GuardedAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections obey `policy`; mount it for http:// and https://."""

    def __init__(self, policy: HostPolicy, **kwargs):
        self.policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        attrs = {"policy": self.policy}
        http = type("GuardedHTTPConnection", (_GuardedConnection, HTTPConnection), attrs)
        https = type("GuardedHTTPSConnection", (_GuardedConnection, HTTPSConnection), attrs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }


def guard(session, policy: HostPolicy):
    """Mount a GuardedAdapter for http:// and https:// on the requests `session`; returns it."""
    adapter = GuardedAdapter(policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
