"""The node-local registry protocol shared by the CNI plugin and the agent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egress_cni import registry as reg
from egress_cni.lowlevel import jsonlite

pytestmark = pytest.mark.unit


def endpoint(**over: object) -> reg.Endpoint:
    values: dict[str, object] = dict(container_id="abc", ifname="eth0", namespace="ns", pod="p", uid="u1", node="n1",
                                     ipv4=["10.0.0.5"], ipv6=["fd00::5"], mode="underlay")
    values.update(over)
    return reg.Endpoint(**values)  # type: ignore[arg-type]


def test_endpoint_round_trip_and_wire_names(tmp_path: Path) -> None:
    ep = endpoint()
    path = reg.write_endpoint(str(tmp_path), ep)
    raw = json.loads(Path(path).read_text())
    assert Path(path).name == "abc_eth0.json"
    assert set(raw) == {"containerID", "ifname", "namespace", "pod", "uid", "node", "ipv4", "ipv6", "mode", "createdAt"}
    assert reg.read_endpoint(str(tmp_path), "abc_eth0") == ep
    assert reg.list_endpoints(str(tmp_path)) == [ep]
    assert reg.remove_endpoint(str(tmp_path), ep.key) is True
    assert reg.remove_endpoint(str(tmp_path), ep.key) is False
    assert reg.list_endpoints(str(tmp_path)) == []


def test_list_skips_temp_and_malformed_files(tmp_path: Path) -> None:
    reg.write_endpoint(str(tmp_path), endpoint())
    (tmp_path / "endpoints" / ".x.json.1.tmp").write_text("{")
    (tmp_path / "endpoints" / "bad.json").write_text("{")
    (tmp_path / "endpoints" / "wrong.json").write_text('{"ifname": 3}')
    assert [e.key for e in reg.list_endpoints(str(tmp_path))] == ["abc_eth0"]
    errors = [raw for _, raw in reg.iter_files(str(tmp_path), reg.ENDPOINTS) if isinstance(raw, reg.RegistryError)]
    assert len(errors) == 1 and "bad.json" in str(errors[0])


def test_ack_matches_only_the_same_ips(tmp_path: Path) -> None:
    ep = endpoint()
    assert reg.read_ack(str(tmp_path), ep.key) is None
    reg.write_ack(str(tmp_path), reg.Ack(ep.key, ["10.0.0.5"], ["fd00::5"], selected=True, policies=["ns/p"]))
    ack = reg.read_ack(str(tmp_path), ep.key)
    assert ack is not None and ack.selected and ack.policies == ("ns/p",) and ack.matches(ep)
    assert not reg.Ack(ep.key, ["10.0.0.6"], ["fd00::5"]).matches(ep)
    assert not reg.Ack("other_eth0", ["10.0.0.5"], ["fd00::5"]).matches(ep)
    assert reg.list_acks(str(tmp_path)) == [ack]
    assert reg.remove_ack(str(tmp_path), ep.key)


def test_heartbeat_liveness(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert not reg.agent_alive(root)
    reg.write_heartbeat(root, "node-1", pid=42, now=1000.0)
    assert reg.read_agent(root) == reg.AgentInfo(42, "node-1", 1000.0)
    assert reg.agent_alive(root, 3.0, now=1002.0)
    assert not reg.agent_alive(root, 3.0, now=1003.5)
    (tmp_path / "agent.json").write_text("garbage")
    assert not reg.agent_alive(root)


def test_hijack_round_trip_and_default(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert reg.read_hijack(root) == reg.Hijack()
    reg.write_hijack(root, reg.Hijack(["10.6.0.0/16", "1.1.1.1/32", "1.1.1.1/32"], ["2001:db8::/64"]))
    assert reg.read_hijack(root) == reg.Hijack(["1.1.1.1/32", "10.6.0.0/16"], ["2001:db8::/64"])


def test_records_are_immutable_and_validated() -> None:
    ep = endpoint()
    with pytest.raises(AttributeError):
        ep.pod = "x"  # type: ignore[misc]
    with pytest.raises(reg.RegistryError, match="mode 'bridge'"):
        endpoint(mode="bridge")
    with pytest.raises(reg.RegistryError, match=r"endpoint.ipv4: 'x' is not a list"):
        reg.Endpoint.from_dict({"containerID": "a", "ifname": "eth0", "ipv4": "x"})


@pytest.mark.parametrize("text", ['{"a": [1, 2.5, null, true, false, "\\u00e9"]}', "[]", ' {"b": {}} ', '"s"', "-1e3"])
def test_jsonlite_matches_json(text: str) -> None:
    assert jsonlite.loads(text) == json.loads(text)
    assert jsonlite.dumps(json.loads(text)) == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize("text", ["", "{", "[] x", "nul", '{"a":1,}'])
def test_jsonlite_rejects_bad_input(text: str) -> None:
    with pytest.raises(jsonlite.DecodeError):
        jsonlite.loads(text)


def test_underlay_facts_round_trip_and_are_optional(tmp_path: Path) -> None:
    ep = endpoint(netns="/var/run/netns/cni-1", netns_inode=4026532000, pod_veth="veth0", node_ips=["10.0.0.1", "fd00::1"],
                  static_hijack=["10.96.0.0/12"])
    reg.write_endpoint(str(tmp_path), ep)
    raw = json.loads((tmp_path / "endpoints" / "abc_eth0.json").read_text())
    assert {k: raw[k] for k in ("netns", "netnsInode", "podVeth", "nodeIPs", "staticHijack")} == {
        "netns": "/var/run/netns/cni-1", "netnsInode": 4026532000, "podVeth": "veth0", "nodeIPs": ["10.0.0.1", "fd00::1"],
        "staticHijack": ["10.96.0.0/12"]}
    assert reg.read_endpoint(str(tmp_path), "abc_eth0") == ep and ep.routable
    old = endpoint()  # a record of an older plugin: no facts, not routable, and none written
    assert not old.routable and "netns" not in old.to_dict()
    with pytest.raises(reg.RegistryError, match="netnsInode"):
        reg.Endpoint.from_dict({**raw, "netnsInode": "4026532000"})


def test_hijack_destinations_split_a_default_in_halves() -> None:
    import socket

    assert reg.hijack_destinations(socket.AF_INET, "10.0.0.0", 8) == (("10.0.0.0", 8),)
    assert reg.hijack_destinations(socket.AF_INET, "0.0.0.0", 0) == (("0.0.0.0", 1), ("128.0.0.0", 1))
    assert reg.hijack_destinations(socket.AF_INET6, "::", 0) == (("::", 1), ("8000::", 1))


def test_load_hijack_tells_unreadable_from_absent(tmp_path: Path) -> None:
    assert reg.load_hijack(str(tmp_path)) == reg.Hijack()
    (tmp_path / reg.HIJACK_FILE).write_text("{not json")
    assert reg.load_hijack(str(tmp_path)) is None and reg.read_hijack(str(tmp_path)) == reg.Hijack()
