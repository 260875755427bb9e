"""Which network addresses sources and notifications may reach.

A job's source URL and notify_url come from untrusted clients, and the
encoder or scheduler connects to them from inside the network. So a host
name is resolved once, each address is checked here, and the connection is
made to the checked address (never to the name again: a second lookup may
answer differently, DNS rebinding). Every redirect hop is checked the same
way.

Refused always:
- the cloud metadata service (link-local addresses, fd00:ec2::254): it
  hands out the machine's credentials;
- the API's own address and port: a notification must not cancel jobs;
- unspecified and multicast addresses.
Refused when the API listens beyond loopback (a shared service): every
address that is not globally routable (loopback, private, shared, link-local,
documentation ...), unless `settings.outbound_allowed` lists its network or
its host name.

Refusals are ReachRefused with one message that never says what, if
anything, listens there.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from core.errors import NommerError
from core.settings import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA_NETWORKS = (ipaddress.ip_network("169.254.0.0/16"),
                      ipaddress.ip_network("fe80::/10"),
                      ipaddress.ip_network("fd00:ec2::254/128"))
REFUSED_MESSAGE = "its address is not one this service may reach"


class ReachRefused(NommerError):
    """The host may not be reached (policy), or its name does not resolve."""


def is_loopback_host(host: str) -> bool:
    """True when `host` (an address or "localhost") only accepts local connections."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_refusal(settings: Settings) -> str | None:
    """Why the API must not start with `settings`, or None when it may."""
    if not is_loopback_host(settings.api_host) and not settings.api_token:
        return (f"refusing to listen on {settings.api_host}: it is reachable from other "
                "machines and no api_token is set. Set api_token (clients then send "
                "'Authorization: Bearer <token>') or listen on 127.0.0.1.")
    return None


def _plain(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def is_metadata_address(address: Address) -> bool:
    address = _plain(address)
    return any(address in net for net in _METADATA_NETWORKS if net.version == address.version)


class Reach:
    """The address policy for one process, built from its settings."""

    def __init__(self, settings: Settings):
        self.public_only = not is_loopback_host(settings.api_host)
        self.api_port = settings.api_port
        self._api_addresses = _addresses_of(settings.api_host)
        self._allowed_networks = []
        self._allowed_hosts = set()
        for entry in settings.outbound_allowed:
            try:
                self._allowed_networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._allowed_hosts.add(entry.strip().rstrip(".").lower())

    def resolve(self, host: str, port: int) -> str:
        """The address to connect to for `host`:`port`: the first one the name
        resolves to that this policy allows. Raises ReachRefused."""
        host = host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError, ValueError):
            raise ReachRefused("its host name could not be resolved") from None
        for *_, sockaddr in infos:
            address = ipaddress.ip_address(sockaddr[0].split("%")[0])
            if self.allows(address, port, host):
                return str(address)
        raise ReachRefused(REFUSED_MESSAGE)

    def allows(self, address: Address, port: int, host: str = "") -> bool:
        address = _plain(address)
        if is_metadata_address(address) or address.is_unspecified or address.is_multicast:
            return False
        if port == self.api_port and self._is_api_address(address):
            return False
        if not self.public_only or address.is_global:
            return True
        if host.rstrip(".").lower() in self._allowed_hosts:
            return True
        return any(address in net for net in self._allowed_networks
                   if net.version == address.version)

    def _is_api_address(self, address: Address) -> bool:
        if address.is_loopback or address in self._api_addresses:
            return True
        # Listening on 0.0.0.0 or :: means every address of this machine.
        return any(a.is_unspecified for a in self._api_addresses) and address in _local_addresses()


def _addresses_of(host: str) -> set[Address]:
    try:
        return {ipaddress.ip_address(host.strip("[]"))}
    except ValueError:
        pass
    return set(_resolve_all(host))


def _resolve_all(host: str) -> Iterable[Address]:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return [_plain(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos]


def _local_addresses() -> set[Address]:
    return set(_resolve_all(socket.gethostname())) | set(_resolve_all(socket.getfqdn()))
