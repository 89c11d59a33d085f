"""Failover: the gateway node loses its link and its agent stops; traffic resumes through the other
gateway node with the same EIP. The controller's decision is simulated by rewriting the policy's
status.node in the YAML source every agent reads."""

from __future__ import annotations

import pytest

from tests.agent.topology import EIP4, EIP6, EXT4, EXT6, Topology

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


def test_gateway_loss_moves_the_eip_to_the_other_gateway_node() -> None:
    t = Topology(pods={1: ["a"]})
    try:
        t.build()
        for n in (1, 2, 3):
            t.start_agent(n)
        assert t.wait_probe(1, "a", EIP4) == EIP4, t.agent_log(1)
        t0 = t.fail_gateway(2, "node3")
        until = t.start_until(1, "a", EIP4, EXT4, deadline=30)
        out, err = until.communicate(timeout=60)
        assert until.returncode == 0, f"no reply with the EIP after failover: {out} {err}\n{t.agent_log(3)}"
        seconds = float(out.strip()) - t0
        print(f"failover: first reply with {EIP4} {seconds:.3f} s after the gateway loss")
        assert t.probe(1, "a") == EIP4
        assert "10.100.0.200" in t.exec_in(t.node(3), "ip", "-4", "addr", "show", "dev", "egress.eip").stdout
    finally:
        t.close()


def test_dual_stack_failover_announces_both_eips() -> None:
    """The successor sends a gratuitous ARP and an unsolicited NA: both families recover quickly."""
    t = Topology(dual=True, pods={1: ["a"]})
    try:
        t.build()
        for n in (1, 2, 3):
            t.start_agent(n)
        assert t.wait_probe(1, "a", EIP4) == EIP4, t.agent_log(1)
        assert t.wait_probe(1, "a", EIP6, dst=EXT6) == EIP6, t.agent_log(1)
        t0 = t.fail_gateway(2, "node3")
        v4 = t.start_until(1, "a", EIP4, EXT4, deadline=30)
        v6 = t.start_until(1, "a", EIP6, EXT6, deadline=30)
        out4, _ = v4.communicate(timeout=60)
        out6, _ = v6.communicate(timeout=60)
        assert v4.returncode == 0 and v6.returncode == 0, (out4, out6, t.agent_log(3))
        print(f"dual-stack failover: v4 {float(out4) - t0:.3f} s, v6 {float(out6) - t0:.3f} s")
    finally:
        t.close()
