"""The reach policy: which addresses sources and notifications may connect to."""
from __future__ import annotations

import ipaddress

import pytest

from core.reach import Reach, ReachRefused
from core.settings import Settings

ip = ipaddress.ip_address


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "fe80::1",
                                     "::ffff:169.254.169.254", "0.0.0.0", "224.0.0.1"])
@pytest.mark.parametrize("api_host", ["127.0.0.1", "10.1.2.3"])
def test_metadata_unspecified_and_multicast_are_never_reached(address, api_host):
    settings = Settings(api_host=api_host, outbound_allowed=("0.0.0.0/0", "::/0"))
    assert not Reach(settings).allows(ip(address), 80)


def test_the_apis_own_port_on_loopback_is_refused():
    reach = Reach(Settings(api_port=8001))
    assert not reach.allows(ip("127.0.0.1"), 8001)
    assert not reach.allows(ip("127.0.0.2"), 8001)
    assert reach.allows(ip("127.0.0.1"), 8002)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "192.168.1.1", "172.16.0.1",
                                     "100.64.0.1", "::1", "fc00::1", "192.0.2.1"])
def test_a_shared_api_refuses_every_non_global_address(address):
    reach = Reach(Settings(api_host="10.1.2.3", api_token="t"))
    assert reach.public_only
    assert not reach.allows(ip(address), 80)
    assert reach.allows(ip("8.8.8.8"), 80)


def test_allowed_networks_and_hosts_open_exceptions_for_a_shared_api():
    reach = Reach(Settings(api_host="10.1.2.3", outbound_allowed=("10.20.0.0/16", "media.lan")))
    assert reach.allows(ip("10.20.3.4"), 80)
    assert not reach.allows(ip("10.21.3.4"), 80)
    assert reach.allows(ip("192.168.1.9"), 80, host="media.lan")


def test_resolve_returns_the_checked_address_and_refuses_the_rest():
    assert Reach(Settings()).resolve("localhost", 9000) in ("127.0.0.1", "::1")
    with pytest.raises(ReachRefused, match="not one this service may reach"):
        Reach(Settings(api_host="10.1.2.3")).resolve("localhost", 9000)
    with pytest.raises(ReachRefused, match="could not be resolved"):
        Reach(Settings()).resolve("no-such-host.invalid", 80)
