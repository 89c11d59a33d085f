"""Agent benchmarks (root; everything inside network namespaces this script creates and removes).

    .venv/bin/python bench/agent.py [--engine auto] [--endpoints 10000] [--policies 200] [--runs 20] [--iperf-gigabytes 3]
                                    [--iperf-rounds 5] [--iperf-tune gro,udpcsum,...] [--iperf-tune-mtu 1400]

1. Full reconcile of N endpoints and P policies on one node (gateway for half the policies, worker
   for the rest): compute, first apply into an empty netns, and a steady-state resync (read + diff).
   Peer: a bare `ipset restore` (iptables engines) or `nft -f` into a scratch table (nftables engine)
   of the same set members (the kernel write we cannot avoid).
2. One new CNI endpoint programmed: registry file written -> ack file present (fast path), median
   over runs. Peer: a full reconcile after the same change.
3. Rule count grows with policies, not pods: iptables rules for P policies at N/10 and N endpoints.
4. Throughput through our two gateway paths vs the direct path (pod -> node MASQUERADE -> server),
   iperf3 TCP in the three-node topology, every path interleaved in one run. The agents run in
   CrossSubnet mode and node3 is moved to a subnet of its own (10.100.9.0/24, link routes between
   the subnets on the same bridge), so node1 reaches gateway node2 without encapsulation (pod e;
   bar >= 85% of direct) and gateway node3 through the tunnel (pod a, `our VXLAN path`; node3 answers
   through the tunnel too, node1 being off-link for it). Two more peers in the same run separate the
   detour from our code: the same detour through node2 routed plainly, and through a bare VXLAN
   device, each with a bare SNAT and no rules of ours. All nodes share the machine's cores, so every
   extra hop costs the sender's core directly.
   Then the direct and gateway paths again with --iperf-policies more policies that select neither
   pod: the tax a cluster's policies put on traffic that is not theirs.
5. `iperf --iperf-tune KNOB[,KNOB...]` (instead of 4): one tunnel tuning knob at a time on the gateway
   path, A/B in one run: a fresh topology per knob, rounds alternate the baseline (what the product
   does) and the variant (set by hand with ip/ethtool/nft in every node netns; order AB, BA, AB, ...),
   the same pod and server; medians of Gbit/s and CPU-seconds per GB for both arms, their ratio and
   how many rounds the variant won. The device (or rule) is read back after every run: a run whose
   state is not its arm's (the agent repaired it back, say) is reported. Knobs: see TUNE_KNOBS.
Every figure is printed; the script exits 0 either way (it reports, it does not assert).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PYTHON = str(ROOT / ".venv" / "bin" / "python")
API = "egressgateway.spidernet.io/v1beta1"


def synthetic_objects(endpoints: int, policies: int) -> list[dict[str, Any]]:
    """P policies with N endpoints spread over node1..node3; node1 is the gateway of the even ones."""
    objs: list[dict[str, Any]] = []
    for n in (1, 2, 3):
        objs.append({"apiVersion": API, "kind": "EgressTunnel", "metadata": {"name": f"node{n}"},
                     "status": {"tunnel": {"ipv4": f"172.31.0.{n}", "mac": f"66:00:00:00:00:0{n}",
                                           "parent": {"name": "eth0", "ipv4": f"10.100.0.{n}"}},
                                "mark": f"0x2600000{n}"}})
    objs.append({"apiVersion": API, "kind": "EgressClusterInfo", "metadata": {"name": "default"},
                 "status": {"podCIDR": {"pool": {"ipv4": ["10.0.0.0/8"]}}, "nodeIP": {"node1": {"ipv4": ["10.100.0.1"]}}}})
    per = endpoints // policies
    for p in range(policies):
        name = f"pol{p:03d}"
        objs.append({"apiVersion": API, "kind": "EgressPolicy", "metadata": {"name": name, "namespace": "bench"},
                     "spec": {"egressGatewayName": "gw", "priority": p % 7,
                              "appliedTo": {"podSelector": {"matchLabels": {"policy": name}}},
                              **({"destSubnet": [f"198.{p % 250}.0.0/16"]} if p % 3 == 0 else {})},
                     "status": {"eip": {"ipv4": f"10.100.{1 + p // 250}.{p % 250 + 1}"}, "node": "node1" if p % 2 == 0 else "node2"}})
        eps = []
        for i in range(per):
            k = p * per + i
            eps.append({"ns": "bench", "pod": f"pod{k}", "node": f"node{1 + k % 3}",
                        "ipv4": [f"10.{1 + k // 65536}.{(k // 256) % 256}.{k % 256}"]})
        for s in range(0, len(eps), 100):  # the controller's 100 endpoints per slice
            objs.append({"apiVersion": API, "kind": "EgressEndpointSlice",
                         "metadata": {"name": f"{name}-{s // 100}", "namespace": "bench",
                                      "labels": {"spidernet.io/policy-name": name}}, "endpoints": eps[s:s + 100]})
    objs.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "newpod", "namespace": "bench",
                                                                  "labels": {"policy": "pol001"}}, "spec": {"nodeName": "node1"}})
    return objs


def sh(*cmd: str, input: str | None = None) -> str:  # noqa: A002
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, input=input, timeout=600).stdout


# --- inside the node namespace -------------------------------------------------------------------


def inner(args: argparse.Namespace) -> None:
    from egress_cni.agent.loop import Agent
    from egress_cni.agent.sources import MemorySource, state_from_objects
    from egress_cni.agent.state import StateView
    from egress_cni.dataplane import nftscript
    from egress_cni.dataplane.apply import KernelDataplane
    from egress_cni.dataplane.compute import desired_dataplane
    from egress_cni.dataplane.inputs import DataplaneConfig, NodeFacts
    from egress_cni.dataplane.plan import diff
    from egress_cni.dataplane.render import ipset_script
    from egress_cni.dataplane.xtables import ipset_restore, run

    out: dict[str, Any] = {}
    config = DataplaneConfig()
    facts = NodeFacts("node1", "eth0", "10.100.0.1", "", 1500)
    objects = synthetic_objects(args.endpoints, args.policies)
    t = time.perf_counter()
    state = state_from_objects(objects, "node1")
    out["parse_s"] = time.perf_counter() - t
    # After one endpoint slice changes: the typed stores parse that slice only; peer: parsing the whole
    # cluster again, as the agent did before it read stores.
    source = MemorySource(objects)
    view = StateView(source.stores, "node1")
    view.state()
    changed = [dict(o) for o in objects]
    victim = next(i for i, o in enumerate(changed) if o["kind"] == "EgressEndpointSlice")
    changed[victim] = {**changed[victim], "metadata": {**changed[victim]["metadata"], "resourceVersion": "2"}}
    source.replace(changed)
    t = time.perf_counter()
    view.state()
    out["reparse_one_s"] = time.perf_counter() - t
    t = time.perf_counter()
    state_from_objects(changed, "node1")
    out["reparse_all_s"] = time.perf_counter() - t
    t = time.perf_counter()
    desired = desired_dataplane(state, facts, config)
    out["compute_s"] = time.perf_counter() - t
    kernel = KernelDataplane(config, "eth0", [4], args.engine, probe=lambda _dev, _ip: False)  # no segment to probe here
    out["engine"] = kernel.engine
    t = time.perf_counter()
    kernel.hint_tables({r.table for r in desired.dataplane.routes})
    actual = kernel.read_actual(desired.dataplane.sysctls)
    plan = diff(desired.dataplane, actual)
    kernel.apply(plan)
    out["first_apply_s"] = time.perf_counter() - t
    out["full_reconcile_s"] = out["compute_s"] + out["first_apply_s"]
    resync = []
    for _ in range(5):
        t = time.perf_counter()
        d = desired_dataplane(state, facts, config)
        p = diff(d.dataplane, kernel.read_actual(d.dataplane.sysctls))
        kernel.apply(p)
        resync.append(time.perf_counter() - t)
        assert p.empty, p.summary()
    out["resync_median_s"] = statistics.median(resync)
    out["members"] = sum(len(s.members) for s in desired.dataplane.ipsets)
    out["iptables_rules"] = sum(len(c.rules) for c in desired.dataplane.chains)
    # peer: writing the same members with a bare ipset restore (nft -f) into scratch sets
    scratch = [type(s)("bench-" + s.name[-20:], s.family, s.members) for s in desired.dataplane.ipsets]
    t = time.perf_counter()
    if kernel.nft is not None:
        run(["nft", "-f", "-"], stdin=nftscript.script("egwbench", 4, sets=scratch))
    else:
        ipset_restore(ipset_script(scratch, ()))
    out["peer_ipset_restore_s"] = time.perf_counter() - t
    if kernel.nft is not None:
        run(["nft", "delete", "table", "ip", "egwbench"])
    else:
        ipset_restore(ipset_script((), (), (), [s.name for s in scratch]))
    out["rule_count_small"] = sum(len(c.rules) for c in desired_dataplane(
        state_from_objects(synthetic_objects(args.endpoints // 10, args.policies), "node1"), facts, config).dataplane.chains)

    # new endpoint: registry file -> ack, with the real loop running
    # the registry lives on tmpfs in production (/run/egressgateway); /run is plain disk on this machine
    reg = tempfile.mkdtemp(prefix="egwb-reg-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    agent = Agent(node="node1", source=MemorySource(objects), kernel=kernel, facts=lambda: facts, config=config,
                  registry_dir=reg, resync_seconds=30)
    agent.reconcile()
    agent.start()
    lat, full = [], []
    new_set = _set_of(config, state, "pol001")
    try:
        time.sleep(0.5)
        # the CNI side runs in its own process, as the plugin does: write the endpoint, poll for the ack
        writer = subprocess.Popen([sys.executable, __file__, "writer", reg], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdin is not None and writer.stdout is not None
        for i in range(args.runs):
            ip = f"10.250.{i // 250}.{i % 250 + 1}"
            before = agent.status.reconciles
            writer.stdin.write(f"bench{i} {ip}\n")
            writer.stdin.flush()
            lat.append(float(writer.stdout.readline()))
            listed = run(["nft", "list", "set", "ip", kernel.nft.table, new_set]) if kernel.nft else run(["ipset", "list", new_set])
            assert ip in listed, "acked endpoint is not in its policy's set"
            while agent.status.reconciles == before:  # the full reconcile the event triggers (the peer)
                time.sleep(0.005)
            time.sleep(0.1)
            full.append(agent.status.reconcile_seconds)
        writer.stdin.close()
        writer.wait(timeout=10)
    finally:
        agent.stop()
    out["new_endpoint_median_s"] = statistics.median(lat)
    out["new_endpoint_max_s"] = max(lat)
    out["peer_full_reconcile_median_s"] = statistics.median(full)
    kernel.uninstall()
    shutil.rmtree(reg, ignore_errors=True)
    print(json.dumps(out))


def writer(reg: str) -> None:
    """CNI stand-in: for each "KEY IP" line write the endpoint, wait for its ack, print the seconds."""
    from egress_cni import registry

    for line in sys.stdin:
        key, ip = line.split()
        t = time.perf_counter()
        registry.write_endpoint(reg, registry.Endpoint(key, "eth0", "bench", "newpod", node="node1", ipv4=[ip]))
        while registry.read_ack(reg, f"{key}_eth0") is None:
            time.sleep(0.001)
        print(f"{time.perf_counter() - t:.6f}", flush=True)


def _set_of(config: Any, state: Any, name: str) -> str:
    from egress_cni.dataplane.compute import set_name

    return set_name(config, "s", 4, next(p for p in state.policies if p.metadata.name == name))


# --- outside: namespaces, iperf3 -----------------------------------------------------------------


def reconcile_bench(args: argparse.Namespace) -> dict[str, Any]:
    ns = f"egwb-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        sh("ip", "-n", ns, "addr", "add", "10.100.0.1/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "eth1", "up")
        out = sh("ip", "netns", "exec", ns, PYTHON, __file__, "inner", "--endpoints", str(args.endpoints),
                 "--policies", str(args.policies), "--runs", str(args.runs), "--engine", args.engine)
        return dict(json.loads(out.strip().splitlines()[-1]))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


PATHS = {  # pod on node1 -> the path its traffic takes to the server in ext
    "b": "direct (node1 MASQUERADE)",
    "d": "plain detour via node2 (routed, node2 SNAT)",
    "c": "bare VXLAN detour via node2 (node2 SNAT)",
    "a": "EgressGateway VXLAN (gateway node3, off-link)",
    "e": "EgressGateway no encapsulation (gateway node2)",
}
NOENCAP_EIP, NODE3_NET = "10.100.0.203", "10.100.9"  # pod e's policy; node3's own subnet in the iperf run


def split_segment(t: Any) -> None:
    """node3 alone in 10.100.9.0/24 on the same bridge, the others reaching it (and it them) by link
    routes: no connected prefix holds the other side, so node1 and node3 use the tunnel to each other
    (CrossSubnet), while node1 and node2 share 10.100.0.0/24 and go direct."""
    from tests.agent.topology import EXT4, tunnel

    n3 = t.node(3)
    sh("ip", "-n", n3, "addr", "flush", "dev", "eth0")
    sh("ip", "-n", n3, "addr", "add", f"{NODE3_NET}.3/24", "dev", "eth0")
    sh("ip", "-n", n3, "route", "add", "10.100.0.0/24", "dev", "eth0")
    sh("ip", "-n", n3, "route", "replace", "default", "via", EXT4, "dev", "eth0")
    for n in (1, 2):
        sh("ip", "-n", t.node(n), "route", "add", f"{NODE3_NET}.0/24", "dev", "eth0")
        sh("ip", "-n", t.node(n), "route", "replace", "10.244.3.0/24", "via", f"{NODE3_NET}.3")
        sh("ip", "-n", n3, "route", "replace", f"10.244.{n}.0/24", "via", f"10.100.0.{n}")
    objs = [tunnel(n, False) for n in (1, 2, 3)]
    objs[2]["status"]["tunnel"]["parent"]["ipv4"] = f"{NODE3_NET}.3"
    node_ip = {f"node{n}": {"ipv4": [f"10.100.0.{n}" if n < 3 else f"{NODE3_NET}.3"]} for n in (1, 2, 3)}
    objs.append({"apiVersion": API, "kind": "EgressClusterInfo", "metadata": {"name": "default"},
                 "status": {"nodeIP": node_ip, "podCIDR": {"pool": {"ipv4": ["10.244.0.0/16"]}}}})
    t._dump("cluster.yaml", objs)


def vxlan_tx(t: Any) -> int:
    """Packets node1's tunnel device has sent."""
    return int(sh("ip", "netns", "exec", t.node(1), "cat", "/sys/class/net/egress.vxlan/statistics/tx_packets"))


def add_detour_peers(t: Any) -> None:
    """Two peers built by hand beside our dataplane, in the same namespaces, to separate what the
    detour itself costs on this machine from what our rules cost: pod d is routed plainly to node2
    (a policy route, no tunnel), pod c through a second VXLAN device (VNI 200, port 7792: 7790 is the
    agents' peer port; untracked like ours); node2 SNATs each to an address of its own and routes the
    replies back the same way. Pod d leaves by a second veth of node1's on the bridge (`eth1`, the
    same kind of link as eth0): gateway node2 drops what node1's parent MAC sends it unencapsulated
    that none of its policies matches (docs/dataplane.md, No encapsulation)."""
    n1, n2 = t.node(1), t.node(2)
    c_ip, d_ip = t.pod_ip(1, "c"), t.pod_ip(1, "d")
    for n, ns in ((1, n1), (2, n2)):
        m = 3 - n
        sh("ip", "-n", ns, "link", "add", "bench.vxlan", "type", "vxlan", "id", "200", "local", f"10.100.0.{n}",
           "dev", "eth0", "dstport", "7792", "nolearning")
        sh("ip", "-n", ns, "link", "set", "bench.vxlan", "address", f"66:00:00:00:01:0{n}", "mtu", "1450", "up")
        sh("ip", "-n", ns, "addr", "add", f"172.32.0.{n}/32", "dev", "bench.vxlan")
        sh("bridge", "-n", ns, "fdb", "append", f"66:00:00:00:01:0{m}", "dev", "bench.vxlan", "dst", f"10.100.0.{m}")
        sh("ip", "-n", ns, "neigh", "add", f"172.32.0.{m}", "lladdr", f"66:00:00:00:01:0{m}", "dev", "bench.vxlan",
           "nud", "permanent")
        sh("ip", "netns", "exec", ns, "iptables-restore", "--noflush", input=(
            "*raw\n-A PREROUTING -p udp --dport 7792 -j NOTRACK\n-A OUTPUT -p udp --dport 7792 -j NOTRACK\nCOMMIT\n"))
    sh("ip", "-n", n1, "route", "add", "default", "via", "172.32.0.2", "dev", "bench.vxlan", "onlink", "table", "501")
    sh("ip", "-n", n1, "rule", "add", "from", c_ip, "lookup", "501", "pref", "90")
    sh("ip", "-n", n2, "route", "add", "default", "via", "172.32.0.1", "dev", "bench.vxlan", "onlink", "table", "502")
    sh("ip", "-n", n2, "rule", "add", "to", c_ip, "lookup", "502", "pref", "90")
    sh("ip", "-n", n1, "link", "add", "eth1", "type", "veth", "peer", "name", "u-n1b", "netns", t.ns("ul"))
    sh("ip", "-n", t.ns("ul"), "link", "set", "u-n1b", "master", "br0", "up")
    sh("ip", "-n", n1, "addr", "add", "10.100.0.11/32", "dev", "eth1")
    sh("ip", "-n", n1, "link", "set", "eth1", "up")
    sh("ip", "-n", n1, "route", "add", "default", "via", "10.100.0.2", "dev", "eth1", "onlink", "table", "503")
    sh("ip", "-n", n1, "rule", "add", "from", d_ip, "lookup", "503", "pref", "90")
    for addr in ("10.100.0.201", "10.100.0.202"):
        sh("ip", "-n", n2, "addr", "add", f"{addr}/32", "dev", "eth0")
    sh("ip", "netns", "exec", n1, "iptables-restore", "--noflush", input=(  # node2 NATs them, not node1
        f"*nat\n-I POSTROUTING -s {c_ip} -j RETURN\n-I POSTROUTING -s {d_ip} -j RETURN\nCOMMIT\n"))
    sh("ip", "netns", "exec", n2, "iptables-restore", "--noflush", input=(
        f"*nat\n-I POSTROUTING -s {c_ip} -o eth0 -j SNAT --to-source 10.100.0.201\n"
        f"-I POSTROUTING -s {d_ip} -o eth0 -j SNAT --to-source 10.100.0.202\nCOMMIT\n"))


def _busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (user, nice, system, irq, softirq), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def wait_rules(t: Any, policies: int, timeout: float = 60.0) -> None:
    """Until node1 and node3 carry a rule for each of the policies (none: until they carry none)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = [t.our_rules(n).count(":default/other") for n in (1, 3)]
        if all(c >= policies for c in counts) if policies else not any(counts):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{policies} policies not programmed in {timeout} s")


def start_iperf_server(t: Any) -> None:
    server = subprocess.Popen(["ip", "netns", "exec", t.ns("ext"), "iperf3", "-s", "-p", "5201"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t.procs.append(server)
    time.sleep(0.5)


def iperf_once(t: Any, pod: str, gigabytes: float) -> tuple[float, float]:
    """One iperf3 TCP run from pod `pod` on node1 to the server in ext: (bit/s, busy CPU-s per GB)."""
    from tests.agent.topology import EXT4

    busy = _busy_cpu_seconds()
    res = json.loads(sh("ip", "netns", "exec", t.pod(1, pod), "iperf3", "-c", EXT4, "-p", "5201", "-n",
                        f"{int(gigabytes * 1e9)}", "-J"))["end"]["sum_received"]
    return float(res["bits_per_second"]), (_busy_cpu_seconds() - busy) / (res["bytes"] / 1e9)


METRICS = "127.0.0.1:9465"  # each node's agent, in its own netns
COUNTED = ((1, "steer"), (3, "local"), (3, "tunnel"))  # (node, rule role) of default/web (pod a, gateway node3)


def policy_bytes(t: Any) -> dict[tuple[int, str], float]:
    """default/web's byte counters as each agent's /metrics exports them."""
    from tests.agent.topology import PYTHON

    out: dict[tuple[int, str], float] = {}
    for n in sorted({n for n, _ in COUNTED}):
        text = sh("ip", "netns", "exec", t.node(n), PYTHON, "-c",
                  f"import urllib.request; print(urllib.request.urlopen('http://{METRICS}/metrics').read().decode())")
        for line in text.splitlines():
            if line.startswith("egress_agent_policy_bytes_total{") and 'policy="default/web"' in line:
                role = line.split('role="')[1].split('"')[0]
                out[(n, role)] = float(line.rsplit(" ", 1)[1])
    return out


def settled_policy_bytes(t: Any, timeout: float = 60.0) -> dict[tuple[int, str], float]:
    """/metrics folds the kernel counters after each reconcile: the values once two reconciles in a
    row show the same (nothing is sent meanwhile)."""
    deadline = time.monotonic() + timeout
    last = policy_bytes(t)
    while time.monotonic() < deadline:
        time.sleep(t.resync_seconds + 1)
        now = policy_bytes(t)
        if now == last and all(k in now for k in COUNTED):
            return now
        last = now
    raise TimeoutError(f"/metrics did not settle in {timeout} s: {last}")


def iperf_bench(gigabytes: float, rounds: int, others: int = 200) -> dict[str, Any]:
    from tests.agent.topology import EIP4, Topology

    t = Topology(pods={1: ["a", "b", "c", "d", "e"]})
    t.vxlan_mode = "CrossSubnet"
    t.resync_seconds = 10.0  # the agent's default (the topology's 1 s is for tests): its CPU shares the cores with the traffic
    t.agent_extra = ["--metrics-address", METRICS]
    try:
        t.build()
        split_segment(t)
        noencap = t.policy("noencap", [(1, "e")], "node2", eip4=NOENCAP_EIP)
        t.set_policies("node3", noencap, web_pods=[(1, "a")])
        for n in (1, 2, 3):
            t.start_agent(n)
        assert t.wait_probe(1, "a", EIP4) == EIP4, t.agent_log(1) + t.agent_log(3)
        add_detour_peers(t)
        expect = {"a": EIP4, "b": "10.100.0.1", "c": "10.100.0.201", "d": "10.100.0.202", "e": NOENCAP_EIP}
        for pod, src in expect.items():
            got = t.wait_probe(1, pod, src)
            assert got == src, f"pod {pod} leaves as {got!r}, expected {src}"
        start_iperf_server(t)

        def run(pod: str) -> tuple[float, float]:
            return iperf_once(t, pod, gigabytes)

        routes = {n: sh("ip", "-n", t.node(1), "route", "show", "table", f"0x2600000{n}") for n in (2, 3)}
        assert "dev eth0" in routes[2] and "egress.vxlan" in routes[3], routes  # the two paths are what they claim
        out: dict[str, list[tuple[float, float]]] = {p: [] for p in PATHS}
        counted = settled_policy_bytes(t)
        tunnelled = {p: 0 for p in PATHS}  # packets node1's tunnel sent during each path's runs
        order = list(PATHS)
        for i in range(rounds):  # interleaved so machine load hits every path alike; each round starts one
            for pod in order[i % len(order):] + order[:i % len(order)]:  # path later: no path always follows the same one
                before = vxlan_tx(t)
                out[pod].append(run(pod))
                tunnelled[pod] += vxlan_tx(t) - before
        after = settled_policy_bytes(t)
        sent = rounds * int(gigabytes * 1e9)  # iperf3 -n: the gateway pod's TCP payload
        exported = {f"node{n} {role}": (after[(n, role)] - counted[(n, role)]) / sent for n, role in COUNTED}
        # The same two pods with `others` more policies that select neither of them (rules, sets and
        # peers on every node): what a busy cluster's policies cost traffic that is not theirs.
        # each has a (made-up) pod on node1 and node3, so node1 and node2 carry rules for all of them
        extra = [o for i in range(others)
                 for o in t.policy(f"other{i:03d}", [(1, "y"), (3, "x")], "node3", eip4=f"10.100.1.{1 + i % 250}")]
        # Interleaved with the same pods without them (the policies come and go every round), so a
        # slower machine later in the run does not pass for their cost.
        crowded: dict[str, list[tuple[float, float]]] = {"b": [], "a": []}
        uncrowded: dict[str, list[tuple[float, float]]] = {"b": [], "a": []}
        for _ in range(rounds if others else 0):
            for arm, objs, count in ((crowded, noencap + extra, others), (uncrowded, noencap, 0)):
                t.set_policies("node3", objs, web_pods=[(1, "a")])
                wait_rules(t, count)
                time.sleep(2)  # the gateway's EIP claims and the reconcile after them settle
                for pod in arm:
                    arm[pod].append(run(pod))
        return {"runs": out, "crowded": crowded, "uncrowded": uncrowded, "tunnelled": tunnelled, "exported": exported}
    finally:
        t.close()


def print_iperf(runs: dict[str, list[tuple[float, float]]], gigabytes: float,
                crowded: dict[str, list[tuple[float, float]]], others: int, tunnelled: dict[str, int],
                uncrowded: dict[str, list[tuple[float, float]]]) -> None:
    gbps = {p: statistics.median(r[0] for r in rs) / 1e9 for p, rs in runs.items()}
    cost = {p: statistics.median(r[1] for r in rs) for p, rs in runs.items()}
    rounds = len(runs["a"])
    print(f"iperf3 TCP, {rounds} interleaved rounds of {gigabytes:g} GB per path (medians; CPU = whole machine busy "
          "seconds per GB, steadier than Gbit/s on a shared VM)")
    for pod, label in PATHS.items():
        print(f"  {label:<50} {gbps[pod]:6.2f} Gbit/s {gbps[pod] / gbps['b'] * 100:4.0f}% of direct   "
              f"{cost[pod]:.3f} CPU-s/GB  runs {[round(r[0] / 1e9, 1) for r in runs[pod]]}  "
              f"node1 tunnel packets {tunnelled[pod]}")
    print(f"  no-encapsulation gateway path / direct: {gbps['e'] / gbps['b'] * 100:.0f}% (bar >= 85%), "
          f"{gbps['e'] / gbps['d'] * 100:.0f}% of the plain detour; CPU per GB direct/no-encap {cost['b'] / cost['e'] * 100:.0f}%")
    print(f"  VXLAN gateway path / direct: {gbps['a'] / gbps['b'] * 100:.0f}%; CPU per GB direct/gateway "
          f"{cost['b'] / cost['a'] * 100:.0f}%")
    print(f"  what the detour costs without any of our code: plain {gbps['d'] / gbps['b'] * 100:.0f}%, "
          f"bare VXLAN {gbps['c'] / gbps['b'] * 100:.0f}% of direct; ours vs bare VXLAN {gbps['a'] / gbps['c'] * 100:.0f}% "
          f"(throughput), {cost['c'] / cost['a'] * 100:.0f}% (CPU per GB)")
    if crowded["a"]:
        c_gbps = {p: statistics.median(r[0] for r in rs) / 1e9 for p, rs in crowded.items()}
        u_gbps = {p: statistics.median(r[0] for r in rs) / 1e9 for p, rs in uncrowded.items()}
        print(f"  with {others} more policies selecting neither pod, ordered before the gateway pod's own (its worst case), "
              f"rounds alternating with and without them: direct {c_gbps['b']:.2f} vs {u_gbps['b']:.2f} Gbit/s "
              f"({c_gbps['b'] / u_gbps['b'] * 100:.0f}% of itself without; bar >= 95%), VXLAN gateway path {c_gbps['a']:.2f} vs "
              f"{u_gbps['a']:.2f} ({c_gbps['a'] / u_gbps['a'] * 100:.0f}%; bar >= 90%)  runs with: direct "
              f"{[round(r[0] / 1e9, 1) for r in crowded['b']]} gateway {[round(r[0] / 1e9, 1) for r in crowded['a']]}; without: "
              f"direct {[round(r[0] / 1e9, 1) for r in uncrowded['b']]} gateway {[round(r[0] / 1e9, 1) for r in uncrowded['a']]}")


# --- tunnel tuning: one knob at a time, A/B ----------------------------------------------------

NODES = (1, 2, 3)
VXLAN = "egress.vxlan"  # DataplaneConfig's default name, the topology's agents use it


def _in(t: Any, n: int, *cmd: str) -> str:
    return sh("ip", "netns", "exec", t.node(n), *cmd)


def _ethtool_set(dev: str, features: dict[str, bool]) -> Callable[[Any, bool], None]:
    """Variant: `features` as given; baseline: each the other way (what the kernel sets by default)."""
    def apply(t: Any, variant: bool) -> None:
        args = [x for name, on in features.items() for x in (name, "on" if on == variant else "off")]
        for n in NODES:
            _in(t, n, "ethtool", "-K", dev, *args)
    return apply


def _ethtool_state(dev: str, names: tuple[str, ...]) -> Callable[[Any], str]:
    def state(t: Any) -> str:
        out = []
        for n in NODES:
            have = dict(line.strip().split(": ", 1)[:2] for line in _in(t, n, "ethtool", "-k", dev).splitlines()
                        if ": " in line)
            out.append(f"n{n} " + " ".join(f"{k}={have.get(k, '?').split()[0]}" for k in names))
        return "; ".join(out)
    return state


def _vxlan_details(t: Any, n: int) -> dict[str, Any]:
    link = json.loads(_in(t, n, "ip", "-j", "-d", "link", "show", VXLAN))[0]
    return dict(link, **link["linkinfo"]["info_data"])


def _udpcsum(t: Any, variant: bool) -> None:
    """The agent's link recreated by hand with the same parameters, the outer UDP checksum on (variant)
    or off (baseline: what ensure_link creates); the kernel refuses to change it on a live link
    ("Cannot change UDP_CSUM flag"). The agent's drift check puts back the addresses, neighbours, FDB
    entries and routes the deletion took (it does not compare the checksum flag)."""
    from tests.agent.topology import EIP4

    for n in NODES:
        d = _vxlan_details(t, n)
        batch = (f"link del {VXLAN}\nlink add {VXLAN} address {d['address']} mtu {d['mtu']} type vxlan id {d['id']} "
                 f"local {d['local']} dev {d['link']} dstport {d['port']} nolearning {'' if variant else 'no'}udpcsum\n"
                 f"link set {VXLAN} up\n")
        for _ in range(5):  # one batch: the agent's drift check may recreate the link between a del and an add
            subprocess.run(["ip", "netns", "exec", t.node(n), "ip", "-batch", "-"], input=batch, text=True,
                           capture_output=True, timeout=30, check=False)
            if _vxlan_details(t, n).get("udp_csum") == variant:
                break
        else:
            raise RuntimeError(f"node{n}: {VXLAN} not recreated with udpcsum={variant}")
    got = t.wait_probe(1, "a", EIP4, timeout=30.0)
    assert got == EIP4, f"gateway path not repaired after the link was recreated: {got!r}"
    time.sleep(1.5)  # the drift check's pace on the other nodes too (one check per second)


def _udpcsum_state(t: Any) -> str:
    return "; ".join(f"n{n} udpcsum={_vxlan_details(t, n).get('udp_csum')}" for n in NODES)


def _mss_rule(t: Any, n: int) -> tuple[str, int, str]:
    """Our MSS clamp rule in node n's nftables table: (chain, handle, rule text without counters)."""
    table = chain = ""
    for line in _in(t, n, "nft", "-a", "list", "ruleset").splitlines():
        words = line.split()
        if words[:1] == ["table"]:
            table = " ".join(words[1:3])
        elif words[:1] == ["chain"]:
            chain = words[1]
        elif line.rstrip().split(" # handle ")[0].endswith(':mss"'):
            text, handle = line.strip().split(" # handle ")
            words = text.split()
            if "packets" in words:  # counter packets N bytes M -> counter
                i = words.index("packets")
                del words[i:i + 4]
            assert table == "ip egress", f"mss rule in table {table!r}"
            return chain, int(handle), " ".join(words)
    raise RuntimeError(f"node{n}: no mss rule of ours in nftables (the mss knob needs the nftables engine)")


CLAMP = "tcp option maxseg size set rt mtu"


def _mss(t: Any, variant: bool) -> None:
    """Variant: our clamp rule replaced in place by the same match without the clamp (its comment, so
    its tag, stays); baseline: the agent's rule. Before each run the pod's route cache (its learned
    path MTU) is flushed, so that every variant flow discovers the path MTU again."""
    for n in NODES:
        chain, handle, text = _mss_rule(t, n)
        if variant and CLAMP in text:
            _in(t, n, "nft", "replace", "rule", "ip", "egress", chain, "handle", str(handle), *text.replace(CLAMP, "").split())
        elif not variant and CLAMP not in text:
            _in(t, n, "nft", "replace", "rule", "ip", "egress", chain, "handle", str(handle),
                *text.replace("counter", f"counter {CLAMP}").split())
    sh("ip", "-n", t.pod(1, "a"), "route", "flush", "cache")


def _mss_state(t: Any) -> str:
    return "; ".join(f"n{n} clamp={'on' if CLAMP in _mss_rule(t, n)[2] else 'off'}" for n in NODES)


def _mtu(value: Callable[[], int]) -> Callable[[Any, bool], None]:
    agents: dict[tuple[int, int], int] = {}  # (topology, node) -> the MTU the agent gave the link, read before the first change

    def apply(t: Any, variant: bool) -> None:
        for n in NODES:
            baseline = agents.setdefault((id(t), n), int(_vxlan_details(t, n)["mtu"]))
            _in(t, n, "ip", "link", "set", VXLAN, "mtu", str(value() if variant else baseline))
        sh("ip", "-n", t.pod(1, "a"), "route", "flush", "cache")
    return apply


def _mtu_state(t: Any) -> str:
    return "; ".join(f"n{n} mtu={_vxlan_details(t, n)['mtu']}" for n in NODES)


@dataclass(frozen=True)
class Knob:
    label: str
    apply: Callable[[Any, bool], None]  # (topology, variant?) -> that arm's setting on every node
    state: Callable[[Any], str]  # what the nodes have now (read after every run)
    owned: bool = False  # the agent owns it (its drift repair would revert it): agents run without the check


TUNE_MTU = [1400]  # --iperf-tune-mtu
TUNE_KNOBS: dict[str, Knob] = {
    "gro": Knob("GRO on the parent veth (ethtool -K eth0 gro on; the veth default is off)",
                _ethtool_set("eth0", {"gro": True}), _ethtool_state("eth0", ("generic-receive-offload",))),
    "gro-fwd": Knob("GRO + UDP GRO forwarding on the parent veth (eth0 gro on rx-udp-gro-forwarding on)",
                    _ethtool_set("eth0", {"gro": True, "rx-udp-gro-forwarding": True}),
                    _ethtool_state("eth0", ("generic-receive-offload", "rx-udp-gro-forwarding"))),
    "gro-list": Knob("GRO + fraglist GRO on the parent veth (eth0 gro on rx-gro-list on)",
                     _ethtool_set("eth0", {"gro": True, "rx-gro-list": True}),
                     _ethtool_state("eth0", ("generic-receive-offload", "rx-gro-list"))),
    "gro-vxlan": Knob(f"GRO off on {VXLAN} (the kernel's default for it is on: the variant is off)",
                      _ethtool_set(VXLAN, {"gro": False}), _ethtool_state(VXLAN, ("generic-receive-offload",))),
    "udpcsum": Knob(f"outer UDP checksum on {VXLAN} (udpcsum; the agent creates it noudpcsum)", _udpcsum, _udpcsum_state),
    "tx-csum": Knob(f"tx checksum offload off on {VXLAN} (ethtool -K tx off: what the reference's "
                    "disableChecksumOffload does)", _ethtool_set(VXLAN, {"tx": False}),
                    _ethtool_state(VXLAN, ("tx-checksumming", "tcp-segmentation-offload"))),
    "mss": Knob("MSS clamp rule off (no TCPMSS on -o egress.vxlan; path MTU discovery instead)", _mss, _mss_state,
                owned=True),
    "mtu": Knob("tunnel MTU set by hand to --iperf-tune-mtu (the agent's: parent MTU - 50)", _mtu(lambda: TUNE_MTU[0]),
                _mtu_state, owned=True),
}


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def tune_bench(name: str, gigabytes: float, rounds: int) -> dict[str, Any]:
    """Baseline and variant of one knob, alternating, on the gateway path (pod a)."""
    from tests.agent.topology import EIP4, Topology

    knob = TUNE_KNOBS[name]
    load_before = _loadavg()
    t = Topology(pods={1: ["a"]})
    t.resync_seconds = 3600.0  # no full resync in the runs: repairs come from the drift check alone
    if knob.owned:
        t.agent_extra = ["--drift-seconds", "0"]
    try:
        t.build()
        for n in NODES:
            t.start_agent(n)
        assert t.wait_probe(1, "a", EIP4) == EIP4
        time.sleep(1.0)  # every node's first reconcile done
        start_state = knob.state(t)
        start_iperf_server(t)
        arms: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        states: dict[bool, set[str]] = {False: set(), True: set()}
        for r in range(rounds):
            for variant in ((False, True) if r % 2 == 0 else (True, False)):
                knob.apply(t, variant)
                assert t.wait_probe(1, "a", EIP4) == EIP4, "gateway path broken by the knob"
                arms[variant].append(iperf_once(t, "a", gigabytes))
                states[variant].add(knob.state(t))
        knob.apply(t, False)
        return {"knob": name, "arms": arms, "states": states, "start_state": start_state,
                "load_before": load_before, "load_after": _loadavg(), "owned": knob.owned}
    finally:
        t.close()


def print_tune(r: dict[str, Any], gigabytes: float) -> None:
    knob = TUNE_KNOBS[r["knob"]]
    base, var = r["arms"][False], r["arms"][True]
    med = {arm: (statistics.median(x[0] for x in runs) / 1e9, statistics.median(x[1] for x in runs))
           for arm, runs in r["arms"].items()}
    faster = sum(v[0] > b[0] for b, v in zip(base, var, strict=True))
    cheaper = sum(v[1] < b[1] for b, v in zip(base, var, strict=True))
    paired = statistics.median(v[0] / b[0] for b, v in zip(base, var, strict=True))
    paired_cpu = statistics.median(v[1] / b[1] for b, v in zip(base, var, strict=True))
    agents = "agents: no full resync, " + ("drift check off (the agent owns this)" if r["owned"] else "drift check every 1 s")
    print(f"tune {r['knob']}: {knob.label}")
    print(f"  gateway path, {len(base)} rounds of {gigabytes:g} GB per arm, alternating AB/BA; {agents}; "
          f"load average before {r['load_before']}, after {r['load_after']}")
    for arm, label in ((False, "baseline"), (True, "variant")):
        print(f"  {label:<8} {med[arm][0]:6.2f} Gbit/s  {med[arm][1]:.3f} CPU-s/GB  runs "
              f"{[round(x[0] / 1e9, 2) for x in r['arms'][arm]]}  CPU {[round(x[1], 3) for x in r['arms'][arm]]}")
    print(f"  variant/baseline: throughput {med[True][0] / med[False][0] * 100:.1f} % (paired rounds median "
          f"{paired * 100:.1f} %, variant faster in {faster}/{len(base)}), CPU per GB {med[True][1] / med[False][1] * 100:.1f} % "
          f"(paired {paired_cpu * 100:.1f} %, variant cheaper in {cheaper}/{len(base)})")
    ok = len(r["states"][False]) == 1 and len(r["states"][True]) == 1 and r["states"][False] != r["states"][True]
    print(f"  state read after each run {'matched its arm' if ok else 'DID NOT match its arm'}: product (at start) "
          f"[{r['start_state']}], baseline {sorted(r['states'][False])}, variant {sorted(r['states'][True])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="all", choices=("all", "inner", "reconcile", "iperf", "writer"))
    parser.add_argument("registry", nargs="?", default="")
    parser.add_argument("--engine", default="auto", choices=("auto", "nftables", "nft", "legacy"))
    parser.add_argument("--endpoints", type=int, default=10000)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--iperf-gigabytes", type=float, default=3.0, help="bytes per iperf3 run, per path")
    parser.add_argument("--iperf-rounds", type=int, default=5)
    parser.add_argument("--iperf-policies", type=int, default=200, help="unrelated policies for the crowded run (0: skip)")
    parser.add_argument("--iperf-tune", default="", help=f"instead of the path comparison: A/B of each knob, comma-separated, of "
                                                         f"{', '.join(TUNE_KNOBS)} (or all)")
    parser.add_argument("--iperf-tune-mtu", type=int, default=TUNE_MTU[0], help="the mtu knob's variant tunnel MTU")
    args = parser.parse_args()
    if args.mode == "inner":
        inner(args)
        return
    if args.mode == "writer":
        writer(args.registry)
        return
    if os.geteuid() != 0:
        sys.exit("needs root (creates network namespaces)")
    if args.mode in ("all", "reconcile"):
        r = reconcile_bench(args)
        print(f"reconcile ({r['engine']} engine): {args.endpoints} endpoints, {args.policies} policies, {r['members']} set members, "
              f"{r['iptables_rules']} rules")
        print(f"  parse {r['parse_s'] * 1000:.0f} ms, compute {r['compute_s'] * 1000:.0f} ms, first apply "
              f"{r['first_apply_s'] * 1000:.0f} ms -> full reconcile {r['full_reconcile_s'] * 1000:.0f} ms (bar <= 1000 ms)")
        print(f"  steady-state resync (compute+read+diff, empty plan) median {r['resync_median_s'] * 1000:.0f} ms")
        print(f"  one endpoint slice changed -> state rebuilt from the typed stores {r['reparse_one_s'] * 1000:.1f} ms "
              f"(peer: parsing the whole cluster again {r['reparse_all_s'] * 1000:.0f} ms)")
        print(f"  peer: bare {'nft -f' if r['engine'] == 'nftables' else 'ipset restore'} of the same members {r['peer_ipset_restore_s'] * 1000:.0f} ms "
              f"(ratio full/peer {r['full_reconcile_s'] / r['peer_ipset_restore_s']:.1f}x)")
        print(f"  new endpoint -> ack: median {r['new_endpoint_median_s'] * 1000:.2f} ms, max "
              f"{r['new_endpoint_max_s'] * 1000:.2f} ms over {args.runs} runs (bar <= 10 ms); peer full reconcile "
              f"median {r['peer_full_reconcile_median_s'] * 1000:.0f} ms")
        print(f"  rule count: {r['rule_count_small']} rules with {args.endpoints // 10} endpoints, "
              f"{r['iptables_rules']} with {args.endpoints} (grows with policies, not pods)")
    if args.iperf_tune:
        TUNE_MTU[0] = args.iperf_tune_mtu
        names = list(TUNE_KNOBS) if args.iperf_tune == "all" else args.iperf_tune.split(",")
        unknown = [n for n in names if n not in TUNE_KNOBS]
        if unknown:
            sys.exit(f"unknown --iperf-tune knob(s) {unknown}: one of {', '.join(TUNE_KNOBS)}")
        for name in names:
            print_tune(tune_bench(name, args.iperf_gigabytes, args.iperf_rounds), args.iperf_gigabytes)
            sys.stdout.flush()
        return
    if args.mode in ("all", "iperf"):
        r = iperf_bench(args.iperf_gigabytes, args.iperf_rounds, args.iperf_policies)
        print_iperf(r["runs"], args.iperf_gigabytes, r["crowded"], args.iperf_policies, r["tunnelled"], r["uncrowded"])
        print("  default/web's bytes in /metrics per byte iperf3 sent (IP headers included; bar: within 1%): "
              + ", ".join(f"{k} {v:.4f}" for k, v in r["exported"].items()))


if __name__ == "__main__":
    main()
