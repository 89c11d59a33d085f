"""The drift check: the pure comparison of a glance with the desired dataplane (one test per kind of
tamper), the parsers of its cheap reads, and the worker repairing a tampered in-memory kernel within
the check's period, counted by kind in /metrics."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from devtools.scenario import load_scenario
from egress_cni.agent.drift import DriftCheck
from egress_cni.agent.health import AgentCollector
from egress_cni.agent.reconcile import Status
from egress_cni.dataplane.compute import desired_dataplane
from egress_cni.dataplane.drift import Drift, Glance, compare, glance_of
from egress_cni.dataplane.fake import FakeKernel
from egress_cni.dataplane.inputs import DataplaneConfig
from egress_cni.dataplane.plan import Chain, Dataplane, IPSet, Plan
from egress_cni.dataplane.xtables import parse_ipset_terse, split_tables
from tests.agent.test_loop import make_agent

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.yaml").exists())


def desired(case: str = "worker-basic") -> Dataplane:
    state, facts = load_scenario(str(GOLDEN / case))
    return desired_dataplane(state, facts, DataplaneConfig()).dataplane


def kinds(found: tuple[Drift, ...]) -> set[str]:
    return {d.kind for d in found}


def source_set(dp: Dataplane) -> IPSet:
    return next(s for s in sorted(dp.ipsets) if s.name.startswith("egress-s4-") and s.members)


def chain(dp: Dataplane, table: str, name: str) -> Chain:
    return next(c for c in dp.chains if c.table == table and c.name == name and c.family == 4)


@pytest.mark.parametrize("case", CASES)
def test_a_kernel_holding_the_desired_state_shows_no_drift(case: str) -> None:
    dp = desired(case)
    assert compare(dp, glance_of(dp)) == ()


def test_flushed_and_thinned_sets_are_drift() -> None:
    dp = desired()
    s = source_set(dp)
    for members in (frozenset(), frozenset(sorted(s.members)[1:])):
        tampered = replace(dp, ipsets=(dp.ipsets - {s}) | {replace(s, members=members)})
        found = compare(dp, glance_of(tampered))
        assert found == (Drift("ipset", f"{s.name} has {len(members)} members, want {len(s.members)}"),)
    gone = compare(dp, glance_of(replace(dp, ipsets=dp.ipsets - {s})))
    assert gone == (Drift("ipset", f"{s.name} missing"),)
    foreign = compare(dp, glance_of(replace(dp, ipsets=dp.ipsets | {IPSet("egress-s4-0000000000000000", 4)})))
    assert foreign == (Drift("ipset", "egress-s4-0000000000000000 unexpected"),)


def test_members_the_fast_path_added_since_the_reconcile_are_not_drift() -> None:
    dp = desired()
    s = source_set(dp)
    grown = replace(dp, ipsets=(dp.ipsets - {s}) | {replace(s, members=s.members | {"10.244.1.99"})})
    assert kinds(compare(dp, glance_of(grown))) == {"ipset"}
    assert compare(dp, glance_of(grown), pending=[(s.name, "10.244.1.99")]) == ()
    assert compare(dp, glance_of(dp), pending=[(s.name, next(iter(s.members)))]) == ()  # already desired


def test_a_jump_not_first_or_gone_is_drift() -> None:
    dp = desired()
    c = chain(dp, "mangle", "EGRESS-PREROUTING")
    found = compare(dp, glance_of(replace(dp, jumps_ok=dp.jumps_ok - {c.key})))
    assert found == (Drift("jump", "mangle PREROUTING -> EGRESS-PREROUTING (v4) not first"),)


def test_a_deleted_or_foreign_rule_in_our_chain_is_drift() -> None:
    dp = desired()
    c = chain(dp, "mangle", "EGRESS-PREROUTING")
    assert len(c.rules) > 1
    fewer = replace(dp, chains=(dp.chains - {c}) | {replace(c, rules=c.rules[1:])})
    assert compare(dp, glance_of(fewer)) == (
        Drift("chain", f"mangle EGRESS-PREROUTING (v4) has {len(c.rules) - 1} rules, want {len(c.rules)}"),)
    foreign = replace(dp, chains=(dp.chains - {c}) | {replace(c, rules=("-j ACCEPT", *c.rules[1:]))})
    assert compare(dp, glance_of(foreign)) == (Drift("chain", "mangle EGRESS-PREROUTING (v4) rules differ"),)
    moved = replace(dp, chains=(dp.chains - {c}) | {replace(c, rules=c.rules[::-1])})
    assert kinds(compare(dp, glance_of(moved))) == {"chain"}  # order matters: first match wins
    gone = compare(dp, glance_of(replace(dp, chains=dp.chains - {c}, jumps_ok=dp.jumps_ok - {c.key})))
    assert kinds(gone) == {"chain", "jump"}


def test_eips_rules_routes_and_the_link_are_compared() -> None:
    dp = desired("gateway-basic")
    eip = next(a for a in dp.addresses if a.eip)
    found = compare(dp, glance_of(replace(dp, addresses=dp.addresses - {eip})))
    assert found == (Drift("eip", f"missing {eip!r}"),)
    # an EIP someone else answers for was left out by the apply on purpose: retried by fencing's backoff
    assert compare(dp, glance_of(replace(dp, addresses=dp.addresses - {eip})), contested=frozenset({"10.100.0.200"})) == ()
    worker = desired()
    rule, route = sorted(worker.rules)[0], sorted(worker.routes)[0]
    assert kinds(compare(worker, glance_of(replace(worker, rules=worker.rules - {rule})))) == {"rule"}
    assert kinds(compare(worker, glance_of(replace(worker, routes=worker.routes - {route})))) == {"route"}
    assert worker.link is not None
    assert compare(worker, glance_of(replace(worker, link=None)))[0] == Drift("link", "missing")
    down = compare(worker, glance_of(replace(worker, link=replace(worker.link, up=False))))
    assert kinds(down) == {"link"}
    # the VXLAN device deleted: the kernel took its neighbours, FDB entries and routes with it
    deleted = replace(worker, link=None, neighbours=frozenset(), fdb=frozenset(), routes=frozenset())
    assert kinds(compare(worker, glance_of(deleted))) == {"link", "neighbour", "fdb", "route"}


SAVE_ALL = """# Generated by iptables-save v1.8.9 (nf_tables) on Tue Dec  1 16:40:00 2026
*raw
:PREROUTING ACCEPT [0:0]
:EGRESS-PREROUTING - [0:0]
-A PREROUTING -m comment --comment egw:jump -j EGRESS-PREROUTING
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:EGRESS-PREROUTING - [0:0]
-A PREROUTING -j ACCEPT
-A PREROUTING -m comment --comment egw:jump -j EGRESS-PREROUTING
-A EGRESS-PREROUTING -m comment --comment "egw:0123456789:steer:ns1/web" -j MARK --set-xmark 0x26000002/0xffffffff
COMMIT
"""

TERSE = """Name: egress-s4-0123456789abcdef
Type: hash:net
Revision: 7
Header: family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x5f3e2a11
Size in memory: 552
References: 2
Number of entries: 3
Name: kube-foreign
Type: hash:ip
Number of entries: 9
Name: egress-cluster-v4
Type: hash:net
Number of entries: 0
"""


def test_one_save_of_every_table_is_split_per_table() -> None:
    tables = split_tables(SAVE_ALL)
    assert sorted(tables) == ["mangle", "raw"]
    assert tables["mangle"].splitlines()[-1] == "COMMIT" and "*" not in tables["mangle"]


def test_set_sizes_come_from_the_terse_listing_of_our_sets_only() -> None:
    assert parse_ipset_terse(TERSE, "egress") == {"egress-s4-0123456789abcdef": 3, "egress-cluster-v4": 0}


class Kernel:
    def __init__(self, seen: Glance) -> None:
        self.seen = seen

    def glance(self) -> Glance:
        return self.seen


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_check_waits_for_a_complete_successful_reconcile_and_backs_off_from_a_stubborn_drift() -> None:
    state, facts = load_scenario(str(GOLDEN / "worker-basic"))
    want = desired_dataplane(state, facts, DataplaneConfig())
    dp = want.dataplane
    kernel = Kernel(glance_of(replace(dp, rules=frozenset())))
    clock = Clock()
    check = DriftCheck(kernel, pending=frozenset, contested=frozenset, clock=clock)
    partial = Status(last_ok=True, desired=want, last_plan=Plan(prune=False))
    assert check.check(partial) == ()  # before every source synced the kernel may hold more than desired
    assert check.check(replace(partial, last_ok=False, last_plan=Plan())) == ()
    status = Status(last_ok=True, desired=want, last_plan=Plan())
    found = check.check(status)
    assert kinds(found) == {"rule"}
    check.verify(status)  # the reconcile did not fix it (the kernel fake ignores it): counted as nothing
    assert sum(check.repairs.values()) == 0
    assert check.check(status) == found  # twice more at the check's pace (someone may re-tamper at once)
    check.verify(status)
    assert check.check(status) == found
    check.verify(status)
    assert check.check(status) == ()  # then not before the backoff: 2 s, 4 s, ...
    clock.now += 2.0
    assert check.check(status) == found
    check.verify(status)
    clock.now += 3.5
    assert check.check(status) == ()
    clock.now += 0.5
    assert check.check(status) == found
    check.verify(status)
    kernel.seen = glance_of(dp)
    assert check.check(status) == ()
    kernel.seen = glance_of(replace(dp, rules=frozenset()))
    assert kinds(check.check(status)) == {"rule"}  # it came back after being gone: repaired again
    kernel.seen = glance_of(dp)
    check.verify(status)
    assert check.repairs == {"rule": 1}


def test_the_worker_repairs_a_tampered_kernel_within_the_check_period(tmp_path: Path) -> None:
    kernel = FakeKernel()
    agent = make_agent(tmp_path, "worker-basic", kernel=kernel, resync_seconds=60, drift_seconds=0.05)
    collector = AgentCollector(agent, dict)
    agent.reconcile()
    good = kernel.state
    s = source_set(good)
    agent.start()
    try:
        start = time.monotonic()
        while not agent.drift.checks and time.monotonic() - start < 5:  # the start's own reconcile is over
            time.sleep(0.01)
        for tamper in (replace(good, ipsets=(good.ipsets - {s}) | {replace(s, members=frozenset())}),
                       replace(good, jumps_ok=frozenset()),
                       replace(good, link=None, routes=frozenset())):
            kernel.state = tamper
            start = time.monotonic()
            while compare(good, kernel.glance()) and time.monotonic() - start < 5:
                time.sleep(0.01)
            assert compare(good, kernel.glance()) == (), agent.drift.found
            assert time.monotonic() - start < 2  # well inside 60 s: the check, not the resync
            while agent.drift.found and time.monotonic() - start < 5:  # its own look after the repair
                time.sleep(0.01)
        assert agent.drift.repairs == {"ipset": 1, "jump": 1, "link": 1, "route": 1}
    finally:
        agent.stop()
    text = {m.name: {tuple(s.labels.values()): s.value for s in m.samples} for m in collector.collect()}
    assert text["egress_agent_drift_repairs"][("ipset",)] == 1 and text["egress_agent_drift_repairs"][("chain",)] == 0
    assert text["egress_agent_drift_checks"][()] >= 3


def test_the_nftables_generation_is_read_from_a_newgen_reply() -> None:
    import struct

    from egress_cni.dataplane.glance import parse_generation

    attr = struct.pack("=HH", 8, 1) + struct.pack("!I", 4242)  # NFTA_GEN_ID, big endian
    body = struct.pack("=BBH", 0, 0, 0) + attr
    reply = struct.pack("=IHHII", 16 + len(body), (10 << 8) | 15, 0, 1, 0) + body
    assert parse_generation(reply) == 4242
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -2) + b"\0" * 16  # NLMSG_ERROR
    assert parse_generation(error) is None
    assert parse_generation(b"") is None


def test_the_legacy_blob_hash_ignores_counters_and_sees_order() -> None:
    import struct

    from egress_cni.dataplane.glance import blob_hash

    def entry(tag: bytes, packets: int, size: int = 152) -> bytes:  # struct ipt_entry (112 bytes) + a target
        e = bytearray(size)
        struct.pack_into("=H", e, 90, size)  # next_offset
        struct.pack_into("=QQ", e, 96, packets, packets * 60)  # counters
        e[112:112 + len(tag)] = tag
        return bytes(e)

    a, b = entry(b"ACCEPT", 1), entry(b"EGRESS", 2)
    assert blob_hash(a + b, 4) == blob_hash(entry(b"ACCEPT", 99) + entry(b"EGRESS", 7), 4)
    assert blob_hash(a + b, 4) != blob_hash(b + a, 4)
