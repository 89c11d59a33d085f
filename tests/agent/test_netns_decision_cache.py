"""The nftables engine's decision cache on a real kernel (dataplane/nftcache.py).

Pod p1a (node1) is selected by default/web (gateway node2); 50 more policies select neither pod
and come first by name. The first packet of a (source, destination) pair walks the rules; later
ones take the decision from the `decided` map and are counted by the slot chain under the policy
rule's comment, so the per-policy counters stay exact. A gateway move, a stale entry of an older
generation and the fast path's new member all leave the pair's traffic where the rules say.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from egress_cni.dataplane.nft import NftView, parse_table
from tests.agent.topology import EIP4, EXT4, PORT, PYTHON, Topology

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]
OTHERS = 50
SEND = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('', 40123))\n"
    "for _ in range(int(sys.argv[1])):\n"
    "    s.sendto(b'x' * 100, (sys.argv[2], int(sys.argv[3])))\n"
    "    time.sleep(0.002)\n"
)


def _table(t: Topology, n: int) -> dict[str, Any]:
    out = t.exec_in(t.node(n), "nft", "-j", "list", "table", "ip", "egress").stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def _counted(t: Topology, n: int, role: str) -> tuple[int, int]:
    """(packets counted by the policy rule itself, by its slot chain) of default/web's `role` rule."""
    rules = [i["rule"] for i in _table(t, n)["nftables"] if "rule" in i and i["rule"].get("comment", "").endswith(f":{role}:default/web")]
    def packets(r: dict[str, Any]) -> int:
        return sum(int(e["counter"]["packets"]) for e in r["expr"] if isinstance(e, dict) and "counter" in e)
    walk = sum(packets(r) for r in rules if not r["chain"].startswith("slot-"))
    hit = sum(packets(r) for r in rules if r["chain"].startswith("slot-"))
    return walk, hit


def _exported(t: Topology, n: int, role: str) -> int:
    """What the agent's /metrics would say: the counters read back by tag (parse_table sums them)."""
    view = NftView()
    parse_table(_table(t, n), 4, view)
    return sum(p for tag, (p, _) in view.counters.items() if tag.endswith(f":{role}:default/web"))


def _decided(t: Topology, n: int) -> dict[tuple[str, str], int]:
    out = t.exec_in(t.node(n), "nft", "-j", "list", "map", "ip", "egress", "decided").stdout
    m = next(i["map"] for i in json.loads(out)["nftables"] if "map" in i)
    pairs = {}
    for e in m.get("elem", []):
        key, value = e
        key = key.get("elem", {}).get("val", key) if isinstance(key, dict) and "elem" in key else key
        pairs[tuple(key["concat"])] = int(value)
    return pairs


def _send(t: Topology, count: int) -> None:
    t.exec_in(t.pod(1, "a"), PYTHON, "-c", SEND, str(count), EXT4, str(PORT))


def _wait(what: str, check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def _crowded(mode: str) -> Iterator[Topology]:
    t = Topology(pods={1: ["a"]})
    t.vxlan_mode = mode  # CrossSubnet: node2 is on-link, so the gateway admits by its `direct` rules
    try:
        t.build()
        others = [o for i in range(OTHERS)
                  for o in t.policy(f"other{i:03d}", [(1, "y"), (3, "x")], "node2", eip4=f"10.100.1.{1 + i}")]
        t.set_policies("node2", others, web_pods=[(1, "a")])
        for n in (1, 2, 3):
            t.start_agent(n)
        assert t.wait_probe(1, "a", EIP4) == EIP4
        yield t
    finally:
        t.close()


@pytest.fixture(params=["Always", "CrossSubnet"])
def crowded(request: pytest.FixtureRequest) -> Iterator[Topology]:
    yield from _crowded(request.param)


@pytest.fixture
def tunnelled() -> Iterator[Topology]:
    yield from _crowded("Always")


def test_a_pairs_later_packets_skip_the_rules_and_every_packet_is_counted_once(crowded: Topology) -> None:
    t = crowded
    admitted = "tunnel" if t.vxlan_mode == "Always" else "direct"
    before = {(n, role): _counted(t, n, role) for n, role in ((1, "steer"), (2, "local"), (2, admitted))}
    exported = {(n, role): _exported(t, n, role) for n, role in before}
    _send(t, 300)
    pod = t.pod_ip(1, "a")
    assert any(k == (pod, EXT4) for k in _decided(t, 1)), "the pair is kept on the worker"
    for (n, role), (walk0, hit0) in before.items():
        walk, hit = _counted(t, n, role)
        assert (walk - walk0) + (hit - hit0) == 300, (n, role, walk - walk0, hit - hit0)
        assert walk - walk0 <= 2, f"node{n} {role}: {walk - walk0} packets walked the rules (expected the first)"
        assert _exported(t, n, role) - exported[(n, role)] == 300


def test_a_stale_entry_of_an_older_generation_walks_the_rules(crowded: Topology) -> None:
    t = crowded
    pod = t.pod_ip(1, "a")
    t.exec_in(t.node(1), "nft", "flush", "map", "ip", "egress", "decided")
    # what a packet still on the old rules during a commit may leave behind: a slot no chain has
    t.exec_in(t.node(1), "nft", "add", "element", "ip", "egress", "decided", f"{{ {pod} . {EXT4} : 0xd9000001 }}")
    walk0, hit0 = _counted(t, 1, "steer")
    _send(t, 50)
    walk, hit = _counted(t, 1, "steer")
    assert (walk - walk0, hit - hit0) == (50, 0)  # every packet walked, none took the stale slot
    assert t.probe(1, "a", proto="udp") == EIP4


def test_a_gateway_move_takes_the_kept_pair_with_it(tunnelled: Topology) -> None:
    t = tunnelled
    _send(t, 20)  # the pair is kept with node2's mark
    assert t.exec_in(t.node(3), "ip", "addr", "show", check=False).stdout.count(EIP4) == 0
    t.set_policies("node3", web_pods=[(1, "a")])
    _wait("node3 holds the EIP", lambda: EIP4 in t.exec_in(t.node(3), "ip", "addr", "show").stdout)
    _wait("the pair leaves through node3", lambda: t.probe(1, "a", proto="udp") == EIP4
          and sum(_counted(t, 3, "tunnel")) > 0)
    n2 = sum(_counted(t, 2, "tunnel")) if "tunnel:default/web" in json.dumps(_table(t, 2)) else 0
    n3 = sum(_counted(t, 3, "tunnel"))
    _send(t, 100)
    assert sum(_counted(t, 3, "tunnel")) - n3 == 100
    if n2:
        assert sum(_counted(t, 2, "tunnel")) == n2  # nothing more through the old gateway
