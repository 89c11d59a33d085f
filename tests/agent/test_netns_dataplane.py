"""The agent's dataplane on a real kernel: three nodes, pods and an echo server, all in namespaces.

node2 is the gateway of policy default/web (EIP 10.100.0.200) which selects pod p1a (node1) and
p2a (on the gateway node itself); p1b and p3a are not selected.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import pytest

from tests.agent.topology import EIP4, EIP6, EXT4, EXT4_OTHER, EXT6, Topology

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    t = Topology(dual=True)
    try:
        t.build()
        t.set_policies("node2", t.policy("narrow", [(3, "a")], "node2", eip4="10.100.0.201", eip6="fd00:100::201",
                                         dest=[f"{EXT4}/32", f"{EXT6}/128"]))
        for n in (1, 2, 3):
            t.once(n)
        second = {n: json.loads(t.once(n)) for n in (1, 2, 3)}
        assert all(r["ok"] and not r["changes"] for r in second.values()), f"apply twice must be a no-op: {second}"
        for n in (1, 2, 3):
            t.start_agent(n)
        yield t
    finally:
        t.close()


def test_selected_pod_leaves_with_the_eip_over_tcp_and_udp(topo: Topology) -> None:
    assert topo.wait_probe(1, "a", EIP4) == EIP4, topo.agent_log(1)
    assert topo.probe(1, "a", proto="udp") == EIP4


def test_tunnel_packets_are_not_tracked_but_the_flows_inside_are(topo: Topology) -> None:
    assert topo.wait_probe(1, "a", EIP4) == EIP4
    for n in (1, 2):
        table = topo.exec_in(topo.node(n), "cat", "/proc/net/nf_conntrack").stdout.splitlines()
        assert any(f"dst={EXT4}" in e and f"dport={8080}" in e for e in table), (n, table)
        assert not [e for e in table if "dport=7789" in e], (n, table)


def test_unselected_pod_keeps_its_usual_source(topo: Topology) -> None:
    assert topo.probe(1, "b") == "10.100.0.1"
    assert topo.probe(1, "b", proto="udp") == "10.100.0.1"


def test_pod_on_the_gateway_node_uses_the_eip(topo: Topology) -> None:
    assert topo.wait_probe(2, "a", EIP4) == EIP4
    assert topo.probe(2, "a", proto="udp") == EIP4


def test_destinations_outside_dest_subnet_keep_the_usual_ip(topo: Topology) -> None:
    assert topo.wait_probe(3, "a", "10.100.0.201") == "10.100.0.201"
    assert topo.probe(3, "a", dst=EXT4_OTHER) == "10.100.0.3"


def test_in_cluster_traffic_is_untouched(topo: Topology) -> None:
    # pod -> node IP of another node: the echo server is outside, so use a pod on node3 as the server
    server = topo.exec_in(topo.pod(3, "b"), "true")
    assert server.returncode == 0
    import subprocess

    from tests.agent.topology import ECHO, PYTHON

    proc = subprocess.Popen(["ip", "netns", "exec", topo.pod(3, "b"), PYTHON, ECHO, "9090"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        got = topo.exec_in(topo.pod(1, "a"), PYTHON, ECHO, "probe", topo.pod_ip(3, "b"), "9090", "tcp", check=False)
        assert got.stdout.strip() == topo.pod_ip(1, "a")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)


def test_ipv6_selected_and_unselected(topo: Topology) -> None:
    assert topo.wait_probe(1, "a", EIP6, dst=EXT6) == EIP6
    assert topo.probe(1, "a", dst=EXT6, proto="udp") == EIP6
    assert topo.probe(2, "a", dst=EXT6) == EIP6
    assert topo.probe(1, "b", dst=EXT6) == "fd00:100::1"


def test_tamper_is_repaired_by_resync(topo: Topology) -> None:
    node1 = topo.node(1)
    if "table ip egress" in topo.exec_in(node1, "nft", "list", "tables").stdout:  # the nftables engine
        chain = "mangle-EGRESS-PREROUTING"
        listing = topo.exec_in(node1, "nft", "-a", "list", "chain", "ip", "egress", chain).stdout
        handle = next(line.rsplit("# handle ", 1)[1] for line in listing.splitlines() if "steer:default/web" in line)
        topo.exec_in(node1, "nft", "delete", "rule", "ip", "egress", chain, "handle", handle)
        topo.exec_in(node1, "ip", "rule", "del", "fwmark", "0x26000002", "lookup", "0x26000002", check=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ruled = "0x26000002" in topo.exec_in(node1, "ip", "rule").stdout
            if "steer:default/web" in topo.exec_in(node1, "nft", "list", "chain", "ip", "egress", chain).stdout and ruled:
                break
            time.sleep(0.2)
        else:
            pytest.fail("tampered rules were not restored:\n" + topo.agent_log(1))
        assert topo.wait_probe(1, "a", EIP4) == EIP4
        return
    rules = topo.exec_in(node1, "iptables-save", "-t", "mangle").stdout
    steer = next(line for line in rules.splitlines() if "steer:default/web" in line)
    topo.exec_in(node1, "iptables", "-t", "mangle", *steer.split()[0:1], "EGRESS-PREROUTING", "1", check=False)
    topo.exec_in(node1, "iptables", "-t", "mangle", "-D", "EGRESS-PREROUTING", "1")
    topo.exec_in(node1, "ip", "rule", "del", "fwmark", "0x26000002", "lookup", "0x26000002", check=False)
    topo.exec_in(node1, "iptables", "-t", "mangle", "-D", "PREROUTING", "1")  # someone rewrote the built-in chain
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = topo.exec_in(node1, "iptables-save", "-t", "mangle").stdout
        first = [line for line in now.splitlines() if line.startswith("-A PREROUTING")]
        ruled = "0x26000002" in topo.exec_in(node1, "ip", "rule").stdout
        if "steer:default/web" in now and first and "EGRESS-PREROUTING" in first[0] and ruled:
            break
        time.sleep(0.2)
    else:
        pytest.fail("tampered rules were not restored:\n" + topo.agent_log(1))
    assert topo.wait_probe(1, "a", EIP4) == EIP4


def test_cni_registered_endpoint_is_programmed_and_acked(topo: Topology) -> None:
    from egress_cni import registry

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p3b", "namespace": "default", "labels": {"policy": "web"}},
           "spec": {"nodeName": "node3"}}
    topo._dump("pods.yaml", [pod])
    reg = str(topo.dir / "registry-node3")
    time.sleep(0.3)  # let node3's agent see the Pod (its labels decide the selection)
    registry.write_endpoint(reg, registry.Endpoint("cid3b", "eth0", "default", "p3b", node="node3",
                                                   ipv4=[topo.pod_ip(3, "b")], ipv6=[topo.pod_ip(3, "b", 6)]))
    deadline = time.monotonic() + 20
    while (ack := registry.read_ack(reg, "cid3b_eth0")) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ack is not None and ack.selected and ack.policies == ("default/web",), topo.agent_log(3)
    # until the controller lists the pod in the policy's endpoint slice, the gateway does not know its IP
    # and drops what arrives from the tunnel (fail closed: nothing leaves with the pod's or a node's IP)
    assert topo.probe(3, "b", timeout=1.0).startswith("error")
    topo.set_policies("node2", web_pods=[(1, "a"), (2, "a"), (3, "b")])  # the controller's slice update
    assert topo.wait_probe(3, "b", EIP4) == EIP4
    assert registry.read_agent(reg) is not None and registry.agent_alive(reg)


def test_restarting_the_agents_keeps_established_flows(topo: Topology) -> None:
    import subprocess

    from tests.agent.topology import ECHO, PORT, PYTHON

    assert topo.wait_probe(1, "a", EIP4) == EIP4
    flow = subprocess.Popen(["ip", "netns", "exec", topo.pod(1, "a"), PYTHON, ECHO, "stream", EXT4, str(PORT), "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        for n in (1, 2):
            topo.stop_agent(n, signal.SIGTERM)
            topo.start_agent(n)
        out, err = flow.communicate(timeout=60)
    finally:
        if flow.poll() is None:
            flow.kill()
    assert flow.returncode == 0 and out.strip().startswith(f"{EIP4}=") and " " not in out.strip(), (out, err)


def test_uninstall_removes_everything_we_own(topo: Topology) -> None:
    topo.stop_agent(1, signal.SIGTERM)
    out = topo.exec_in(topo.node(1), *topo.agent_args(1, "uninstall")[4:])
    assert "uninstalled" in out.stdout
    node1 = topo.node(1)
    for tool in ("iptables-save", "ip6tables-save"):
        assert "EGRESS" not in topo.exec_in(node1, tool).stdout
    assert "egress-" not in topo.exec_in(node1, "ipset", "list", "-n").stdout
    assert "egress.vxlan" not in topo.exec_in(node1, "ip", "link").stdout
    assert "0x2600" not in topo.exec_in(node1, "ip", "rule").stdout + topo.exec_in(node1, "ip", "-6", "rule").stdout
    assert "MASQUERADE" in topo.exec_in(node1, "iptables-save", "-t", "nat").stdout  # not ours: untouched
    assert topo.probe(1, "a") == "10.100.0.1"
