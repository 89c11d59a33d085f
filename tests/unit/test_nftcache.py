"""The decision cache's rendering (dataplane/nftcache.py, nftscript.py) and its read-back (nft.parse_table)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from devtools.scenario import load_scenario
from egress_cni.dataplane import nftcache
from egress_cni.dataplane.compute import desired_dataplane
from egress_cni.dataplane.inputs import DataplaneConfig
from egress_cni.dataplane.nft import NftView, parse_table
from egress_cni.dataplane.nftscript import script
from egress_cni.dataplane.plan import IPV4, IPV6, Chain, Dataplane, diff

pytestmark = pytest.mark.unit
GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _chains(case: str) -> dict[tuple[int, str, str], Chain]:
    state, facts = load_scenario(str(GOLDEN / case))
    return {(c.family, c.table, c.hook): c for c in desired_dataplane(state, facts, DataplaneConfig()).dataplane.chains}


def test_each_kept_decision_gets_its_own_slot_and_the_gateway_admits_by_the_same_slots() -> None:
    chains = _chains("overlap-priority")
    d = nftcache.decide(chains[(IPV4, "mangle", "PREROUTING")], IPV4)
    assert d is not None
    values = [s.value for s in d.chain.slots]
    assert len(set(values)) == len(values) > 1
    assert all(v & 0xFF000000 == 0xD9000000 for v in values)  # never under our own marks (0x26......)
    admitted = nftcache.admit(chains[(IPV4, "filter", "FORWARD")], IPV4, d)
    assert admitted is not None and {s.value for s in admitted.slots} <= set(d.local.values())
    assert all(s.rule.endswith(f'comment "{s.rule.split(chr(34))[-2]}"') for s in admitted.slots)


def test_the_generation_changes_with_the_decision_rules_only() -> None:
    mangle = _chains("gateway-basic")[(IPV4, "mangle", "PREROUTING")]
    d = nftcache.decide(mangle, IPV4)
    head, tail = mangle.rules[:1], mangle.rules[1:]
    same = nftcache.decide(replace(mangle, rules=(*head, *head, *tail)), IPV4)  # a rule before the decisions
    assert d is not None and same is not None and [s.value for s in same.chain.slots] == [s.value for s in d.chain.slots]
    # another verdict: another rule hash in its comment (compute's `tagged`), which the generation reads
    changed = replace(mangle, rules=tuple(r.replace("egw:ae1660726f", "egw:0123456789") if ":local:" in r else r
                                          for r in mangle.rules))
    other = nftcache.decide(changed, IPV4)
    assert other is not None and [s.value for s in other.chain.slots] != [s.value for s in d.chain.slots]


@pytest.mark.parametrize("why", ["ipv6", "no decisions", "a rule after the decisions"])
def test_a_chain_of_another_shape_is_written_as_it_is(why: str) -> None:
    mangle = _chains("gateway-basic")[(IPV4, "mangle", "PREROUTING")]
    if why == "ipv6":
        assert nftcache.decide(mangle, IPV6) is None
    elif why == "no decisions":
        assert nftcache.decide(replace(mangle, rules=mangle.rules[:2]), IPV4) is None
    else:
        assert nftcache.decide(replace(mangle, rules=(*mangle.rules, mangle.rules[0])), IPV4) is None


def test_every_write_empties_the_pairs_and_drops_the_slot_chains_it_no_longer_has() -> None:
    chains = _chains("gateway-basic")
    mangle, filt = chains[(IPV4, "mangle", "PREROUTING")], chains[(IPV4, "filter", "FORWARD")]
    assert script("egress", IPV4) == "add table ip egress\n"  # nothing to do: no cache lines either
    members = script("egress", IPV4, add_members=[("egress-s4-x", "10.244.1.11")])
    assert "flush map ip egress decided" in members and "flush set ip egress undecided" in members
    assert "slots-mangle" not in members.split("flush map ip egress decided")[1]  # slots kept: their chains did not change
    text = script("egress", IPV4, chains=[mangle, filt], slot_chains=["slot-mangle-0000000000", "slot-filter-ae1660726f"])
    assert "delete chain ip egress slot-mangle-0000000000" in text
    assert text.index("flush map ip egress slots-mangle") < text.index("delete chain ip egress slot-mangle-0000000000")


def test_the_decision_chains_are_written_together_when_asked() -> None:
    chains = _chains("gateway-basic")
    want = Dataplane(chains=frozenset(chains.values()))
    have = replace(want, chains=frozenset(c if c.table != "mangle" or c.hook != "PREROUTING" else replace(c, rules=c.rules[:-1])
                                          for c in chains.values()), jumps_ok=frozenset(c.key for c in chains.values()))
    alone = {(c.table, c.hook) for c in diff(want, have).write_chains}
    together = {(c.table, c.hook) for c in diff(want, have, together=True).write_chains}
    assert alone == {("mangle", "PREROUTING")} and together == {("mangle", "PREROUTING"), ("filter", "FORWARD")}


def test_the_read_back_skips_the_cache_and_counts_each_policy_once_per_packet() -> None:
    comment = "egw:ae1660726f:local:ns1/web"
    doc = {"nftables": [
        {"map": {"name": "decided", "elem": [[{"concat": ["10.244.1.10", "10.100.0.100"]}, 1]]}},
        {"set": {"name": "undecided", "elem": []}},
        {"map": {"name": "slots-mangle"}},
        {"set": {"name": "egress-s4-x", "elem": ["10.244.1.10"]}},
        {"chain": {"name": "mangle-EGRESS-PREROUTING", "type": "filter", "hook": "prerouting", "prio": -151}},
        {"chain": {"name": "slot-mangle-ae1660726f"}},
        {"rule": {"chain": "mangle-EGRESS-PREROUTING", "comment": "egw-cache:hit", "expr": []}},
        {"rule": {"chain": "mangle-EGRESS-PREROUTING", "comment": comment, "expr": [{"counter": {"packets": 1, "bytes": 60}}]}},
        {"rule": {"chain": "slot-mangle-ae1660726f", "comment": comment, "expr": [{"counter": {"packets": 9, "bytes": 900}}]}},
    ]}
    view = NftView()
    parse_table(doc, IPV4, view)
    assert [c.rules for c in view.chains] == [(f"-m comment --comment {comment}",)]
    assert {s.name for s in view.sets} == {"egress-s4-x"}
    assert view.slot_chains == {(IPV4, "slot-mangle-ae1660726f")}
    assert view.caches == {(IPV4, "decided"), (IPV4, "undecided")}
    assert view.counters == {comment: (10, 960)}
