"""The no-encapsulation mode's pure decisions: which peers are on-link, and what each mode picks.

The golden cases tests/golden/noencap-{worker,gateway,never} show whole dataplanes; these pin the
decision itself and the settings that choose it.
"""

from __future__ import annotations

import pytest

from egress_cni import settings
from egress_cni.agent.main import config_from, parse_args
from egress_cni.api.net import parse_ip
from egress_cni.dataplane.compute import connected, direct_hop, on_link
from egress_cni.dataplane.inputs import ALWAYS, CROSS_SUBNET, NEVER, VXLAN_MODES

pytestmark = pytest.mark.unit

PREFIXES = connected(["10.100.0.7/24", "fd00:100::7/64", "not a prefix", "192.168.9.1/31"])


def test_connected_prefixes_drop_host_bits_and_skip_what_does_not_parse() -> None:
    assert [str(c) for c in PREFIXES] == ["10.100.0.0/24", "fd00:100::/64", "192.168.9.0/31"]


@pytest.mark.parametrize(("ip", "expected"), [
    ("10.100.0.2", True), ("10.100.0.255", True), ("10.100.1.2", False), ("10.101.0.2", False),
    ("fd00:100::2", True), ("fd00:100:0:1::2", False), ("192.168.9.0", True), ("192.168.9.2", False),
])
def test_on_link_means_inside_a_connected_prefix_of_the_same_family(ip: str, expected: bool) -> None:
    assert on_link(parse_ip(ip), PREFIXES) is expected


def test_an_ipv4_peer_is_never_on_link_through_an_ipv6_prefix() -> None:
    assert not on_link(parse_ip("10.100.0.2"), connected(["fd00:100::7/64"]))
    assert not on_link(parse_ip("fd00:100::2"), connected(["10.100.0.7/24"]))


@pytest.mark.parametrize(("mode", "ip", "hop"), [
    (ALWAYS, "10.100.0.2", None),  # the tunnel to every peer
    (CROSS_SUBNET, "10.100.0.2", "10.100.0.2"),
    (CROSS_SUBNET, "10.200.0.2", None),  # off-link: the tunnel
    (NEVER, "10.100.0.2", "10.100.0.2"),
    (NEVER, "10.200.0.2", None),  # off-link and no tunnel: compute drops its traffic
    (CROSS_SUBNET, None, None),  # the peer reported no parent address of this family
])
def test_each_mode_picks_the_next_hop(mode: str, ip: str | None, hop: str | None) -> None:
    got = direct_hop(mode, parse_ip(ip) if ip else None, PREFIXES)
    assert (str(got) if got else None) == hop


def test_no_prefix_known_means_no_direct_peer() -> None:
    assert direct_hop(CROSS_SUBNET, parse_ip("10.100.0.2"), ()) is None


def test_settings_and_flag_choose_the_mode() -> None:
    assert settings.VXLAN_MODES == VXLAN_MODES
    assert settings.parse({}).vxlan.mode == ALWAYS  # the default: today's path, safe on clouds
    assert settings.parse({"feature": {"vxlan": {"mode": "CrossSubnet"}}}).vxlan.mode == CROSS_SUBNET
    with pytest.raises(settings.SettingsError, match=r"vxlan\.mode: must be one of Always, CrossSubnet, Never"):
        settings.parse({"vxlan": {"mode": "crosssubnet"}})
    assert config_from(parse_args(["run"], env={})).vxlan_mode == ALWAYS
    assert config_from(parse_args(["run", "--vxlan-mode", "Never"], env={})).vxlan_mode == NEVER
