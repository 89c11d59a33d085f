"""A rule-order adversary (Calico's `chainInsertMode: Insert`, tests/agent/adversary.py) re-inserts
its rules at the top of iptables' built-in chains every second, an ACCEPT ahead of everything in
mangle PREROUTING and nat POSTROUTING, while pod p1a opens a new flow every 50 ms: with the
nftables engine not one flow leaves with the node IP or the pod IP (bench/adversary.py measures
both engines), with the tunnel and without it (`CrossSubnet`: node2 is on-link)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.agent.adversary import adversary, probe
from tests.agent.topology import EIP4, Topology

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


@pytest.fixture(params=["Always", "CrossSubnet"])
def topo(request: pytest.FixtureRequest) -> Iterator[Topology]:
    t = Topology(pods={1: ["a"]})
    t.engine = "nftables"
    t.vxlan_mode = request.param
    t.agent_extra = ["--drift-seconds", "1"]
    try:
        assert t.start_web_on_node2(), t.agent_log(1)
        yield t
    finally:
        t.close()


def test_no_flow_leaks_while_the_adversary_reorders_iptables(topo: Topology) -> None:
    t = topo
    # the server answers a pod IP too: a datagram that left un-NATed is counted, not lost
    subprocess.run(["ip", "-n", t.ns("ext"), "route", "add", "10.244.1.0/24", "via", "10.100.0.1"], check=True)
    stop = threading.Event()
    rounds: Counter[str] = Counter()
    adv = threading.Thread(target=adversary, args=(t, 1.0, stop, rounds), daemon=True)
    adv.start()
    try:
        time.sleep(0.2)  # its first round is in before the first probe
        counts = probe(t, 10.0)
    finally:
        stop.set()
        adv.join(timeout=30)
    total = sum(counts.values())
    leaked = {k: v for k, v in counts.items() if k not in (EIP4, "-")}
    print(f"adversary ({dict(rounds)} rounds): {total} probes: EIP {counts[EIP4]}, lost {counts['-']}, leaked {leaked}")
    assert rounds["ok"] >= 10 and not rounds["failed"], rounds
    assert not leaked, f"flows left without the EIP: {leaked} of {total}\n{t.agent_log(1)[-3000:]}"
    assert counts[EIP4] >= 0.9 * total, counts
