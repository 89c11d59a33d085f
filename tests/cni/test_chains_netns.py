"""Real CNI chains (Debian bridge/macvlan + host-local, then egress-cni) run through the libcni-style runner.

All plugins run inside a test-made "host" netns; pods are test-made netns.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from egress_cni import registry
from tests.cni.lab import NODE_V4, NODE_V6, Lab
from tests.cni.runner import PluginError, ip_json

pytestmark = pytest.mark.netns

ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;K8S_POD_UID=uid-1;K8S_POD_INFRA_CONTAINER_ID=c1"


def routes(netns: str, *args: str) -> list[dict[str, Any]]:
    return ip_json("route", "show", *args, netns=netns)  # type: ignore[no-any-return]


def host_links(lab: Lab) -> list[str]:
    return [link["ifname"] for link in ip_json("link", "show", netns=lab.host)]


def test_overlay_chain_registers_endpoint_and_leaves_routes_alone(lab: Lab) -> None:
    pod, path = lab.pod()
    conflist = lab.overlay_conflist()
    result = lab.runner.add(conflist, "c1", path, args=ARGS)
    pod_ip = result["ips"][0]["address"].split("/")[0]
    assert [i["name"] for i in result["interfaces"]][-1] == "eth0", "prevResult must pass through unchanged"
    ep = registry.read_endpoint(str(lab.registry_dir), "c1_eth0")
    assert ep == registry.Endpoint("c1", "eth0", "ns1", "web-0", "uid-1", "node-a", [pod_ip], [], "overlay", ep.created_at if ep else "")
    assert [r["dst"] for r in routes(pod)] == ["default", "10.22.0.0/24"]
    assert not [name for name in ip_json("link", "show", netns=pod) if name["ifname"] == "veth0"]
    lab.runner.check(conflist, "c1", path, args=ARGS)
    lab.runner.delete(conflist, "c1", path, args=ARGS)
    assert registry.list_endpoints(str(lab.registry_dir)) == []
    assert list(lab.state_dir.glob("*.json")) == []


def host_rules(lab: Lab, family: str) -> list[dict[str, object]]:
    return [r for r in ip_json(family, "rule", "show", netns=lab.host) if r["priority"] == 1000]


@pytest.mark.parametrize("table", ["main", "500"])
def test_underlay_chain_routes_hijacked_cidrs_through_the_host(lab: Lab, table: str) -> None:
    lab.underlay_parent()
    pod, path = lab.pod()
    conflist = lab.underlay_conflist(**({} if table == "main" else {"hostRuleTable": int(table)}))
    registry.write_hijack(str(lab.registry_dir), registry.Hijack(["192.0.2.0/24"], []))
    result = lab.runner.add(conflist, "c1", path, args=ARGS)
    v4 = next(i["address"].split("/")[0] for i in result["ips"] if "." in i["address"])
    v6 = next(i["address"].split("/")[0] for i in result["ips"] if ":" in i["address"])
    state = json.loads((lab.state_dir / "c1_eth0.json").read_text())
    host_veth = state["plan"]["hostVeth"]
    assert host_veth.startswith("egw") and len(host_veth) == 15
    # pod side: /32 to the node first, then the hijack routes via the node
    pod_routes = {(r["dst"], r.get("gateway"), r["dev"]) for r in routes(pod)}
    assert {(NODE_V4, None, "veth0"), ("10.96.0.0/12", NODE_V4, "veth0"), ("192.0.2.0/24", NODE_V4, "veth0")} <= pod_routes
    pod_routes6 = {(r["dst"], r.get("gateway"), r["dev"]) for r in ip_json("-6", "route", "show", netns=pod)}
    assert {(NODE_V6, None, "veth0"), ("fd00:96::/108", NODE_V6, "veth0")} <= pod_routes6
    pod_neigh = {(n["dst"], n["lladdr"]) for n in ip_json("neigh", "show", "dev", "veth0", netns=pod)}
    host_mac = ip_json("link", "show", host_veth, netns=lab.host)[0]["address"]
    assert {(NODE_V4, host_mac), (NODE_V6, host_mac)} <= pod_neigh
    # host side: per-pod route (in main: no rule; in another table: behind the shared rule) + static neighbour
    shared = [] if table == "main" else [{"priority": 1000, "src": "all", "table": table}]
    assert host_rules(lab, "-4") == shared and host_rules(lab, "-6") == shared
    assert [(r["dst"], r["dev"]) for r in routes(lab.host, "table", table) if r.get("dev") == host_veth] == [(v4, host_veth)]
    assert [(r["dst"], r["dev"]) for r in ip_json("-6", "route", "show", "table", table, netns=lab.host)
            if r.get("dev") == host_veth and not r["dst"].startswith("fe80:")] == [(v6, host_veth)]
    pod_mac = ip_json("link", "show", "veth0", netns=pod)[0]["address"]
    assert (v4, pod_mac) in {(n["dst"], n.get("lladdr")) for n in ip_json("neigh", "show", "dev", host_veth, netns=lab.host)}
    ep = registry.read_endpoint(str(lab.registry_dir), "c1_eth0")
    assert ep is not None and ep.mode == "underlay" and ep.ipv4 == (v4,) and ep.ipv6 == (v6,)
    # the host reaches the macvlan pod through the veth (macvlan alone cannot talk to its parent)
    ping = subprocess.run(["ip", "netns", "exec", pod, "busybox", "ping", "-c1", "-W2", NODE_V4], capture_output=True, check=False)
    assert ping.returncode == 0, ping.stdout
    # a hijacked destination (from hijack.json) is reached through the host, and the reply comes back via the veth
    subprocess.run(["ip", "-n", lab.host, "addr", "add", "192.0.2.1/32", "dev", "lo"], check=True)
    ping = subprocess.run(["ip", "netns", "exec", pod, "busybox", "ping", "-c1", "-W2", "192.0.2.1"], capture_output=True, check=False)
    assert ping.returncode == 0, ping.stdout
    tx = ip_json("-s", "link", "show", host_veth, netns=lab.host)[0]["stats64"]["tx"]["packets"]
    assert tx >= 2, "replies left the host through the pod's veth"
    lab.runner.check(conflist, "c1", path, args=ARGS)
    lab.runner.delete(conflist, "c1", path, args=ARGS)
    assert host_veth not in host_links(lab)
    assert [r for r in routes(lab.host, "table", table) if r.get("dev") == host_veth] == []
    assert list(lab.state_dir.glob("*.json")) == [] and registry.list_endpoints(str(lab.registry_dir)) == []


def test_auto_mode_picks_underlay_for_macvlan_and_overlay_for_veth(lab: Lab) -> None:
    lab.underlay_parent()
    under = lab.underlay_conflist(mode="auto", name="auto-u")
    over = lab.overlay_conflist(mode="auto", name="auto-o")
    _, p1 = lab.pod()
    _, p2 = lab.pod()
    lab.runner.add(under, "u1", p1)
    lab.runner.add(over, "o1", p2)
    assert json.loads((lab.state_dir / "u1_eth0.json").read_text())["mode"] == "underlay"
    assert json.loads((lab.state_dir / "o1_eth0.json").read_text())["mode"] == "overlay"
    lab.runner.delete(under, "u1", p1)
    lab.runner.delete(over, "o1", p2)


def test_del_edge_cases_all_succeed(lab: Lab) -> None:
    lab.underlay_parent()
    pod, path = lab.pod()
    conflist = lab.underlay_conflist()
    ours = {**conflist["plugins"][1], "cniVersion": "1.0.0", "name": conflist["name"]}
    result = lab.runner.add(conflist, "c1", path)
    host_veth = json.loads((lab.state_dir / "c1_eth0.json").read_text())["plan"]["hostVeth"]

    def del_ours(netns: str, prev: dict[str, Any] | None = None) -> None:
        conf = {**ours, **({"prevResult": prev} if prev else {})}
        r = lab.runner.exec_plugin("egress-cni", "DEL", conf, container_id="c1", ifname="eth0", extra_env={"CNI_NETNS": netns})
        assert (r.code, r.stdout) == (0, ""), r.stdout + r.stderr

    del_ours("")  # containerd passes "" once the netns is closed; no prevResult either
    assert host_veth not in host_links(lab) and not (lab.state_dir / "c1_eth0.json").exists()
    del_ours("")  # second DEL
    del_ours(path, result)  # DEL with prevResult and the netns still there
    lab.drop_pod(pod)
    del_ours(path)  # netns path gone
    assert not Path(path).exists(), "DEL must never create a netns at a missing path"
    del_ours("/proc/1/cwd/nonexistent")
    assert registry.list_endpoints(str(lab.registry_dir)) == []


def test_del_after_pod_netns_removed_cleans_host_side(lab: Lab) -> None:
    lab.underlay_parent()
    pod, path = lab.pod()
    conflist = lab.underlay_conflist()
    lab.runner.add(conflist, "c1", path)
    lab.drop_pod(pod)  # the veth pair dies with the netns; DEL must still clear state and registry
    lab.runner.delete(conflist, "c1", "")
    assert list(lab.state_dir.glob("*.json")) == [] and registry.list_endpoints(str(lab.registry_dir)) == []


def test_check_detects_a_removed_route(lab: Lab) -> None:
    lab.underlay_parent()
    pod, path = lab.pod()
    conflist = lab.underlay_conflist()
    lab.runner.add(conflist, "c1", path)
    lab.runner.check(conflist, "c1", path)
    subprocess.run(["ip", "-n", pod, "route", "del", "10.96.0.0/12"], check=True)
    with pytest.raises(PluginError) as err:
        lab.runner.check(conflist, "c1", path)
    assert err.value.plugin == "egress-cni" and err.value.error["code"] == 101
    assert "pod route 10.96.0.0/12 via 10.33.0.1 table 254 is missing" in err.value.error["msg"]
    lab.runner.delete(conflist, "c1", path)


def test_check_detects_missing_registration(lab: Lab) -> None:
    _, path = lab.pod()
    conflist = lab.overlay_conflist()
    lab.runner.add(conflist, "c1", path)
    registry.remove_endpoint(str(lab.registry_dir), "c1_eth0")
    with pytest.raises(PluginError, match="not registered"):
        lab.runner.check(conflist, "c1", path)
    lab.runner.delete(conflist, "c1", path)


@pytest.mark.parametrize(
    ("conf", "env", "code"),
    [
        ({"cniVersion": "1.0.0", "name": "n"}, {"CNI_CONTAINERID": ""}, 4),
        ({"cniVersion": "1.0.0", "name": "n"}, {"CNI_IFNAME": "a/b"}, 4),
        (b'{"cniVersion": "1.0.0", "name": ', {}, 6),
        ({"cniVersion": "1.0.0", "name": "n", "mode": "bridge"}, {}, 7),
        ({"cniVersion": "1.0.0", "name": "n", "hijackCIDR": ["10.0.0.1/8"]}, {}, 7),
        ({"cniVersion": "1.0.0", "name": "n"}, {}, 7),  # no prevResult: not chained
        ({"cniVersion": "9.9.9", "name": "n"}, {}, 1),
    ],
)
def test_malformed_input_gives_the_spec_code(lab: Lab, conf: dict[str, Any] | bytes, env: dict[str, str], code: int) -> None:
    full_env = {"CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/var/run/netns/" + lab.host, **env}
    r = lab.runner.exec_plugin("egress-cni", "ADD", conf, extra_env=full_env)
    assert r.code == 1
    assert json.loads(r.stdout)["code"] == code, r.stdout


def test_underlay_refuses_the_plugins_own_netns(lab: Lab) -> None:
    conf = {**lab.underlay_conflist()["plugins"][1], "cniVersion": "1.0.0", "name": "n",
            "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.33.0.5/24"}]}}
    r = lab.runner.exec_plugin("egress-cni", "ADD", conf, container_id="c1", ifname="eth0", netns=f"/var/run/netns/{lab.host}")
    assert json.loads(r.stdout)["code"] == 8


def test_fifty_parallel_add_del_leave_nothing(lab: Lab) -> None:
    lab.underlay_parent()
    conflist = lab.underlay_conflist(dual=False)
    pods = [lab.pod() for _ in range(50)]

    def cycle(i: int) -> None:
        _, path = pods[i]
        lab.runner.add(conflist, f"par{i}", path)
        lab.runner.delete(conflist, f"par{i}", path)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(cycle, range(50)))
    assert [name for name in host_links(lab) if name.startswith("egw")] == []
    assert [r for r in routes(lab.host) if r.get("dev", "").startswith("egw")] == []
    assert host_rules(lab, "-4") == [], "the default (main table) needs no rule, never per-pod rules"
    assert list(lab.state_dir.glob("*.json")) == []
    assert registry.list_endpoints(str(lab.registry_dir)) == []
    for pod, _ in pods:
        assert [link["ifname"] for link in ip_json("link", "show", netns=pod)] == ["lo"]


def test_reply_via_veth_marks_connections_entering_through_the_veth(lab: Lab) -> None:
    lab.underlay_parent()
    pod, path = lab.pod()
    conflist = lab.underlay_conflist(replyViaVeth=True)
    lab.runner.add(conflist, "c1", path)
    assert any(r.get("fwmark") == "0x1" and r["table"] == "100" and r["priority"] == 1000 for r in ip_json("rule", "show", netns=pod))
    assert [(r["dst"], r.get("gateway"), r["dev"]) for r in routes(pod, "table", "100")] == [("default", NODE_V4, "veth0")]
    assert [(r["dst"], r.get("gateway")) for r in ip_json("-6", "route", "show", "table", "100", netns=pod)] == [("default", NODE_V6)]
    mangle = subprocess.run(["ip", "netns", "exec", pod, "iptables", "-w", "-t", "mangle", "-S"], capture_output=True, text=True, check=True).stdout
    assert "-A PREROUTING -i veth0 -m conntrack --ctstate NEW -j MARK --set-xmark 0x1/0xffffffff" in mangle
    assert "-A OUTPUT -j CONNMARK --restore-mark" in mangle
    lab.runner.check(conflist, "c1", path)
    subprocess.run(["ip", "-n", pod, "rule", "del", "fwmark", "0x1", "table", "100"], check=True)
    with pytest.raises(PluginError, match="fwmark 0x1 lookup 100"):
        lab.runner.check(conflist, "c1", path)
    lab.runner.delete(conflist, "c1", path)


def test_gc_removes_only_attachments_missing_from_the_valid_list(lab: Lab) -> None:
    lab.underlay_parent()
    conflist = lab.underlay_conflist(dual=False)
    paths = {cid: lab.pod()[1] for cid in ("keep", "gone")}
    for cid, path in paths.items():
        lab.runner.add(conflist, cid, path)
    veths = {cid: json.loads((lab.state_dir / f"{cid}_eth0.json").read_text())["plan"]["hostVeth"] for cid in paths}
    gc = {**conflist["plugins"][1], "cniVersion": "1.1.0", "name": conflist["name"],
          "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}],
          "cni.dev/attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    r = lab.runner.exec_plugin("egress-cni", "GC", gc)
    assert (r.code, r.stdout) == (0, ""), r.stdout + r.stderr
    links = host_links(lab)
    assert veths["keep"] in links and veths["gone"] not in links
    assert [p.name for p in lab.state_dir.glob("*.json")] == ["keep_eth0.json"]
    assert [e.container_id for e in registry.list_endpoints(str(lab.registry_dir))] == ["keep"]
    lab.runner.delete(conflist, "keep", paths["keep"])


def test_stale_neighbour_of_a_reused_pod_ip_is_dropped(lab: Lab) -> None:
    lab.underlay_parent()
    _, path = lab.pod()
    subprocess.run(["ip", "-n", lab.host, "neigh", "add", "10.33.0.10", "lladdr", "02:00:00:00:00:99", "dev", "uplink0", "nud", "permanent"],
                   check=True)
    conflist = lab.underlay_conflist(dual=False)
    result = lab.runner.add(conflist, "c1", path)
    assert result["ips"][0]["address"] == "10.33.0.10/24", "host-local hands out rangeStart first"
    assert ip_json("neigh", "show", "dev", "uplink0", "to", "10.33.0.10", netns=lab.host) == []
    lab.runner.delete(conflist, "c1", path)
