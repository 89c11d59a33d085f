"""Status and names written by anyone with access to the API never reach iptables-restore text raw:
every value compute renders was parsed by the model (IP, Mac, an integer mark, a DNS name), so a
hostile value makes its object Invalid with the field named, and the rest of the node renders."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from devtools.scenario import facts_from
from egress_cni.agent.sources import MemorySource, load_yaml_objects
from egress_cni.agent.state import StateView
from egress_cni.dataplane.compute import desired_dataplane
from egress_cni.dataplane.inputs import DataplaneConfig
from egress_cni.dataplane.render import golden_files

pytestmark = pytest.mark.unit

CASE = Path(__file__).resolve().parent.parent / "golden" / "gateway-basic"
INJECTED = "-j ACCEPT"
QUOTED = re.compile(r'(?<= )"(egw:[0-9a-f]{10}:[A-Za-z0-9.:/_~-]*|egw-cache:[a-z-]+|[A-Za-z0-9._*-]+)"')


def objects() -> list[dict[str, Any]]:
    return load_yaml_objects([str(CASE / "input.yaml")])


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def render(objs: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The gateway node's (node2) rendered dataplane, and the paths of the objects' invalid fields."""
    source = MemorySource(objs)
    state = StateView(source.stores, "node2").state()
    facts = facts_from({"name": "node2", "parent": "eth0", "parent_ipv4": "10.100.0.2"})
    files = golden_files(desired_dataplane(state, facts, DataplaneConfig()).dataplane)
    # the nftables scripts quote interface names and our comments: with those quotes taken out, no
    # other quote may be left in them (a value that closed one would show as a stray quote)
    nft = QUOTED.sub("", "\n".join(v for k, v in files.items() if k.startswith("nft_")))
    text = "\n".join([*(v for k, v in files.items() if not k.startswith("nft_")), nft])
    return text, [f"{i.kind}/{i.name}:{i.error.path}" for i in source.stores.invalid()]


def hostile_eip(objs: list[dict[str, Any]]) -> None:
    find(objs, "EgressPolicy", "web")["status"]["eip"]["ipv4"] = f"1.2.3.4 {INJECTED}"


def hostile_gateway_eip(objs: list[dict[str, Any]]) -> None:
    del find(objs, "EgressPolicy", "web")["status"]  # placement then reads the gateway's status
    find(objs, "EgressGateway", "default")["status"]["nodeList"][0]["eips"][0]["ipv4"] = f"1.2.3.4 {INJECTED}"


def hostile_mac(objs: list[dict[str, Any]]) -> None:
    find(objs, "EgressTunnel", "node1")["status"]["tunnel"]["mac"] = f'aa:bb" {INJECTED}'


def hostile_mark(objs: list[dict[str, Any]]) -> None:
    find(objs, "EgressTunnel", "node3")["status"]["mark"] = f"0x26000003 {INJECTED}"


def hostile_tunnel_name(objs: list[dict[str, Any]]) -> None:
    tunnel = copy.deepcopy(find(objs, "EgressTunnel", "node3"))
    tunnel["metadata"]["name"] = f"node4 {INJECTED}"
    objs.append(tunnel)


def hostile_policy_name(objs: list[dict[str, Any]]) -> None:
    policy = copy.deepcopy(find(objs, "EgressPolicy", "web"))
    policy["metadata"]["name"] = f'web" {INJECTED} "'
    objs.append(policy)


SNAT, MAC1, MAC3 = "SNAT --to-source 10.100.0.200", "--mac-source 66:00:00:00:00:01", "--mac-source 66:00:00:00:00:03"
OWN_LINK = "address 66:00:00:00:00:02 mtu"
# (mutation, the invalid field named, what the valid rest still renders)
CASES = [
    (hostile_eip, "EgressPolicy/web:status.eip.ipv4", OWN_LINK),  # the policy is not served at all
    (hostile_gateway_eip, "EgressGateway/default:status.nodeList[0].eips[0].ipv4", OWN_LINK),
    (hostile_mac, "EgressTunnel/node1:status.tunnel.mac", MAC3),
    (hostile_mark, "EgressTunnel/node3:status.mark", MAC1),
    (hostile_tunnel_name, f"EgressTunnel/node4 {INJECTED}:metadata.name", MAC3),
    (hostile_policy_name, f'EgressPolicy/web" {INJECTED} ":metadata.name', SNAT),
]


def test_the_untouched_scenario_renders_what_the_hostile_values_would_replace() -> None:
    text, invalid = render(objects())
    assert not invalid
    assert all(kept in text for kept in (SNAT, MAC1, MAC3, OWN_LINK))
    assert text.count(INJECTED) == 1  # compute's own: `-o egress.vxlan ... -j ACCEPT` (tag "tunnel")


@pytest.mark.parametrize(("mutate", "field", "kept"), CASES, ids=[m.__name__ for m, _, _ in CASES])
def test_a_hostile_value_never_reaches_the_rendered_text(mutate: Any, field: str, kept: str) -> None:
    objs = objects()
    mutate(objs)
    text, invalid = render(objs)
    assert invalid == [field]
    assert text.count(INJECTED) == 1  # compute's own only
    assert '"' not in text and "1.2.3.4" not in text and "aa:bb" not in text and "node4" not in text
    assert kept in text  # the other objects still render
