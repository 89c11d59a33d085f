"""Forgetting un-NATed flows on a real conntrack table (a namespace of the test's own): exactly the
pod's un-NATed flows to outside destinations go; SNATed, DNATed, in-cluster and other pods' stay."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.agent.topology import PYTHON, ROOT, scratch_netns, sh

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

POD, OTHER, EIP = "10.244.1.10", "10.244.1.11", "10.100.0.200"
FLOWS = {  # name: (orig src, orig dst, reply src, reply dst)
    "unnatted": (POD, "8.8.8.8", "8.8.8.8", POD),
    "unnatted-second-destination": (POD, "1.1.1.1", "1.1.1.1", POD),
    "snat": (POD, "9.9.9.9", "9.9.9.9", EIP),
    "dnat-service": (POD, "10.96.0.10", "10.244.2.5", POD),
    "in-cluster": (POD, "10.244.2.5", "10.244.2.5", POD),
    "other-pod": (OTHER, "8.8.8.8", "8.8.8.8", OTHER),
    "v6-unnatted": ("fd00:244:1::10", "2001:db8::1", "2001:db8::1", "fd00:244:1::10"),
}
GONE = {"unnatted", "unnatted-second-destination", "v6-unnatted"}


@pytest.fixture
def netns() -> Iterator[str]:
    with scratch_netns("ct") as name:
        yield name


def insert(ns: str, sport: int, flow: tuple[str, str, str, str]) -> None:
    o_src, o_dst, r_src, r_dst = flow
    sh("ip", "netns", "exec", ns, "conntrack", "-I", "-p", "udp", "-s", o_src, "-d", o_dst, "--sport", str(sport),
       "--dport", "53", "-r", r_src, "-q", r_dst, "--reply-port-src", "53", "--reply-port-dst", str(sport), "-t", "600")


def listed(ns: str) -> set[tuple[str, str, str, str]]:
    """(orig src, orig dst, reply src, reply dst) of every entry."""
    from egress_cni.dataplane.conntrack import parse_flow

    flows = [parse_flow(line) for fam in ("ipv4", "ipv6")
             for line in sh("ip", "netns", "exec", ns, "conntrack", "-L", "-f", fam).stdout.splitlines()]
    return {(f[0].src, f[0].dst, f[1], f[2]) for f in flows if f is not None}


def real_icmp_and_tcp_flows(ns: str) -> None:
    """A ping and a TCP SYN sent by the pod address itself (conntrack -I cannot make ICMP entries)."""
    for cmd in (["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"],
                ["ip", "addr", "add", f"{POD}/24", "dev", "veth0"], ["ip", "link", "set", "veth0", "up"],
                ["ip", "link", "set", "veth1", "up"],
                ["ip", "neigh", "add", "10.244.1.1", "lladdr", "02:00:00:00:00:01", "dev", "veth0", "nud", "permanent"],
                ["ip", "route", "add", "default", "via", "10.244.1.1", "dev", "veth0"],
                ["iptables", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"]):  # conntrack on
        sh("ip", "netns", "exec", ns, *cmd)
    sh("ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "1", "192.0.2.7", check=False)
    sh("ip", "netns", "exec", ns, PYTHON, "-c", "import socket; s = socket.socket(); s.setblocking(False); "
       "s.connect_ex(('192.0.2.8', 80))")


def test_only_the_pods_unnatted_outbound_flows_are_deleted(netns: str) -> None:
    for sport, flow in enumerate(FLOWS.values(), start=20000):
        insert(netns, sport, flow)
        insert(netns, sport + 100, flow)  # two flows per kind
    real_icmp_and_tcp_flows(netns)
    real = {(POD, "192.0.2.7", "192.0.2.7", POD), (POD, "192.0.2.8", "192.0.2.8", POD)}
    assert listed(netns) == set(FLOWS.values()) | real
    code = ("import json; from egress_cni.dataplane.conntrack import forget_unnatted_flows as f; print(json.dumps("
            f"f(frozenset({{'{POD}', 'fd00:244:1::10'}}), frozenset({{'10.244.0.0/16', '10.96.0.0/12', 'fd00:244::/32'}}))))")
    proc = subprocess.run(["ip", "netns", "exec", netns, PYTHON, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == 2 * len(GONE) + len(real)
    assert listed(netns) == {flow for name, flow in FLOWS.items() if name not in GONE}


def test_thousands_of_flows_are_deleted_in_batches(netns: str) -> None:
    """More deletes than one batch of acks fits in the socket's receive buffer (ENOBUFS once)."""
    n = 1500
    script = "".join(f"conntrack -I -p udp -s {POD} -d 198.51.100.{1 + i % 200} --sport {10000 + i} --dport 53 "
                     f"-r 198.51.100.{1 + i % 200} -q {POD} --reply-port-src 53 --reply-port-dst {10000 + i} -t 600 "
                     "2>/dev/null\n" for i in range(n))
    sh("ip", "netns", "exec", netns, "sh", "-e", input=script)
    code = ("from egress_cni.dataplane.conntrack import forget_unnatted_flows as f; "
            f"print(f(frozenset({{'{POD}'}}), frozenset({{'10.244.0.0/16'}})))")
    proc = subprocess.run(["ip", "netns", "exec", netns, PYTHON, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == n
    assert listed(netns) == set()
