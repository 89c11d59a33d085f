"""Controller latency at scale on a real kube-apiserver.

1. A fresh control plane (tests/harness), 3 fake Nodes with live agent Leases, 4 EgressGateways,
   and the controller as a subprocess (`python -m egress_cni.controller.main`).
2. Baseline: the time from creating one EgressPolicy to its `status` (eip, node, Ready=True) being
   written, in the otherwise empty cluster.
3. Load: 1,000 EgressPolicies (rr, 10 per namespace in 100 namespaces) and 10,000 Pods (objects with
   `status.podIPs` written through the status subresource, 10 per policy). Converged = every policy
   Ready and every policy's EgressEndpointSlice holding its 10 pods.
4. The same create-to-status latency again, now among 1,000 policies and 10,000 pods.
Also (before the load): the controller's fallback failover, from an agent's last Lease renewal to its
EIPs being on other nodes. The simulated agents report no peers in their Leases
(`egressgateway.spidernet.io/peers` empty), so nobody vouches for the stopped node and the controller
moves its EIPs once its Lease ran out (1 s Leases here; real gateway agents hold 20 s Leases and the
fast failover is the peers' own, measured by e2e/, not here). Then once with the other agents listing
the stopped node as a live peer: the controller must move nothing (docs/ha.md, point 10).

Latency is seen through a watch (the event that carries the status), not by polling. The in-run
peer is the baseline (2.): the printed ratio is the cost of scale. The API server's own round trip
for one status patch is printed as the floor.

Run: .venv/bin/python bench/controller.py [--samples 25] [--policies 1000] [--pods-per-policy 10]
Bar: p99 <= 1 s at 1,000 policies / 10,000 pods.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.devkube.controlplane import ControlPlane  # noqa: E402
from devtools.devkube.processes import free_port  # noqa: E402
from egress_cni import k8s  # noqa: E402
from tests.controller.cluster import Agents, ensure_namespace, gateway, make_node, make_pod, policy  # noqa: E402
from tests.support.tiers import apiserver_missing  # noqa: E402

NODES = ("bench-n1", "bench-n2", "bench-n3")
GATEWAYS = 4


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return bool(status.get("node")) and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


class StatusWatch:
    """Watches policies in one namespace and records when each first shows a Ready status."""

    def __init__(self, client: k8s.Client, namespace: str) -> None:
        self.client, self.namespace = client, namespace
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        _, self.version = client.list(k8s.EGRESS_POLICIES, namespace)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                for _, obj in self.client.watch(k8s.EGRESS_POLICIES, self.namespace, self.version, 600):
                    self.version = obj["metadata"].get("resourceVersion", self.version)
                    if ready(obj):
                        with self.cond:
                            self.seen.setdefault(obj["metadata"]["name"], time.monotonic())
                            self.cond.notify_all()
            except k8s.APIError:
                time.sleep(0.1)

    def wait(self, name: str, timeout: float = 30.0) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: name in self.seen, timeout):
                raise TimeoutError(f"policy {self.namespace}/{name} had no Ready status after {timeout}s")
            return self.seen[name]


def sample_latency(client: k8s.Client, watch: StatusWatch, tag: str, samples: int) -> list[float]:
    out = []
    for i in range(samples):
        name = f"{tag}-{i}"
        started = time.monotonic()
        client.create(k8s.EGRESS_POLICIES, policy(name, watch.namespace, f"gw-{i % GATEWAYS}", egress_ip={"allocatorPolicy": "rr"}))
        out.append(watch.wait(name) - started)
        time.sleep(0.05)  # one at a time, like a user, not a burst
    return out


def failover_latency(client: k8s.Client, agents: Agents, samples: int) -> list[float]:
    """Seconds from an agent's last Lease renewal to its node's EIPs being shown on other nodes
    (1 s Leases, renewed every 200 ms, like the agent). Detection is bounded below by the Lease
    duration; the rest is the controller."""
    out = []
    for _ in range(samples):
        nodes = {n["name"]: len(n.get("eips") or []) for n in
                 (client.get(k8s.EGRESS_GATEWAYS, "gw-fo").get("status") or {}).get("nodeList") or []}
        victim = max(sorted(nodes), key=lambda n: nodes[n])
        stopped = time.monotonic()
        agents.stop(victim)
        while True:
            status = client.get(k8s.EGRESS_GATEWAYS, "gw-fo").get("status") or {}
            left = [n for n in status.get("nodeList") or [] if n["name"] == victim and n.get("eips")]
            if not left:
                break
            if time.monotonic() - stopped > 30:
                raise TimeoutError(f"EIPs of {victim} did not move")
            time.sleep(0.01)
        out.append(time.monotonic() - stopped)
        agents.start(victim)
        time.sleep(1.5)  # let the node be Ready again before the next round
    return out


def vouched_moves(client: k8s.Client, agents: Agents, seconds: float) -> int:
    """EIP entries that left a stopped agent's node within `seconds` while every other agent's Lease
    lists that node as a live peer (the controller's rule: no move; expected 0)."""
    before = {n["name"]: len(n.get("eips") or []) for n in
              (client.get(k8s.EGRESS_GATEWAYS, "gw-fo").get("status") or {}).get("nodeList") or []}
    victim = max(sorted(before), key=lambda n: before[n])
    for node in NODES:
        if node != victim:
            agents.annotations[node] = {"egressgateway.spidernet.io/peers": victim}
    time.sleep(1.0)  # a renewal of every voucher carries it
    agents.stop(victim)
    moved, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = client.get(k8s.EGRESS_GATEWAYS, "gw-fo").get("status") or {}
        now = sum(len(n.get("eips") or []) for n in status.get("nodeList") or [] if n["name"] == victim)
        moved = max(moved, before[victim] - now)
        time.sleep(0.05)
    agents.annotations.clear()
    agents.start(victim)
    time.sleep(1.5)
    return moved


def status_patch_floor(client: k8s.Client, namespace: str, samples: int) -> list[float]:
    client.create(k8s.EGRESS_POLICIES, policy("floor", namespace, "gw-0", egress_ip={"useNodeIP": True}))
    out = []
    for i in range(samples):
        started = time.monotonic()
        client.patch_status(k8s.EGRESS_POLICIES, "floor", {"status": {"node": f"floor-{i}"}}, namespace=namespace)
        out.append(time.monotonic() - started)
    client.delete(k8s.EGRESS_POLICIES, "floor", namespace)
    return out


def load(client: k8s.Client, policies: int, pods_per_policy: int) -> tuple[int, int]:
    per_ns = 10
    namespaces = [f"load-{i:03}" for i in range((policies + per_ns - 1) // per_ns)]
    for ns in namespaces:
        ensure_namespace(client, ns)

    def one_policy(i: int) -> None:
        ns = namespaces[i // per_ns]
        client.create(k8s.EGRESS_POLICIES, policy(f"p{i}", ns, f"gw-{i % GATEWAYS}", match={"app": f"p{i}"},
                                                  egress_ip={"allocatorPolicy": "rr"}))
        for j in range(pods_per_policy):
            n = i * pods_per_policy + j
            make_pod(client, ns, f"p{i}-pod{j}", {"app": f"p{i}"}, f"10.{100 + n // 65536}.{n // 256 % 256}.{n % 256}",
                     NODES[n % len(NODES)])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one_policy, range(policies)))
    return policies, policies * pods_per_policy


def converged(client: k8s.Client, policies: int, pods: int) -> bool:
    items, _ = client.list(k8s.EGRESS_POLICIES)
    if sum(1 for p in items if p["metadata"]["namespace"].startswith("load-") and ready(p)) < policies:
        return False
    slices, _ = client.list(k8s.EGRESS_ENDPOINT_SLICES)
    return sum(len(s.get("endpoints") or []) for s in slices if s["metadata"]["namespace"].startswith("load-")) >= pods


def reconcile_metrics(port: int) -> tuple[float, float]:
    """(passes, total seconds) from the controller's reconcile histogram."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("egress_controller_reconcile_seconds_")}
    return values.get("egress_controller_reconcile_seconds_count", 0.0), values.get("egress_controller_reconcile_seconds_sum", 0.0)


def report(name: str, values: list[float]) -> None:
    slowest = ", ".join(f"{v * 1000:.0f}" for v in sorted(values)[-3:])
    print(f"{name:<44} n={len(values):<3} p50={statistics.median(values) * 1000:7.1f} ms  "
          f"p99={percentile(values, 0.99) * 1000:7.1f} ms  (slowest {slowest} ms)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=25)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--pods-per-policy", type=int, default=10)
    args = parser.parse_args()
    if reason := apiserver_missing():
        print(f"cannot measure: {reason}")
        return 1
    warnings.filterwarnings("ignore")
    root = Path(tempfile.mkdtemp(prefix="bench-controller-"))
    plane = ControlPlane(root)
    controller: subprocess.Popen[bytes] | None = None
    agents: Agents | None = None
    try:
        plane.start()
        plane.apply_crds(REPO / "manifests" / "crds")
        plane.ensure_namespace("egressgateway-system")
        client = k8s.Client.from_kubeconfig(str(plane.kubeconfig))
        agents = Agents(client, duration=1)
        for node in NODES:
            make_node(client, node, {"egress": "true"})
            agents.start(node)
        client.create(k8s.EGRESS_GATEWAYS, gateway("gw-fo", ["10.59.0.1-10.59.0.50"], {"egress": "true"}))
        for g in range(GATEWAYS):
            client.create(k8s.EGRESS_GATEWAYS, gateway(f"gw-{g}", [f"10.{60 + g}.0.1-10.{60 + g}.15.254"], {"egress": "true"}))
        log = (root / "controller.log").open("ab")
        health_port = free_port()
        controller = subprocess.Popen(
            [sys.executable, "-m", "egress_cni.controller.main", "--kubeconfig", str(plane.kubeconfig),
             "--health-address", f"127.0.0.1:{health_port}", "--leader-lease-seconds", "5"],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        ensure_namespace(client, "bench")
        watch = StatusWatch(client, "bench")
        floor = status_patch_floor(client, "bench", args.samples)
        sample_latency(client, watch, "warmup", 2)  # the controller's first passes (finalizers, tunnels) are not the peer
        for i in range(6):
            client.create(k8s.EGRESS_POLICIES, policy(f"fo-{i}", "bench", "gw-fo", egress_ip={"allocatorPolicy": "rr"}))
            watch.wait(f"fo-{i}")
        failover = failover_latency(client, agents, max(5, args.samples // 5))
        vouched = vouched_moves(client, agents, 5.0)
        baseline = sample_latency(client, watch, "empty", args.samples)

        started = time.monotonic()
        n_policies, n_pods = load(client, args.policies, args.pods_per_policy)
        created = time.monotonic() - started
        deadline = time.monotonic() + 600
        while not converged(client, n_policies, n_pods):
            if time.monotonic() > deadline or controller.poll() is not None:
                raise RuntimeError(f"no convergence; controller log: {root / 'controller.log'}")
            time.sleep(0.5)
        converge = time.monotonic() - started
        loaded = sample_latency(client, watch, "loaded", args.samples)

        print(f"objects: {n_policies} EgressPolicies, {n_pods} Pods, {GATEWAYS} gateways, {len(NODES)} nodes")
        print(f"created in {created:.1f} s; every policy Ready and every slice filled {converge:.1f} s after the first create")
        report("apiserver status patch round trip (floor)", floor)
        report("create -> status, empty cluster (peer)", baseline)
        report(f"create -> status, {n_policies} policies/{n_pods} pods", loaded)
        report("failover (controller fallback; simulated agents report no peers): agent stops -> EIPs elsewhere", failover)
        print(f"agent stopped, its peers' Leases report it alive: {vouched} EIP entries moved in 5 s (expected 0)")
        passes, seconds = reconcile_metrics(health_port)
        print(f"controller passes: {passes:.0f}, mean {seconds / max(passes, 1) * 1000:.1f} ms; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"ratio loaded/empty: p50 {statistics.median(loaded) / statistics.median(baseline):.2f}x  "
              f"p99 {percentile(loaded, 0.99) / percentile(baseline, 0.99):.2f}x")
        bar = percentile(loaded, 0.99) <= 1.0
        print(f"bar p99 <= 1 s: {'met' if bar else 'NOT met'}; controller log: {root / 'controller.log'}")
        return 0 if bar else 2
    finally:
        if agents is not None:
            agents.stop_all()
        if controller is not None and controller.poll() is None:
            controller.terminate()
            controller.wait(timeout=15)
        plane.stop()
        # keep the controller log for reading; the plane's own directories go
        for sub in root.iterdir():
            if sub.name != "controller.log" and sub.is_dir():
                shutil.rmtree(sub, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
