"""IP pools: parsing the three entry forms, set algebra, picking, and errors that name the field."""

from __future__ import annotations

import pytest

from egress_cni.api.errors import FieldError
from egress_cni.api.pools import IPPool, IPRange, parse_range, pool_of

pytestmark = pytest.mark.unit


def v4(*entries: str) -> IPPool:
    return IPPool.parse(list(entries), 4, "spec.ippools.ipv4")


def v6(*entries: str) -> IPPool:
    return IPPool.parse(list(entries), 6, "spec.ippools.ipv6")


@pytest.mark.parametrize(
    ("entry", "first", "last", "count"),
    [
        ("10.6.1.55", "10.6.1.55", "10.6.1.55", 1),
        ("10.6.168.201-10.6.168.205", "10.6.168.201", "10.6.168.205", 5),
        ("10.6.1.64/28", "10.6.1.65", "10.6.1.78", 14),  # network and broadcast excluded
        ("10.6.1.70/28", "10.6.1.65", "10.6.1.78", 14),  # host bits ignored, as the reference does
        ("10.6.1.64/30", "10.6.1.65", "10.6.1.66", 2),
        ("10.6.1.64/31", "10.6.1.64", "10.6.1.65", 2),  # RFC 3021: no broadcast on /31
        ("10.6.1.64/32", "10.6.1.64", "10.6.1.64", 1),
        (" 10.6.1.9 ", "10.6.1.9", "10.6.1.9", 1),
    ],
)
def test_ipv4_entry_forms(entry: str, first: str, last: str, count: int) -> None:
    pool = v4(entry)
    assert pool.count == count
    assert str(pool.nth(0)) == first
    assert str(pool.nth(-1)) == last


def test_ipv6_cidr_keeps_every_address() -> None:
    pool = v6("fd00::/126")
    assert pool.count == 4
    assert str(pool.nth(0)) == "fd00::"
    assert str(pool.nth(3)) == "fd00::3"


def test_ipv6_slash64_is_interval_not_enumeration() -> None:
    pool = v6("fd00:1::/64")
    assert pool.count == 2**64
    assert len(pool.ranges) == 1
    assert str(pool.nth(2**63)) == "fd00:1:0:0:8000::"
    assert pool.contains("fd00:1::ffff:ffff:ffff:ffff")
    assert not pool.contains("fd00:2::")
    assert pool.index_of("fd00:1::1:0") == 65536
    used = v6("fd00:1::-fd00:1::ffff")
    assert str(pool.first_free(used)) == "fd00:1::1:0"
    assert pool.difference(used).count == 2**64 - 65536


def test_merge_of_overlapping_and_adjacent_entries() -> None:
    pool = v4("10.0.0.1-10.0.0.10", "10.0.0.5-10.0.0.20", "10.0.0.21", "10.0.0.30")
    assert pool.to_strings() == ["10.0.0.1-10.0.0.21", "10.0.0.30"]
    assert pool.count == 22


def test_set_algebra() -> None:
    a = v4("10.0.0.0/24")  # .1-.254
    b = v4("10.0.0.100-10.0.1.10")
    assert a.overlaps(b)
    assert a.intersection(b).to_strings() == ["10.0.0.100-10.0.0.254"]
    assert a.difference(b).to_strings() == ["10.0.0.1-10.0.0.99"]
    assert a.union(b).to_strings() == ["10.0.0.1-10.0.1.10"]
    assert not v4("10.0.0.1").overlaps(v4("10.0.0.2"))
    assert a.covers(v4("10.0.0.7-10.0.0.9"))
    assert not a.covers(v4("10.0.0.255"))


def test_difference_with_holes_in_the_middle() -> None:
    pool = v4("10.0.0.1-10.0.0.10")
    used = pool_of(["10.0.0.3", "10.0.0.4", "10.0.0.8"], 4)
    assert pool.difference(used).to_strings() == ["10.0.0.1-10.0.0.2", "10.0.0.5-10.0.0.7", "10.0.0.9-10.0.0.10"]


def test_picking_free_addresses() -> None:
    pool = v4("10.0.0.1-10.0.0.4")
    used = pool_of(["10.0.0.1", "10.0.0.3"], 4)
    assert str(pool.first_free(used)) == "10.0.0.2"
    # round robin: after .2 comes .4, then it wraps to .2
    assert str(pool.next_free_after(used, "10.0.0.2")) == "10.0.0.4"
    assert str(pool.next_free_after(used, "10.0.0.4")) == "10.0.0.2"
    assert str(pool.next_free_after(used, None)) == "10.0.0.2"
    assert pool.first_free(pool) is None
    assert pool.next_free_after(pool, "10.0.0.1") is None


def test_round_robin_walks_the_whole_pool_before_reuse() -> None:
    pool = v4("10.0.0.1-10.0.0.5")
    last = None
    seen = []
    for _ in range(5):
        ip = pool.next_free_after(IPPool.of(4), last)  # nothing held: a released address is not reused at once
        assert ip is not None
        seen.append(str(ip))
        last = ip
    assert seen == [f"10.0.0.{i}" for i in range(1, 6)]


def test_contains_other_family_is_false() -> None:
    assert not v4("10.0.0.0/24").contains("fd00::1")


@pytest.mark.parametrize(
    ("entries", "path", "fragment"),
    [
        (["10.0.0.1", "nonsense"], "spec.ippools.ipv4[1]", "expected an IP"),
        (["10.0.0.1", "10.0.0.9-10.0.0.2"], "spec.ippools.ipv4[1]", "after its end"),
        (["10.0.0.1-fd00::1"], "spec.ippools.ipv4[0]", "different IP families"),
        (["10.0.0.1", "10.0.0.2", "fd00::1"], "spec.ippools.ipv4[2]", "this list takes IPv4"),
        (["10.0.0.0/33"], "spec.ippools.ipv4[0]", "expected an IP"),
        ([""], "spec.ippools.ipv4[0]", "empty entry"),
        ([7], "spec.ippools.ipv4[0]", "must be a string"),
    ],
)
def test_bad_entries_name_the_field(entries: list[object], path: str, fragment: str) -> None:
    with pytest.raises(FieldError) as err:
        IPPool.parse(entries, 4, "spec.ippools.ipv4")  # type: ignore[arg-type]
    assert err.value.path == path
    assert fragment in str(err.value)


def test_mixing_families_in_algebra_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot combine"):
        v4("10.0.0.1").union(v6("fd00::1"))


def test_range_validation() -> None:
    with pytest.raises(ValueError):
        IPRange(5, 4, 4)
    with pytest.raises(ValueError):
        IPRange(0, 2**32, 4)
    assert str(parse_range("fd00::1-fd00::3")) == "fd00::1-fd00::3"
