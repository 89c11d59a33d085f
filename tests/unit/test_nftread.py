"""An interval set's elements read back as the members written (dataplane/nftread.py)."""

from __future__ import annotations

import ipaddress

import pytest

from egress_cni.dataplane.nftread import members

pytestmark = pytest.mark.unit


def _v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def test_addresses_prefixes_and_the_top_half_read_back_as_written() -> None:
    keys = [(_v4("10.0.0.1"), False), (_v4("10.0.0.2"), True), (_v4("10.0.0.2"), False), (_v4("10.0.0.3"), True),
            (_v4("10.96.0.0"), False), (_v4("10.112.0.0"), True), (_v4("128.0.0.0"), False)]  # the last has no end
    assert members(keys, 4) == ["10.0.0.1", "10.0.0.2", "10.96.0.0/12", "128.0.0.0/1"]


def test_the_bottom_half_and_a_range_nobody_wrote() -> None:
    keys = [(0, False), (_v4("128.0.0.0"), True)]
    assert members(keys, 4) == ["0.0.0.0/1"]
    assert members([(_v4("10.0.0.1"), False), (_v4("10.0.0.4"), True)], 4) == ["10.0.0.1-10.0.0.3"]


def test_ipv6() -> None:
    start = int(ipaddress.IPv6Address("fd00:244::"))
    assert members([(start, False), (start + (1 << 64), True), (start + (1 << 64) + 5, False), (start + (1 << 64) + 6, True)], 16) == [
        "fd00:244::/64", "fd00:244:0:1::5"]
