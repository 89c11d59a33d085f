"""The reconcile loop against a stateful in-memory kernel: idempotence, no pruning before sync,
fencing (the EIPs' kernel lifetime renewed, released on SIGTERM and on carrier loss, kept on
lease loss), registry acks, deterministic ordering, ipset naming."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from devtools.scenario import load_scenario
from egress_cni import registry
from egress_cni.agent.fencing import EipRefresher
from egress_cni.agent.loop import Agent
from egress_cni.agent.peers import HANDOVER, RESTART_GRACE
from egress_cni.agent.sources import MemorySource, RecordingReporter, load_yaml_objects
from egress_cni.api.meta import ObjectMeta
from egress_cni.api.model import EgressClusterPolicy, EgressPolicy
from egress_cni.backoff import Backoff
from egress_cni.dataplane.compute import desired_dataplane, set_name
from egress_cni.dataplane.fake import FakeKernel
from egress_cni.dataplane.inputs import DataplaneConfig, NodeFacts
from egress_cni.dataplane.plan import Dataplane, IPSet, Rule, diff

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CONFIG = DataplaneConfig()


class FailingLease:
    def try_acquire_or_renew(self) -> bool:
        return False

    def release(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_agent(tmp_path: Path, case: str, *, synced: bool = True, kernel: FakeKernel | None = None, **kw: Any) -> Agent:
    _, facts = load_scenario(str(GOLDEN / case))
    source = MemorySource(load_yaml_objects([str(GOLDEN / case / "input.yaml")]), synced)
    k = kernel or FakeKernel()
    return Agent(node=facts.name, source=source, kernel=k, facts=lambda: replace(facts, carrier=k.has_carrier), config=CONFIG,
                 registry_dir=str(tmp_path / "registry"), **kw)


def memory(agent: Agent) -> MemorySource:
    assert isinstance(agent.source, MemorySource)
    return agent.source


def fake(agent: Agent) -> FakeKernel:
    assert isinstance(agent.kernel, FakeKernel)
    return agent.kernel


def test_apply_twice_gives_an_empty_plan(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, "gateway-basic")
    first = agent.reconcile()
    assert first is not None and not first.empty
    second = agent.reconcile()
    assert second is not None
    assert second.empty, second.summary()
    assert isinstance(agent.reporter, RecordingReporter)
    assert agent.reporter.reported == {"node2": {"name": "eth0", "ipv4": "10.100.0.2", "ipv6": "", "mac": "", "ready": "True"}}


def test_nothing_is_removed_before_every_source_has_synced(tmp_path: Path) -> None:
    stale = Dataplane(ipsets=frozenset({IPSet("egress-s4-0000000000000000", 4, frozenset({"10.9.9.9"}))}),
                      rules=frozenset({Rule(4, 99, 0x26000009, 0x26000009)}))
    kernel = FakeKernel(stale)
    agent = make_agent(tmp_path, "worker-basic", synced=False, kernel=kernel)
    plan = agent.reconcile()
    assert plan is not None and not plan.destroy_ipsets and not plan.del_rules and plan.add_rules
    memory(agent).synced = True
    plan = agent.reconcile()
    assert plan is not None and plan.destroy_ipsets == ("egress-s4-0000000000000000",)


def test_existing_chains_are_not_rewritten_from_a_partial_view(tmp_path: Path) -> None:
    kernel = FakeKernel()
    agent = make_agent(tmp_path, "worker-basic", kernel=kernel)
    agent.reconcile()
    steering = {c.key: c.rules for c in kernel.state.chains}
    memory(agent).replace([])  # restarted: nothing listed yet
    memory(agent).synced = False
    plan = agent.reconcile()
    assert plan is not None and not plan.write_chains and not plan.del_rules and not plan.del_routes
    assert {c.key: c.rules for c in kernel.state.chains} == steering
    assert Rule(4, 99, 0x26000009, 0x26000009) not in kernel.state.rules


def test_a_lapsed_lease_keeps_the_eips(tmp_path: Path) -> None:
    # No self-fencing on API loss (issue 13): a node that cannot renew its Lease keeps answering for
    # its EIPs; a dead agent is fenced by the kernel (the EIPs' lifetime), a lost uplink by carrier.
    agent = make_agent(tmp_path, "gateway-basic", lease=FailingLease(), lease_seconds=0.3, lease_renew=0.05,
                       resync_seconds=0.1)
    agent.reconcile()
    assert agent.status.eips == {"10.100.0.200"}
    agent.start()
    try:
        deadline = time.monotonic() + 10
        while agent.status.lease_held and time.monotonic() < deadline:
            time.sleep(0.05)
        reconciles = agent.status.reconciles
        while agent.status.reconciles < reconciles + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not agent.status.lease_held and agent.status.reconciles >= reconciles + 3
        assert agent.status.eips == {"10.100.0.200"}
        assert any(a.eip for a in fake(agent).state.addresses)
    finally:
        agent.stop()


def test_a_lost_carrier_releases_the_eips_without_waiting_for_a_resync(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, "gateway-basic", resync_seconds=30)
    agent.reconcile()
    agent.start()
    try:
        fake(agent).has_carrier = False  # the refresher notices within an interval and wakes the worker
        deadline = time.monotonic() + 5
        while (any(a.eip for a in fake(agent).state.addresses) or agent.status.eips) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(a.eip for a in fake(agent).state.addresses) and agent.status.eips == frozenset()
        while agent.refresher.carrier and time.monotonic() < deadline:
            time.sleep(0.02)  # (the first reconcile may have seen the loss before the refresher did)
        fake(agent).has_carrier = True  # back: the refresher wakes the worker again
        while not any(a.eip for a in fake(agent).state.addresses) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any(a.eip for a in fake(agent).state.addresses)
    finally:
        agent.stop()


def test_the_refresher_adopts_found_eips_until_a_synced_reconcile_names_ours(tmp_path: Path) -> None:
    kernel = FakeKernel()
    agent = make_agent(tmp_path, "gateway-basic", kernel=kernel, synced=False)
    agent.refresher.tick()
    assert kernel.refreshed == [None]  # restarted: every EIP found is renewed, before any source synced
    agent.reconcile()  # from a partial view: still adopting
    agent.refresher.tick()
    assert kernel.refreshed[-1] is None
    memory(agent).synced = True
    agent.reconcile()
    agent.refresher.tick()
    eips = kernel.refreshed[-1]
    assert eips is not None and {a.cidr for a in eips} == {"10.100.0.200/32"}


def test_sigterm_hands_the_eips_over_uninstall_releases_them_a_plain_stop_keeps_them(tmp_path: Path) -> None:
    kernel = FakeKernel()
    agent = make_agent(tmp_path, "gateway-basic", kernel=kernel)
    agent.reconcile()
    agent.start()
    agent.stop()
    assert any(a.eip for a in kernel.state.addresses) and not hasattr(kernel, "handed_over")
    agent = make_agent(tmp_path, "gateway-basic", kernel=kernel)
    agent.start()
    agent.stop(hand_over=True)
    assert any(a.eip for a in kernel.state.addresses) and kernel.handed_over == HANDOVER < RESTART_GRACE
    agent = make_agent(tmp_path, "gateway-basic", kernel=kernel)
    agent.start()
    agent.stop(release_eips=True)
    assert not any(a.eip for a in kernel.state.addresses)


def test_a_contested_eip_asks_for_reconciles_with_backoff(tmp_path: Path) -> None:
    kernel, clock, woken = FakeKernel(), Clock(), []
    refresher = EipRefresher(kernel, wake=lambda: woken.append(clock.now), clock=clock,
                             retry=Backoff(base=0.25, cap=1.0, jitter=0))
    kernel.contested = frozenset({"10.100.0.200"})
    for _ in range(20):
        refresher.tick()
        clock.now += 0.25
    assert [round(t - 1000.0, 2) for t in woken] == [0.0, 0.25, 0.75, 1.75, 2.75, 3.75, 4.75]
    kernel.contested = frozenset()
    refresher.tick()
    kernel.contested = frozenset({"10.100.0.200"})
    refresher.tick()
    assert len(woken) == 8  # a new contest starts from the shortest delay again


def test_registered_endpoints_are_programmed_and_acked(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, "worker-basic")
    reg = str(tmp_path / "registry")
    registry.write_endpoint(reg, registry.Endpoint("c9", "eth0", "ns1", "web-9", ipv4=["10.244.1.19"]))
    registry.write_endpoint(reg, registry.Endpoint("c8", "eth0", "ns1", "other-1", ipv4=["10.244.1.18"]))
    registry.write_endpoint(reg, registry.Endpoint("c7", "eth0", "ns1", "unknown", ipv4=["10.244.1.17"]))
    agent.reconcile()
    selected, other = registry.read_ack(reg, "c9_eth0"), registry.read_ack(reg, "c8_eth0")
    assert selected is not None and selected.selected and selected.policies == ("ns1/web",)
    assert other is not None and not other.selected
    assert registry.read_ack(reg, "c7_eth0") is None  # labels unknown: the CNI keeps waiting
    kernel = fake(agent)
    src = next(s for s in kernel.state.ipsets if s.name.startswith("egress-s4-"))
    assert "10.244.1.19" in src.members and "10.244.1.18" not in src.members
    assert registry.read_hijack(reg).ipv4 == ("0.0.0.0/0",)
    # a new endpoint takes the fast path: in the set and acked before any full reconcile
    registry.write_endpoint(reg, registry.Endpoint("c6", "eth0", "ns1", "web-9", ipv4=["10.244.1.16"]))
    agent.cni.fast_path()
    assert registry.read_ack(reg, "c6_eth0") is not None
    holding = {s.name for s in kernel.state.ipsets if "10.244.1.16" in s.members}
    assert holding == {src.name, "egress-selected-v4"}  # its policy's set and the guard in front of the rules
    registry.remove_endpoint(reg, "c9_eth0")
    agent.reconcile()
    assert registry.read_ack(reg, "c9_eth0") is None


def test_overlapping_policies_render_the_same_whatever_the_input_order() -> None:
    state, facts = load_scenario(str(GOLDEN / "overlap-priority"))
    want = desired_dataplane(state, facts, CONFIG).dataplane
    for seed in range(5):
        shuffled = list(state.policies)
        random.Random(seed).shuffle(shuffled)
        got = desired_dataplane(replace(state, policies=tuple(shuffled)), facts, CONFIG).dataplane
        assert got == want


def test_policy_and_cluster_policy_never_share_an_ipset() -> None:
    ns_policy = EgressPolicy(ObjectMeta(name="b", namespace="a"))
    cluster_policy = EgressClusterPolicy(ObjectMeta(name="a-b"))
    assert set_name(CONFIG, "s", 4, ns_policy) != set_name(CONFIG, "s", 4, cluster_policy)
    assert len(set_name(CONFIG, "s", 6, ns_policy)) <= 31


def test_chains_compare_by_ownership_comments_not_by_spelling() -> None:
    state, facts = load_scenario(str(GOLDEN / "worker-basic"))
    want = desired_dataplane(state, facts, CONFIG).dataplane
    respelled = frozenset(replace(c, hook="", rules=tuple(r.replace("--comment egw:", '--comment "egw:') for r in c.rules))
                          for c in want.chains)
    assert diff(want, replace(want, chains=respelled)).empty
    tampered = frozenset(replace(c, rules=c.rules[1:]) if c.rules else c for c in want.chains)
    assert diff(want, replace(want, chains=tampered)).write_chains


def test_carrier_flag_is_the_only_difference_when_the_uplink_is_lost() -> None:
    state, facts = load_scenario(str(GOLDEN / "gateway-basic"))
    held = desired_dataplane(state, facts, CONFIG).dataplane
    lapsed = desired_dataplane(state, NodeFacts(**{**facts.__dict__, "carrier": False}), CONFIG).dataplane
    plan = diff(lapsed, held)
    assert [a.cidr for a in plan.del_addresses] == ["10.100.0.200/32"] and not plan.write_chains


class RacingKernel(FakeKernel):
    """Runs `hook` inside read_actual: i.e. after the reconcile listed the registry, before it diffs."""

    hook: Any = None

    def read_actual(self, sysctls: Any = frozenset()) -> Dataplane:
        if self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return super().read_actual(sysctls)


def test_a_reconcile_racing_the_fast_path_keeps_the_new_member(tmp_path: Path) -> None:
    kernel = RacingKernel()
    agent = make_agent(tmp_path, "worker-basic", kernel=kernel)
    reg = str(tmp_path / "registry")
    agent.reconcile()

    def new_pod() -> None:
        registry.write_endpoint(reg, registry.Endpoint("c5", "eth0", "ns1", "web-9", ipv4=["10.244.1.15"]))
        agent.cni.fast_path()

    kernel.hook = new_pod
    plan = agent.reconcile()  # computed without c5, reads the kernel after the fast path added it
    assert plan is not None and not plan.del_members
    assert any("10.244.1.15" in s.members for s in kernel.state.ipsets)
    agent.reconcile()  # the next one lists c5 itself
    assert any("10.244.1.15" in s.members for s in kernel.state.ipsets) and not agent.cni.pending


def test_a_lost_carrier_removes_eips_even_before_the_sources_have_synced(tmp_path: Path) -> None:
    kernel = FakeKernel()
    agent = make_agent(tmp_path, "gateway-basic", kernel=kernel, lease=FailingLease(), lease_seconds=1.0)
    agent.reconcile()
    assert any(a.eip for a in kernel.state.addresses)
    memory(agent).synced = False  # e.g. restarted while the API is down
    agent.reconcile()
    assert any(a.eip for a in kernel.state.addresses)  # a lapsed Lease alone keeps them
    kernel.has_carrier = False
    agent.reconcile()
    assert not any(a.eip for a in kernel.state.addresses)


def test_the_fast_path_does_not_ack_for_a_policy_newer_than_the_last_reconcile(tmp_path: Path) -> None:
    """Its sets do not exist yet: an ack now would start the pod unsteered (a leak until the reconcile)."""
    agent = make_agent(tmp_path, "worker-basic")
    reg = str(tmp_path / "registry")
    agent.reconcile()
    source = memory(agent)
    web = next(o for o in source.objects() if o["kind"] == "EgressPolicy" and o["metadata"]["name"] == "web")
    newer = {**web, "metadata": {**web["metadata"], "name": "web-newer"}}
    source.replace([*source.objects(), newer])
    registry.write_endpoint(reg, registry.Endpoint("c6", "eth0", "ns1", "web-9", ipv4=["10.244.1.16"]))
    agent.cni.fast_path()
    assert registry.read_ack(reg, "c6_eth0") is None
    agent.reconcile()
    ack = registry.read_ack(reg, "c6_eth0")
    assert ack is not None and set(ack.policies) == {"ns1/web", "ns1/web-newer"}
    kernel = fake(agent)
    assert kernel.forgotten == [frozenset({"10.244.1.16"})]  # a new policy: its pods' un-NATed flows start over


def test_the_first_underlay_pod_waits_for_the_masquerade_of_its_unsteered_traffic(tmp_path: Path) -> None:
    """Until the reconcile masquerades what enters by our veths, its hijacked flows would half-bypass the host."""
    agent = make_agent(tmp_path, "worker-basic")
    reg = str(tmp_path / "registry")
    agent.reconcile()
    masq = [r for c in fake(agent).state.chains for r in c.rules if "underlay-" in r]
    assert masq == []  # overlay pods only: nothing changes
    registry.write_endpoint(reg, registry.Endpoint("c6", "eth0", "ns1", "other-1", ipv4=["10.244.1.16"], mode="underlay"))
    agent.cni.fast_path()
    assert registry.read_ack(reg, "c6_eth0") is None
    agent.reconcile()
    assert registry.read_ack(reg, "c6_eth0") is not None
    masq = sorted(r.rsplit(":", 1)[1] for c in fake(agent).state.chains for r in c.rules if "underlay-" in r)
    assert masq == ["underlay-masq -j MASQUERADE", "underlay-unsteered -j MARK --set-xmark 0x26ffffff/0xffffffff"]
    registry.write_endpoint(reg, registry.Endpoint("c5", "eth0", "ns1", "other-1", ipv4=["10.244.1.15"], mode="underlay"))
    agent.cni.fast_path()
    assert registry.read_ack(reg, "c5_eth0") is not None  # the next one takes the fast path


def test_a_gateway_move_forgets_the_unnatted_flows_of_the_policys_pods(tmp_path: Path) -> None:
    """A flow tunnelled before the move has a "no NAT" conntrack entry: it is deleted, not blackholed."""
    agent = make_agent(tmp_path, "worker-basic")
    kernel = fake(agent)
    agent.reconcile()
    agent.reconcile()
    assert kernel.forgotten == []  # nothing moved
    source = memory(agent)
    web = next(o for o in source.objects() if o["kind"] == "EgressPolicy")
    source.replace([({**o, "status": {**o["status"], "node": "node1"}} if o is web else o) for o in source.objects()])
    agent.reconcile()
    assert kernel.forgotten == [frozenset({"10.244.1.10", "10.244.3.10"})]  # node1 is the gateway now: all of them
    source.replace([o for o in source.objects() if o["kind"] != "EgressPolicy"])  # the policy is deleted
    agent.reconcile()
    assert kernel.forgotten[-1] == frozenset({"10.244.1.10", "10.244.3.10"})  # no longer selected: start over


@pytest.mark.parametrize(("orig", "reply", "forget"), [
    (("10.244.1.10", "8.8.8.8"), ("8.8.8.8", "10.244.1.10"), True),  # no NAT, outside: the stale tunnel entry
    (("10.244.1.10", "8.8.8.8"), ("8.8.8.8", "10.100.0.200"), False),  # SNATed: keeps working
    (("10.244.1.10", "10.96.0.10"), ("10.244.2.5", "10.244.1.10"), False),  # DNATed (a Service)
    (("10.244.1.10", "10.244.2.5"), ("10.244.2.5", "10.244.1.10"), False),  # in-cluster
    (("10.244.1.11", "8.8.8.8"), ("8.8.8.8", "10.244.1.11"), False),  # another pod
])
def test_only_unnatted_outbound_flows_of_the_sources_are_forgotten(orig: tuple[str, str], reply: tuple[str, str],
                                                                   forget: bool) -> None:
    from egress_cni.api.net import parse_cidr
    from egress_cni.dataplane.conntrack import unnatted_outbound

    inside = [parse_cidr("10.244.0.0/16"), parse_cidr("10.96.0.0/12"), parse_cidr("fd00::/8")]
    assert unnatted_outbound(*orig, *reply, frozenset({"10.244.1.10"}), inside) is forget


def test_no_endpoint_is_acked_before_every_source_has_synced(tmp_path: Path) -> None:
    """A partial view (e.g. pods listed, policies not yet) would ack a selected pod as unselected and
    start it unsteered; the CNI keeps waiting instead, and the first synced reconcile acks it."""
    agent = make_agent(tmp_path, "worker-basic", synced=False)
    reg = str(tmp_path / "registry")
    registry.write_endpoint(reg, registry.Endpoint("c9", "eth0", "ns1", "web-9", ipv4=["10.244.1.19"]))
    agent.reconcile()
    registry.write_endpoint(reg, registry.Endpoint("c6", "eth0", "ns1", "web-9", ipv4=["10.244.1.16"]))
    agent.cni.fast_path()
    assert registry.list_acks(reg) == []
    memory(agent).synced = True
    agent.reconcile()
    acks = {a.key: a for a in registry.list_acks(reg)}
    assert set(acks) == {"c9_eth0", "c6_eth0"}
    assert all(a.selected and a.policies == ("ns1/web",) for a in acks.values())


def test_a_policy_has_rules_only_where_it_has_sources_and_its_first_pod_waits_for_them(tmp_path: Path) -> None:
    """A policy with no source on this node renders no rule (a packet meets one rule per policy), only
    its empty set; the fast path must not ack the policy's first pod here before its rules exist."""
    agent = make_agent(tmp_path, "worker-basic")
    reg = str(tmp_path / "registry")
    source = memory(agent)
    web = next(o for o in source.objects() if o["kind"] == "EgressPolicy" and o["metadata"]["name"] == "web")
    api = {**web, "metadata": {**web["metadata"], "name": "api"},
           "spec": {**web["spec"], "appliedTo": {"podSelector": {"matchLabels": {"app": "api"}}}}}
    source.replace([*source.objects(), api])
    agent.reconcile()
    kernel = fake(agent)

    def rules_of(key: str) -> list[str]:
        return [r for c in kernel.state.chains for r in c.rules if f":{key} -j " in r]

    assert rules_of("ns1/api") == [] and rules_of("ns1/web")
    api_set = set_name(CONFIG, "s", 4, EgressPolicy.parse(api))
    assert any(s.name == api_set and not s.members for s in kernel.state.ipsets)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "api-1", "namespace": "ns1", "labels": {"app": "api"}},
           "spec": {"nodeName": "node1"}}
    source.replace([*source.objects(), pod])
    registry.write_endpoint(reg, registry.Endpoint("c5", "eth0", "ns1", "api-1", ipv4=["10.244.1.15"]))
    agent.cni.fast_path()
    assert registry.read_ack(reg, "c5_eth0") is None  # in the set already, but no rule would see it
    agent.reconcile()
    ack = registry.read_ack(reg, "c5_eth0")
    assert ack is not None and ack.policies == ("ns1/api",)
    assert any("steer:ns1/api" in r for r in rules_of("ns1/api"))
