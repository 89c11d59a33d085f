"""The no-encapsulation mode on a real kernel: three nodes on one bridge (every peer on-link).

A selected pod's packets go to the gateway node's parent address without a tunnel, leave with the
EIP, and their replies come back; no VXLAN frame crosses the segment. The leak tests run in both
modes (`Always` is the tunnel): whatever breaks, ext never receives a packet from a pod address.
ext counts what reaches its IP stack from pod addresses (frames sent to its MAC; a switch's
flooding is not reception), the bridge counts VXLAN frames (Topology.watch).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.agent.topology import EIP4, EIP6, EXT6, Topology

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

BOTH = ["Always", "CrossSubnet"]


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology(pods={1: ["a", "b"], 2: ["a"]})
    try:
        yield t
    finally:
        t.close()


def _start(t: Topology, mode: str, nodes: tuple[int, ...] = (1, 2), quiet: bool = False) -> None:
    """Build, policy default/web selects p1a with gateway node2, agents in `mode`; `quiet`: no drift
    check and no resync, so what a test breaks stays broken."""
    t.vxlan_mode = mode
    if quiet:
        t.resync_seconds = 600
        t.agent_extra = ["--drift-seconds", "0"]
    t.build()
    t.set_policies("node2", web_pods=[(1, "a")])
    for n in nodes:
        t.start_agent(n)
    assert t.wait_probe(1, "a", EIP4) == EIP4, t.agent_log(1) + t.agent_log(2)
    t.watch()


@pytest.mark.parametrize("mode", ["Always", "CrossSubnet", "Never"])
def test_selected_pod_leaves_with_the_eip_without_a_tunnel_in_both_families(mode: str) -> None:
    t = Topology(dual=True, pods={1: ["a", "b"], 2: ["a"]})
    try:
        _start(t, mode)
        assert t.wait_probe(1, "a", EIP6, dst=EXT6) == EIP6, t.agent_log(1)
        for _ in range(5):
            assert t.probe(1, "a") == EIP4
            assert t.probe(1, "a", proto="udp") == EIP4
            assert t.probe(1, "a", dst=EXT6) == EIP6
            assert t.probe(1, "a", dst=EXT6, proto="udp") == EIP6
        assert t.probe(1, "b") == "10.100.0.1"  # unselected: untouched
        assert t.probe(2, "a") == "10.100.0.2"
        seen = t.watched()
        assert seen["pod4"] == seen["pod6"] == 0, seen
        node1 = t.node(1)
        routes = t.exec_in(node1, "ip", "route", "show", "table", "0x26000002").stdout
        routes6 = t.exec_in(node1, "ip", "-6", "route", "show", "table", "0x26000002").stdout
        rules = t.exec_in(node1, "ip", "rule").stdout
        if mode == "Always":
            assert seen["vxlan"] > 0, seen  # the control: the counter sees the tunnel
            assert "egress.vxlan" in routes
            return
        assert seen["vxlan"] == 0, f"VXLAN frames on the segment in {mode}: {seen}"
        assert "via 10.100.0.2 dev eth0" in routes and "via fd00:100::2 dev eth0" in routes6, (routes, routes6)
        assert "fwmark 0x26000002 unreachable" in rules, rules
        links = t.exec_in(node1, "ip", "link").stdout
        assert ("egress.vxlan" in links) == (mode == "CrossSubnet"), links
    finally:
        t.close()


def test_strict_rp_filter_on_the_gateway_is_loosened_for_direct_arrivals(topo: Topology) -> None:
    """node2 routes node1's pod CIDR through an overlay device (as a CNI's would be) with strict
    reverse-path filtering: direct arrivals from node1's pods would be dropped; the agent sets the
    parent's rp_filter to loose (2), nothing else."""
    topo.vxlan_mode = "CrossSubnet"
    topo.build()
    node2 = topo.node(2)
    topo.exec_in(node2, "ip", "link", "add", "ovl0", "type", "veth", "peer", "name", "ovl1")
    for link in ("ovl0", "ovl1"):
        topo.exec_in(node2, "ip", "link", "set", link, "up")
    topo.exec_in(node2, "ip", "route", "replace", "10.244.1.0/24", "dev", "ovl0")
    for conf in ("all", "eth0"):
        topo.exec_in(node2, "sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=1")
    topo.set_policies("node2", web_pods=[(1, "a")])
    for n in (1, 2):
        topo.start_agent(n)
    assert topo.wait_probe(1, "a", EIP4) == EIP4, topo.agent_log(2)
    assert topo.exec_in(node2, "cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter").stdout.strip() == "2"
    assert topo.exec_in(node2, "cat", "/proc/sys/net/ipv4/conf/all/rp_filter").stdout.strip() == "1"


def _no_pod_ip_reaches_ext(t: Topology, what: str) -> None:
    for proto in ("tcp", "udp", "tcp"):
        got = t.probe(1, "a", proto=proto, timeout=1.0)
        assert got != t.pod_ip(1, "a"), f"{what}: ext saw the pod IP"
    seen = t.watched()
    assert seen["pod4"] == 0, f"{what}: {seen}"


@pytest.mark.parametrize("mode", BOTH)
def test_no_pod_ip_reaches_ext_when_the_worker_loses_its_route_then_its_rule(topo: Topology, mode: str) -> None:
    _start(topo, mode, quiet=True)
    node1 = topo.node(1)
    topo.exec_in(node1, "ip", "route", "flush", "table", "0x26000002")
    _no_pod_ip_reaches_ext(topo, "route to the gateway removed")
    topo.exec_in(node1, "ip", "rule", "del", "priority", "99", "fwmark", "0x26000002", "lookup", "0x26000002")
    _no_pod_ip_reaches_ext(topo, "route and rule removed")
    assert topo.probe(1, "b") == "10.100.0.1"  # unselected traffic is untouched


@pytest.mark.parametrize("mode", BOTH)
def test_no_pod_ip_reaches_ext_when_the_gateway_agent_is_killed(topo: Topology, mode: str) -> None:
    _start(topo, mode)
    topo.stop_agent(2, signal.SIGKILL)
    _no_pod_ip_reaches_ext(topo, "gateway agent killed")


@pytest.mark.parametrize("mode", BOTH)
def test_the_gateway_drops_what_no_policy_of_its_own_matches(topo: Topology, mode: str) -> None:
    """The worker steers the pod, the gateway does not know it (its source set lost the pod, as for a
    pod the controller has not listed yet): dropped there, not forwarded with the pod IP."""
    _start(topo, mode, quiet=True)
    node2 = topo.node(2)
    pod = topo.pod_ip(1, "a")
    if "table ip egress" in topo.exec_in(node2, "nft", "list", "tables").stdout:
        listing = topo.exec_in(node2, "nft", "list", "table", "ip", "egress").stdout
        sets = {w for line in listing.splitlines() for w in line.split() if w.startswith("@egress-s4-")}
        for name in sets:
            topo.exec_in(node2, "nft", "delete", "element", "ip", "egress", name[1:], f"{{ {pod} }}", check=False)
    else:
        listing = topo.exec_in(node2, "ipset", "list", "-n").stdout
        for name in (n for n in listing.split() if n.startswith("egress-s4-")):
            topo.exec_in(node2, "ipset", "del", name, pod, check=False)
    topo.exec_in(node2, "conntrack", "-F", check=False)
    _no_pod_ip_reaches_ext(topo, "gateway without the pod in its policy")
