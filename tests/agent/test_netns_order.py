"""Overlapping policies on a real kernel: at equal priority the more specific destination wins.

Pod p1a (node1) is selected by default/web (no destSubnet: everything outside the cluster, EIP
10.100.0.200) and by default/zz-specific (destSubnet 10.100.0.100/32, EIP 10.100.0.201), both on
gateway node2 and without priority. By name web would come first; by specificity zz-specific does
(`semantics.policy_order`), so traffic to 10.100.0.100 leaves with .201 and to .101 with .200.
"""

from __future__ import annotations

import pytest

from tests.agent.topology import EIP4, EXT4, EXT4_OTHER, Topology

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


def test_the_more_specific_destination_wins_at_equal_priority() -> None:
    t = Topology(pods={1: ["a"]})
    try:
        t.build()
        t.set_policies("node2", t.policy("zz-specific", [(1, "a")], "node2", eip4="10.100.0.201", dest=[f"{EXT4}/32"]),
                       web_pods=[(1, "a")])
        for n in (1, 2):
            t.once(n)
        assert t.wait_probe(1, "a", "10.100.0.201", dst=EXT4) == "10.100.0.201"
        assert t.probe(1, "a", dst=EXT4, proto="udp") == "10.100.0.201"
        assert t.probe(1, "a", dst=EXT4_OTHER) == EIP4  # outside the narrow CIDR: the broad policy
    finally:
        t.close()
