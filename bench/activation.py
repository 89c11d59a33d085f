"""End-to-end egress figures on the sandbox (real apiserver, kubelets, controller, webhook, agents).

    sudo .venv/bin/python bench/activation.py [--cni macvlan,flannel,bridge] [--runs 20] [--failovers 5]
                                             [--leak-pods 50] [--kept]

Every CNI mode of the sandbox in one run (`--cni`, all three by default; one sandbox each, brought up
and torn down in turn), then a table of the figures per mode.

- activation: `kubectl apply` of an EgressPolicy -> first packet with the EIP at the external server
  (a selected pod on node1 sends a DNS query every 20 ms, none waiting for the previous; the server
  timestamps every packet on the same host clock). p50/p99 over --runs; bar p99 <= 1 s.
- failover: the EIP's gateway node loses its link and its agent at t0 -> first packet with the same
  EIP via the other gateway node. Median over --failovers; bar median <= 2 s.
- leak: --leak-pods new pods of a selected Deployment query from their first instruction; packets
  that reach the server with any source but the EIP. Bar: 0. Also counted: EIPMoved events on the
  bench policies while those pods start (no node fails then, so every move is a flap).
Peer, measured in the same run: `kubectl apply` of a ConfigMap -> the object readable (the API round
trip every API-driven activation pays at least); ratios are printed against it.
--kept uses a sandbox kept with `make sandbox SANDBOX_ARGS=--keep` (its own mode only); otherwise one is
brought up per mode (prefix egwb<id><mode initial>, its own state dir) and torn down after it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.sandbox import nodeops  # noqa: E402
from devtools.sandbox.cluster import Sandbox  # noqa: E402
from devtools.sandbox.plan import CNI_MODES, STATE_DIR, build_plan  # noqa: E402
from e2e.helpers import Cluster, agent_ready, node_addresses, wait_for  # noqa: E402

NS = "bench"
EIP = "10.6.168.240"
# Each query in the background with its own 1 s limit: a query lost during a switch-over must not
# stall the loop (busybox nslookup would retry only after ~2.5 s and hide when the path came back).
SENDER = ("while true; do (timeout 1 nslookup $TAG.bench. 10.6.168.63 >/dev/null 2>&1 &); usleep 20000; done")


def first_packet(cluster: Cluster, tag: str, source: str, after: float, timeout: float = 60.0) -> float:
    """Seconds from `after` to the first query tagged `tag` from `source` (server clock = host clock)."""
    def seen() -> float | None:
        times = [r["t"] for r in cluster.records() if r.get("tag") == f"{tag}.bench" and r["src"] == source and r["t"] >= after]
        return min(times) - after if times else None

    return wait_for(seen, f"first packet of {tag} from {source}", timeout, interval=0.1)


def sender_pod(cluster: Cluster, name: str, tag: str, node: str, labels: dict[str, str]) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels},
                   "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0, "containers": [{
                       "name": "send", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                       "command": ["sh", "-c", SENDER], "env": [{"name": "TAG", "value": tag}]}]}})
    cluster.wait_running(NS, name)


def api_round_trip(cluster: Cluster) -> float:
    name = f"peer-{uuid.uuid4().hex[:6]}"
    started = time.time()
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS}})
    wait_for(lambda: cluster.get("configmap", name, "-n", NS), "configmap readable", 30, interval=0.01)
    return time.time() - started


def activation(cluster: Cluster, runs: int) -> tuple[list[float], list[float]]:
    cluster.gateway("bench", [EIP], ["node2", "node3"])
    sender_pod(cluster, "act", "act", "node1", {"app": "act"})
    unsteered = cluster.unsteered_source(NS, "act")  # node1's address, or the pod's own on an underlay
    samples, peers = [], []
    for run in range(runs):
        first_packet(cluster, "act", unsteered, time.time() - 1)  # not selected yet
        started = time.time()
        cluster.policy(NS, f"act-{run}", "bench", {"app": "act"})
        samples.append(first_packet(cluster, "act", EIP, started))
        cluster.delete("egresspolicy", f"act-{run}", "-n", NS)
        wait_for(lambda: not cluster.get("egresspolicy", f"act-{run}", "-n", NS) or None, "policy gone", 60)  # noqa: B023
        peers.append(api_round_trip(cluster))
    return samples, peers


def failover(cluster: Cluster, sb: Sandbox, runs: int) -> list[float]:
    cluster.policy(NS, "fo", "bench", {"app": "act"})
    samples = []
    for _ in range(runs):
        cluster.wait_policy(NS, "fo")
        # The node that holds the EIP now (the policy status may still name the previous holder for a
        # moment after a move: powering that one off would measure nothing).
        node = wait_for(lambda: next((n for n in cluster.node_names if EIP in node_addresses(sb, n)), None),
                        f"a node holding {EIP}", 60)
        first_packet(cluster, "act", EIP, time.time())
        started = time.time()
        nodeops.power_off(sb, node)
        try:
            samples.append(first_packet(cluster, "act", EIP, started + 0.05))
            print(f"failover run {len(samples)}: {node} off -> EIP again after {samples[-1]:.3f} s", file=sys.stderr, flush=True)
        finally:
            nodeops.power_on(sb, node)
        # Settled before the next run: the restarted agent answers /readyz (the gateway's status may say
        # Ready from a Lease that has not expired yet) and both gateway nodes are Ready.
        wait_for(lambda: all(agent_ready(sb, n) for n in cluster.node_names) or None, "every agent ready again", 90)
        wait_for(lambda: all(n.get("status") == "Ready" for n in
                             (cluster.get("egressgateway", "bench") or {}).get("status", {}).get("nodeList", [])) or None,
                 "both gateway nodes Ready again", 90)
    cluster.delete("egresspolicy", "fo", "-n", NS)
    return samples


def eip_moves(cluster: Cluster) -> int:
    """EIPMoved events on the policies of the bench namespace (each carries a count)."""
    events = json.loads(cluster.kubectl("get", "events", "-n", NS, "--field-selector", "reason=EIPMoved", "-o", "json"))
    return sum(int(e.get("count") or 1) for e in events.get("items", []))


def leak(cluster: Cluster, pods: int) -> tuple[int, int, int]:
    cluster.policy(NS, "leak", "bench", {"app": "leak"})
    cluster.wait_policy(NS, "leak")
    moves_before = eip_moves(cluster)
    container = {"name": "send", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                 "command": ["sh", "-c", SENDER.replace("usleep 20000", "usleep 250000")],
                 "env": [{"name": "TAG", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}
    cluster.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "leak", "namespace": NS},
                   "spec": {"replicas": pods, "selector": {"matchLabels": {"app": "leak"}},
                            "template": {"metadata": {"labels": {"app": "leak"}},
                                         "spec": {"containers": [container], "terminationGracePeriodSeconds": 0}}}})

    def ours() -> list[dict[str, str]]:
        return [r for r in cluster.records() if r.get("tag", "").startswith("leak-") and r["tag"].endswith(".bench")]

    wait_for(lambda: len({r["tag"] for r in ours()}) >= pods or None, f"{pods} pods heard from", 600, interval=2)
    moves = eip_moves(cluster) - moves_before
    cluster.delete("deployment", "leak", "-n", NS)
    heard = ours()
    return sum(1 for r in heard if r["src"] != EIP), len(heard), moves


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_mode(sb: Sandbox, args: argparse.Namespace) -> dict[str, object]:
    """Every figure on one sandbox."""
    cluster = Cluster(sb)
    try:
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        act, peer = activation(cluster, args.runs)
        fo = failover(cluster, sb, args.failovers) if args.failovers else []
        leaked, total, moves = leak(cluster, args.leak_pods) if args.leak_pods else (0, 0, 0)
    finally:
        cluster.delete("namespace", NS)
        cluster.move_gateway("bench", [])
        cluster.delete("egressgateway", "bench")
    peer_p50 = statistics.median(peer)
    return {
        "cni": sb.plan.cni,
        "activation_p50_s": round(statistics.median(act), 3), "activation_p99_s": round(pct(act, 0.99), 3),
        "activation_runs": len(act), "peer_api_round_trip_p50_s": round(peer_p50, 3),
        "activation_p50_vs_peer": round(statistics.median(act) / peer_p50, 1),
        "failover_median_s": round(statistics.median(fo), 3) if fo else None, "failover_runs": len(fo),
        "failover_samples_s": [round(x, 3) for x in fo],
        "leaked_packets": leaked, "leak_packets_total": total, "leak_pods": args.leak_pods,
        "eip_moves_while_pods_start": moves,
        "bars": {"activation_p99<=1s": pct(act, 0.99) <= 1.0, "failover_median<=2s": bool(fo) and statistics.median(fo) <= 2.0,
                 "leaked==0": leaked == 0},
    }


def table(results: list[dict[str, object]]) -> str:
    rows = [f"{'cni':8} {'act p50':>8} {'act p99':>8} {'peer p50':>8} {'ratio':>6} {'failover':>9} {'leaked':>12}"]
    for r in results:
        fo = r["failover_median_s"]
        rows.append(f"{r['cni']!s:8} {r['activation_p50_s']!s:>8} {r['activation_p99_s']!s:>8} "
                    f"{r['peer_api_round_trip_p50_s']!s:>8} {r['activation_p50_vs_peer']!s:>5}x "
                    f"{'-' if fo is None else fo!s:>9} {r['leaked_packets']!s:>5} of {r['leak_packets_total']!s:<5}")
    return "\n".join(rows)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cni", default=",".join(CNI_MODES), help="comma-separated modes (default: every mode)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--leak-pods", type=int, default=50)
    parser.add_argument("--kept", action="store_true", help="use the sandbox kept by `make sandbox SANDBOX_ARGS=--keep`")
    args = parser.parse_args()
    modes = [m for m in args.cni.split(",") if m]
    if unknown := [m for m in modes if m not in CNI_MODES]:
        parser.error(f"--cni: unknown mode(s) {', '.join(unknown)}; expected some of {', '.join(CNI_MODES)}")
    results = []
    if args.kept:
        results.append(bench_mode(Sandbox.attach(build_plan().state_dir, say=say), args))
    session = uuid.uuid4().hex[:4]
    for mode in [] if args.kept else modes:
        plan = build_plan(state_dir=Path(f"{STATE_DIR}-bench-{session}{mode[0]}"), prefix=f"egwb{session}{mode[0]}", cni=mode)
        sb = Sandbox(plan, say=say)
        sb.up()
        try:
            results.append(bench_mode(sb, args))
        finally:
            sb.down()
        say(f"[{mode}] {json.dumps(results[-1])}")
    print(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
