"""The agent keeps programming valid policies next to objects that reached the API without the
webhook: a policy whose status names no address (`status.eip.ipv4: not-an-ip`) and an EgressTunnel
with a malformed MAC. Three nodes in network namespaces (tests/agent/topology.py); node2 is the
gateway of default/web."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.agent.topology import API, EIP4, Topology

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology()
    try:
        t.build()
        for n in (1, 2, 3):
            t.start_agent(n)
        yield t
    finally:
        t.close()


def broken_objects(t: Topology) -> list[dict[str, object]]:
    bad_status = t.policy("broken", [(3, "a")], "node2", eip4="not-an-ip")
    bad_tunnel = {"apiVersion": API, "kind": "EgressTunnel", "metadata": {"name": "node4"},
                  "status": {"tunnel": {"ipv4": "172.31.0.4", "mac": "not-a-mac",
                                        "parent": {"name": "eth0", "ipv4": "10.100.0.4"}},
                             "mark": "0x26000004", "phase": "Ready"}}
    return [*bad_status, bad_tunnel]


def test_valid_policies_are_programmed_next_to_invalid_objects(topo: Topology) -> None:
    assert topo.wait_probe(1, "a", EIP4) == EIP4, topo.agent_log(1)
    topo._dump("broken.yaml", broken_objects(topo))
    # a change to the valid policy after the invalid objects arrived is still programmed
    topo.set_policies("node2", web_pods=[(1, "a"), (2, "a"), (1, "b")])
    assert topo.wait_probe(1, "b", EIP4) == EIP4, topo.agent_log(1)
    assert topo.probe(1, "a") == EIP4 and topo.probe(2, "a") == EIP4
    assert topo.probe(3, "a") == "10.100.0.3", topo.agent_log(3)  # the broken policy steers nothing
    assert all(topo.agents[n].poll() is None for n in (1, 2, 3)), [topo.agent_log(n) for n in (1, 2, 3)]
    # and the agent said what it skipped, naming the fields
    deadline = time.monotonic() + 10
    while not all(f in topo.agent_log(3) for f in ("status.eip.ipv4", "status.tunnel.mac")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "status.eip.ipv4" in topo.agent_log(3) and "status.tunnel.mac" in topo.agent_log(3), topo.agent_log(3)


def test_a_fresh_agent_starts_next_to_invalid_objects(topo: Topology) -> None:
    topo._dump("broken.yaml", broken_objects(topo))
    for n in (1, 2, 3):
        topo.stop_agent(n)
        topo.once(n)  # one full reconcile succeeds (it raises if the agent exits non-zero)
        topo.start_agent(n)
    assert topo.wait_probe(1, "a", EIP4) == EIP4, topo.agent_log(1)
    assert topo.probe(3, "a") == "10.100.0.3", topo.agent_log(3)
