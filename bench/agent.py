"""Agent benchmarks (root; everything inside network namespaces this script creates and removes).

    .venv/bin/python bench/agent.py [--engine auto] [--endpoints 10000] [--policies 200] [--runs 20] [--iperf-gigabytes 3]
                                    [--iperf-rounds 5]

1. Full reconcile of N endpoints and P policies on one node (gateway for half the policies, worker
   for the rest): compute, first apply into an empty netns, and a steady-state resync (read + diff).
   Peer: a bare `ipset restore` (iptables engines) or `nft -f` into a scratch table (nftables engine)
   of the same set members (the kernel write we cannot avoid).
2. One new CNI endpoint programmed: registry file written -> ack file present (fast path), median
   over runs. Peer: a full reconcile after the same change.
3. Rule count grows with policies, not pods: iptables rules for P policies at N/10 and N endpoints.
4. Throughput through the gateway path (pod -> node -> VXLAN -> gateway SNAT -> server) vs the direct
   path (pod -> node MASQUERADE -> server), iperf3 TCP in the three-node topology. Bar: >= 90%.
   Two more peers in the same run separate the detour from our code: the same detour through node2
   routed plainly, and through a bare VXLAN device, each with a bare SNAT and no rules of ours. All
   nodes share the machine's cores, so every extra hop costs the sender's core directly.
   Then the direct and gateway paths again with --iperf-policies more policies that select neither
   pod: the tax a cluster's policies put on traffic that is not theirs.
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
    from egress_cni.dataplane import nftrender
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
        run(["nft", "-f", "-"], stdin=nftrender.script("egwbench", 4, sets=scratch))
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
    "a": "EgressGateway (agents' dataplane, gateway node2)",
}


def add_detour_peers(t: Any) -> None:
    """Two peers built by hand beside our dataplane, in the same namespaces, to separate what the
    detour itself costs on this machine from what our rules cost: pod d is routed plainly to node2
    (a policy route, no tunnel), pod c through a second VXLAN device (VNI 200, port 7790, untracked
    like ours); node2 SNATs each to an address of its own and routes the replies back the same way."""
    n1, n2 = t.node(1), t.node(2)
    c_ip, d_ip = t.pod_ip(1, "c"), t.pod_ip(1, "d")
    for n, ns in ((1, n1), (2, n2)):
        m = 3 - n
        sh("ip", "-n", ns, "link", "add", "bench.vxlan", "type", "vxlan", "id", "200", "local", f"10.100.0.{n}",
           "dev", "eth0", "dstport", "7790", "nolearning")
        sh("ip", "-n", ns, "link", "set", "bench.vxlan", "address", f"66:00:00:00:01:0{n}", "mtu", "1450", "up")
        sh("ip", "-n", ns, "addr", "add", f"172.32.0.{n}/32", "dev", "bench.vxlan")
        sh("bridge", "-n", ns, "fdb", "append", f"66:00:00:00:01:0{m}", "dev", "bench.vxlan", "dst", f"10.100.0.{m}")
        sh("ip", "-n", ns, "neigh", "add", f"172.32.0.{m}", "lladdr", f"66:00:00:00:01:0{m}", "dev", "bench.vxlan",
           "nud", "permanent")
        sh("ip", "netns", "exec", ns, "iptables-restore", "--noflush", input=(
            "*raw\n-A PREROUTING -p udp --dport 7790 -j NOTRACK\n-A OUTPUT -p udp --dport 7790 -j NOTRACK\nCOMMIT\n"))
    sh("ip", "-n", n1, "route", "add", "default", "via", "172.32.0.2", "dev", "bench.vxlan", "onlink", "table", "501")
    sh("ip", "-n", n1, "rule", "add", "from", c_ip, "lookup", "501", "pref", "90")
    sh("ip", "-n", n2, "route", "add", "default", "via", "172.32.0.1", "dev", "bench.vxlan", "onlink", "table", "502")
    sh("ip", "-n", n2, "rule", "add", "to", c_ip, "lookup", "502", "pref", "90")
    sh("ip", "-n", n1, "route", "add", "default", "via", "10.100.0.2", "dev", "eth0", "table", "503")
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
    """Until node1 and node2 carry a rule for each of the policies (their agents resync every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = [sh("ip", "netns", "exec", t.node(n), "iptables-save", "-t", "mangle").count(":default/other") for n in (1, 2)]
        if all(c >= policies for c in counts):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{policies} policies not programmed in {timeout} s")


def iperf_bench(gigabytes: float, rounds: int, others: int = 200) -> dict[str, Any]:
    from tests.agent.topology import EIP4, EXT4, Topology

    t = Topology(pods={1: ["a", "b", "c", "d"]})
    try:
        t.build()
        for n in (1, 2, 3):
            t.start_agent(n)
        assert t.wait_probe(1, "a", EIP4) == EIP4
        add_detour_peers(t)
        expect = {"a": EIP4, "b": "10.100.0.1", "c": "10.100.0.201", "d": "10.100.0.202"}
        for pod, src in expect.items():
            got = t.wait_probe(1, pod, src)
            assert got == src, f"pod {pod} leaves as {got!r}, expected {src}"
        server = subprocess.Popen(["ip", "netns", "exec", t.ns("ext"), "iperf3", "-s", "-p", "5201"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t.procs.append(server)
        time.sleep(0.5)

        def run(pod: str) -> tuple[float, float]:
            busy = _busy_cpu_seconds()
            res = json.loads(sh("ip", "netns", "exec", t.pod(1, pod), "iperf3", "-c", EXT4, "-p", "5201", "-n",
                                f"{int(gigabytes * 1e9)}", "-J"))["end"]["sum_received"]
            return float(res["bits_per_second"]), (_busy_cpu_seconds() - busy) / (res["bytes"] / 1e9)

        out: dict[str, list[tuple[float, float]]] = {p: [] for p in PATHS}
        for _ in range(rounds):  # interleaved so machine load hits every path alike
            for pod in PATHS:
                out[pod].append(run(pod))
        # The same two pods with `others` more policies that select neither of them (rules, sets and
        # peers on every node): what a busy cluster's policies cost traffic that is not theirs.
        # each has a (made-up) pod on node1 and node3, so node1 and node2 carry rules for all of them
        extra = [o for i in range(others)
                 for o in t.policy(f"other{i:03d}", [(1, "y"), (3, "x")], "node2", eip4=f"10.100.1.{1 + i % 250}")]
        crowded: dict[str, list[tuple[float, float]]] = {"b": [], "a": []}
        if others:
            t.set_policies("node2", extra)
            wait_rules(t, others)
            for _ in range(rounds):
                for pod in crowded:
                    crowded[pod].append(run(pod))
        return {"runs": out, "crowded": crowded}
    finally:
        t.close()


def print_iperf(runs: dict[str, list[tuple[float, float]]], gigabytes: float,
                crowded: dict[str, list[tuple[float, float]]], others: int) -> None:
    gbps = {p: statistics.median(r[0] for r in rs) / 1e9 for p, rs in runs.items()}
    cost = {p: statistics.median(r[1] for r in rs) for p, rs in runs.items()}
    rounds = len(runs["a"])
    print(f"iperf3 TCP, {rounds} interleaved rounds of {gigabytes:g} GB per path (medians; CPU = whole machine busy "
          "seconds per GB, steadier than Gbit/s on a shared VM)")
    for pod, label in PATHS.items():
        print(f"  {label:<50} {gbps[pod]:6.2f} Gbit/s {gbps[pod] / gbps['b'] * 100:4.0f}% of direct   "
              f"{cost[pod]:.3f} CPU-s/GB  runs {[round(r[0] / 1e9, 1) for r in runs[pod]]}")
    print(f"  gateway path / direct: {gbps['a'] / gbps['b'] * 100:.0f}% (bar >= 90%); CPU per GB direct/gateway "
          f"{cost['b'] / cost['a'] * 100:.0f}%")
    print(f"  what the detour costs without any of our code: plain {gbps['d'] / gbps['b'] * 100:.0f}%, "
          f"bare VXLAN {gbps['c'] / gbps['b'] * 100:.0f}% of direct; ours vs bare VXLAN {gbps['a'] / gbps['c'] * 100:.0f}% "
          f"(throughput), {cost['c'] / cost['a'] * 100:.0f}% (CPU per GB)")
    if crowded["a"]:
        c_gbps = {p: statistics.median(r[0] for r in rs) / 1e9 for p, rs in crowded.items()}
        print(f"  with {others} more policies selecting neither pod, ordered before the gateway pod's own (its worst case): direct {c_gbps['b']:.2f} Gbit/s "
              f"({c_gbps['b'] / gbps['b'] * 100:.0f}% of itself without), gateway path {c_gbps['a']:.2f} Gbit/s "
              f"({c_gbps['a'] / gbps['a'] * 100:.0f}%)  runs direct {[round(r[0] / 1e9, 1) for r in crowded['b']]} "
              f"gateway {[round(r[0] / 1e9, 1) for r in crowded['a']]}")


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
    if args.mode in ("all", "iperf"):
        r = iperf_bench(args.iperf_gigabytes, args.iperf_rounds, args.iperf_policies)
        print_iperf(r["runs"], args.iperf_gigabytes, r["crowded"], args.iperf_policies)


if __name__ == "__main__":
    main()
