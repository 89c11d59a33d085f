"""The nftables engine's pure parts: covered set members dropped, rule specs translated (every golden
scenario's rules translate: tests/golden/*/expected_nft_v*.txt), and an unknown token refused."""

from __future__ import annotations

import json

import pytest

from egress_cni.dataplane.compute import uncovered
from egress_cni.dataplane.nft import NftView, parse_table
from egress_cni.dataplane.nftrender import Untranslatable, nft_rule
from egress_cni.dataplane.nftscript import script
from egress_cni.dataplane.plan import IPV4, IPV6, Chain, IPSet

pytestmark = pytest.mark.unit


def test_covered_members_are_dropped_and_nothing_else() -> None:
    assert uncovered(frozenset({"10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "11.0.0.1"})) == {"10.0.0.0/8", "11.0.0.1"}
    assert uncovered(frozenset({"10.1.2.4", "10.1.2.5"})) == {"10.1.2.4", "10.1.2.5"}  # adjacent: both stay
    assert uncovered(frozenset({"0.0.0.0/1", "128.0.0.0/1", "192.168.0.1"})) == {"0.0.0.0/1", "128.0.0.0/1"}
    assert uncovered(frozenset({"fd00::/64", "fd00::1", "fd01::1"})) == {"fd00::/64", "fd01::1"}


@pytest.mark.parametrize(("spec", "table", "family", "want"), [
    ("-o egress.vxlan -m comment --comment egw:0123456789:tunnel -j ACCEPT", "nat", IPV4,
     'oifname "egress.vxlan" counter snat to ip saddr comment "egw:0123456789:tunnel"'),
    ("-o egress.vxlan -j ACCEPT", "filter", IPV6, 'oifname "egress.vxlan" counter accept'),
    ("-i egw+ -o eth0 -m mark ! --mark 0x26000000/0xff000000 -j MARK --set-xmark 0x26ffffff/0xffffffff", "filter", IPV4,
     'iifname "egw*" oifname "eth0" meta mark & 0xff000000 != 0x26000000 counter meta mark set 0x26ffffff'),
    ("-m set ! --match-set s6 src -m conntrack ! --ctstate SNAT --ctstatus CONFIRMED -j DROP", "mangle", IPV6,
     "ip6 saddr != @s6 ct status & snat == 0 ct status confirmed counter drop"),
    ("-s fd00::2 -p udp -m udp --dport 7789 -j NOTRACK", "raw", IPV6, "ip6 saddr fd00::2 udp dport 7789 counter notrack"),
])
def test_rule_specs_translate(spec: str, table: str, family: int, want: str) -> None:
    assert nft_rule(spec, table, family) == want


@pytest.mark.parametrize("spec", ["-m owner --uid-owner 0 -j DROP", "-j MARK --set-xmark 0x1/0xff",
                                  "-m conntrack --ctstate FOO -j DROP", "-s 10.0.0.1"])
def test_an_unknown_token_is_refused(spec: str) -> None:
    with pytest.raises(Untranslatable):
        nft_rule(spec, "mangle", IPV4)


def test_a_listing_reads_back_as_the_script_wrote_it() -> None:
    chain = Chain(IPV4, "mangle", "EGRESS-PREROUTING", "PREROUTING", ("-m comment --comment egw:0123456789:x -j RETURN",))
    text = script("egress", IPV4, sets=[IPSet("egress-s4-a", IPV4, frozenset({"10.0.0.0/8", "11.0.0.1"}))], chains=[chain])
    assert 'add rule ip egress mangle-EGRESS-PREROUTING counter return comment "egw:0123456789:x"' in text
    listing = {"nftables": [
        {"set": {"name": "egress-s4-a", "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, "11.0.0.1"]}},
        {"chain": {"name": "mangle-EGRESS-PREROUTING", "type": "filter", "hook": "prerouting", "prio": -151}},
        {"rule": {"chain": "mangle-EGRESS-PREROUTING", "comment": "egw:0123456789:x",
                  "expr": [{"counter": {"packets": 3, "bytes": 120}}, {"return": None}]}},
        {"rule": {"chain": "mangle-EGRESS-PREROUTING", "expr": [{"accept": None}]}},  # not ours: forces a rewrite
    ]}
    view = NftView()
    parse_table(json.loads(json.dumps(listing)), IPV4, view)
    assert view.sets == {IPSet("egress-s4-a", IPV4, frozenset({"10.0.0.0/8", "11.0.0.1"}))}
    (read,) = view.chains
    assert (read.table, read.name, read.hook) == ("mangle", "EGRESS-PREROUTING", "PREROUTING")
    assert read.rules[0] == chain.rules[0].replace(" -j RETURN", "") and read.rules[1].startswith("?")
    assert view.jumps_ok == {(IPV4, "mangle", "EGRESS-PREROUTING")}
    assert view.counters == {"egw:0123456789:x": (3, 120)}
