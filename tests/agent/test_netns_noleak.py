"""No leak when the gateway moves under a live flow: NAT is decided by a flow's first packet only.

Pod p3a (node3) is selected by policy default/web. While node2 is the gateway, node3 tunnels p3a's
flow (nat ACCEPT on the tunnel: no NAT binding). When node3 itself becomes the gateway, that
conntrack entry must not carry the flow out of eth0 with the pod IP. The external side routes the
pod subnet back to node3, so a leaked datagram would be answered and seen by the pod. Once the
stale entry is deleted the same socket gets the EIP again. Each test runs with the tunnel (`Always`)
and without it (`CrossSubnet`: every node here is on-link, so the flow goes to node2 directly and
its entry carries the `routed` connmark instead).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest

from tests.agent.topology import ECHO, EIP4, EXT4, PORT, PYTHON, Topology, sh

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]
MODES = pytest.mark.parametrize("mode", ["Always", "CrossSubnet"])


@MODES
def test_a_tunnelled_flow_never_leaves_with_the_pod_ip_when_its_node_becomes_the_gateway(mode: str) -> None:
    t = Topology(pods={1: ["a"], 3: ["a"]})
    t.vxlan_mode = mode
    try:
        t.build()
        pods = [(1, "a"), (3, "a")]
        t.set_policies("node2", web_pods=pods)
        sh("ip", "-n", t.ns("ext"), "route", "replace", "10.244.3.0/24", "via", "10.100.0.3")
        for n in (1, 2, 3):
            t.start_agent(n)
        assert t.wait_probe(3, "a", EIP4) == EIP4, t.agent_log(3)
        # the controller moves the policy to the flow's own node
        out = _one_socket_across(t, 3, lambda: t.set_policies("node3", web_pods=pods), "the gateway move")
        assert t.pod_ip(3, "a") not in out, f"the flow left node3 with the pod IP: {out}"
        # node3's agent deletes the flow's un-NATed conntrack entry: the same socket gets the EIP again
        assert out.split()[-1].startswith(f"{EIP4}="), f"the flow did not recover: {out}"
        assert t.wait_probe(3, "a", EIP4) == EIP4  # a new flow is SNATed on node3
    finally:
        t.close()


@MODES
def test_a_tunnelled_flow_never_leaves_with_the_pod_ip_when_its_pod_is_no_longer_selected(mode: str) -> None:
    """The policy stops selecting p1a (worker node1) mid-flow: the flow's "no NAT" entry must not carry it
    out of eth0 with the pod IP; it starts over as an unselected flow (the node IP, like any other pod)."""
    t = Topology(pods={1: ["a"]})
    t.vxlan_mode = mode
    try:
        t.build()
        t.set_policies("node2", web_pods=[(1, "a")])
        sh("ip", "-n", t.ns("ext"), "route", "replace", "10.244.1.0/24", "via", "10.100.0.1")
        for n in (1, 2):
            t.start_agent(n)
        assert t.wait_probe(1, "a", EIP4) == EIP4, t.agent_log(1)
        # the controller's slice no longer lists p1a
        out = _one_socket_across(t, 1, lambda: t.set_policies("node2", web_pods=[(2, "a")]), "the unselection")
        assert t.pod_ip(1, "a") not in out, f"the flow left node1 with the pod IP: {out}"
        assert out.split()[-1].startswith("10.100.0.1="), f"the flow did not start over with the node IP: {out}"
    finally:
        t.close()


def _one_socket_across(t: Topology, node: int, change: Callable[[], None], what: str) -> str:
    """Datagrams from one UDP socket of pod (node, a) for 6 s, `change` made 1.5 s in: the answers in order."""
    flow = subprocess.Popen(["ip", "netns", "exec", t.pod(node, "a"), PYTHON, ECHO, "ustream", EXT4, str(PORT), "6"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t.procs.append(flow)
    time.sleep(1.5)
    change()
    out, err = flow.communicate(timeout=60)
    print(f"one UDP socket across {what} (answer=datagrams, in order): {out.strip()}")
    assert flow.returncode == 0 and f"{EIP4}=" in out, (out, err, t.agent_log(node))
    return out
