"""API server load of the agents at 1,000 nodes, 20 of them gateway-eligible (issue 13).

    .venv/bin/python bench/apiload.py [--nodes 1000] [--eligible 20] [--seconds 60] [--full-sources 50]

A fresh etcd + kube-apiserver on loopback (devtools/devkube), the CRDs, one EgressGateway whose
status.nodeList holds the eligible nodes, a few policies. Then, each for `--seconds`:

1. no agents: the API server's CPU (utime + stime from /proc) and its writes (the baseline);
2. the simulated nodes, in this process, with the product's own code: every node's Lease is kept by
   `egress_cni.agent.fencing.Fencing` over `egress_cni.k8s.LeaseKeeper` at the cadence the agent's
   settings give a node of its kind (gateway-eligible or not, `lease_plan` below), and every node
   watches its own pods (`k8s.Informer`, field selector spec.nodeName, as the agent); `--full-sources`
   of them run the agent's whole `KubernetesSource` (an informer per kind the agent reads). The
   others skip the cluster-wide informers only to fit this 2-core machine: informers read, they
   write nothing, and writes are what the bar is about.

Writes per second are the increase of the API server's `apiserver_request_total` for the verbs
POST/PUT/PATCH/DELETE/APPLY by resource over the window, after a warm-up (every informer synced,
every Lease created). Bar: <= 1 write/s per gateway-eligible node and none for the other nodes.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.devkube.controlplane import ControlPlane  # noqa: E402
from egress_cni import k8s, settings  # noqa: E402
from tests.support.tiers import apiserver_missing  # noqa: E402

NAMESPACE = "egressgateway-system"
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"}
SAMPLE = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$')
API = "egressgateway.spidernet.io/v1beta1"


def write_counts(client: k8s.Client) -> Counter[str]:
    """Cumulative write requests by resource (and subresource), from the API server's /metrics."""
    resp = client._send("GET", "/metrics")
    text = resp.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("verb", "").upper() not in WRITE_VERBS:
            continue
        resource = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        counts[f"{labels['verb']} {resource}"] += int(float(match["value"]))
    return counts


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lease_timing() -> tuple[int, float]:
    """(duration, renew interval) of an agent Lease, from the agent's settings defaults."""
    agent = settings.Agent()
    return int(agent.lease_seconds), float(agent.lease_renew_seconds)


class SimulatedNode:
    """One node's agent as far as the API server sees it: its Lease kept by the agent's own code
    (`Fencing.keep` over the Lease the agent builds: `k8s_source.GatewayLease`, which decides from the
    gateways' status whether this node holds one at all) and its informers."""

    def __init__(self, client: k8s.Client, name: str, full_source: bool, view: Any) -> None:
        from egress_cni.agent.fencing import Fencing
        from egress_cni.agent.k8s_source import KubernetesSource

        self.name = name
        self.source: Any
        if full_source:
            self.source = KubernetesSource(client, name)
            stores = self.source.stores
        else:  # its own pods only; the gateways (for eligibility) from a view shared by the light nodes
            self.source = k8s.Informer(client, k8s.PODS, field_selector=f"spec.nodeName={name}")
            stores = view.stores
        duration, self.renew = lease_timing()
        self.lease = lease_for(client, name, duration, stores, lambda: bool(self.source.synced))
        self.fencing = Fencing(self.lease, lease_seconds=duration, on_change=lambda: None)

    def start(self, stop: threading.Event) -> None:
        if isinstance(self.source, k8s.Informer):
            self.source.start()
        else:
            self.source.start(lambda: None)
        threading.Thread(target=self.fencing.keep, args=(stop, self.renew), daemon=True, name=f"lease-{self.name}").start()

    def stop(self) -> None:
        self.source.stop()

    @property
    def synced(self) -> bool:
        return bool(self.source.synced)


def lease_for(client: k8s.Client, name: str, duration: int, stores: Any, synced: Any) -> Any:
    """The Lease the agent builds (agent/main.py source_and_lease); before GatewayLease existed every
    agent kept a plain LeaseKeeper (the bench then measures that)."""
    try:
        from egress_cni.agent.k8s_source import GatewayLease
    except ImportError:
        return k8s.LeaseKeeper(client, f"egress-agent-{name}", NAMESPACE, name, duration)
    return GatewayLease(client, name, NAMESPACE, duration, gateways=stores.gateways.items, synced=synced)


def setup_objects(client: k8s.Client, eligible: list[str]) -> None:
    try:
        client.create(k8s.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    except k8s.Conflict:
        pass
    gateway = client.create(k8s.EGRESS_GATEWAYS, {
        "apiVersion": API, "kind": "EgressGateway", "metadata": {"name": "gw"},
        "spec": {"ippools": {"ipv4": ["10.6.0.1-10.6.0.40"]}, "nodeSelector": {"selector": {"matchLabels": {"gw": "1"}}}}})
    node_list = [{"name": n, "status": "Ready", "eips": [{"ipv4": f"10.6.0.{i + 1}", "policies": []}]}
                 for i, n in enumerate(eligible)]
    gateway["status"] = {"nodeList": node_list}
    try:
        client.replace_status(k8s.EGRESS_GATEWAYS, gateway)
    except k8s.APIError as exc:
        print(f"(gateway status not written: {exc}; eligibility then comes from the node list alone)")


def window(client: k8s.Client, pid: int, seconds: float) -> tuple[Counter[str], float]:
    before, cpu0, t0 = write_counts(client), cpu_seconds(pid), time.monotonic()
    deadline = t0 + seconds
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))  # the window is the measurement
    after, cpu1, t1 = write_counts(client), cpu_seconds(pid), time.monotonic()
    elapsed = t1 - t0
    diff = Counter({k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0})
    # The bench's own /metrics GETs are reads; nothing else writes in the window but the nodes.
    return diff, (cpu1 - cpu0) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--eligible", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--full-sources", type=int, default=50, help="nodes running the agent's whole KubernetesSource")
    parser.add_argument("--warmup-timeout", type=float, default=300.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # thousands of simulated agents: only what went wrong
    if reason := apiserver_missing():
        sys.exit(f"cannot run: {reason}")
    names = [f"sim-{i:04d}" for i in range(args.nodes)]
    eligible = names[:args.eligible]
    with tempfile.TemporaryDirectory(prefix="egw-apiload-") as tmp, ControlPlane(Path(tmp)) as plane:
        plane.apply_crds(REPO / "manifests" / "crds")
        client = k8s.Client.from_kubeconfig(str(plane.kubeconfig), component="apiload")
        setup_objects(client, eligible)
        pid = plane.processes["kube-apiserver"].pid
        assert pid is not None
        duration, renew = lease_timing()
        print(f"kube-apiserver pid {pid} on {plane.server}; {args.nodes} nodes, {args.eligible} gateway-eligible "
              f"(in the gateway's status.nodeList); agent Lease {duration} s renewed every {renew} s; "
              f"{args.full_sources} nodes run the agent's whole KubernetesSource", flush=True)
        idle_writes, idle_cpu = window(client, pid, args.seconds)
        print(f"no agents, {args.seconds:.0f} s: apiserver CPU {idle_cpu * 100:.1f}% of a core; writes/s "
              f"{sum(idle_writes.values()) / args.seconds:.2f} {dict(idle_writes) or ''}", flush=True)
        from egress_cni.agent.k8s_source import KubernetesSource

        stop = threading.Event()
        view = KubernetesSource(client, "bench-view")
        view.start(lambda: None)
        nodes = [SimulatedNode(client, n, i < args.full_sources or n in eligible, view) for i, n in enumerate(names)]
        started = time.monotonic()
        for node in nodes:
            node.start(stop)
        deadline = time.monotonic() + args.warmup_timeout
        while not (view.synced and all(n.synced for n in nodes)):
            if time.monotonic() > deadline:
                sys.exit(f"warm-up: {sum(not n.synced for n in nodes)} nodes' informers not synced")
            time.sleep(0.5)
        time.sleep(max(2 * renew, 5.0))  # past the first writes (Lease creates), before counting
        print(f"warm-up: every informer synced and one renewal passed after {time.monotonic() - started:.1f} s",
              flush=True)
        writes, cpu = window(client, pid, args.seconds)
        stop.set()
        for node in nodes:
            node.stop()
        view.stop()
        leases = client.list(k8s.LEASES, NAMESPACE)[0]
    total = sum(writes.values()) / args.seconds
    lease_writes = sum(v for k, v in writes.items() if k.endswith(" leases")) / args.seconds
    held = {str(obj["metadata"]["name"]).removeprefix("egress-agent-") for obj in leases
            if (obj.get("spec") or {}).get("holderIdentity")}
    attempts = {n.name: getattr(n.lease, "writes", None) for n in nodes}
    workers_writing = sorted(n for n, w in attempts.items() if n not in eligible and w)
    print(f"{args.nodes} nodes, {args.seconds:.0f} s steady state: apiserver CPU {cpu * 100:.1f}% of a core "
          f"(no agents: {idle_cpu * 100:.1f}%)")
    print("  writes/s by kind (verb resource): "
          + (", ".join(f"{k} {v / args.seconds:.2f}" for k, v in sorted(writes.items())) or "none"))
    print(f"  total {total:.2f} writes/s = {total / max(args.eligible, 1):.3f} per gateway-eligible node "
          f"(bar <= 1); Leases {lease_writes:.2f}/s, other kinds {total - lease_writes:.2f}/s; with no agents "
          f"{sum(idle_writes.values()) / args.seconds:.2f}/s (the API server's own Lease)")
    print(f"  Leases held at the end: {len(held)} ({len(held - set(eligible))} of nodes not gateway-eligible; bar 0); "
          f"nodes not eligible that attempted a Lease write: {len(workers_writing)}")
    judged = sum(bool(getattr(n.lease, "eligible", True)) for n in nodes)
    print(f"  nodes the agent's code judged gateway-eligible: {judged} (expected {args.eligible})")
    ok = total <= args.eligible and not (held - set(eligible)) and not workers_writing and judged == args.eligible
    print("bar met" if ok else "bar NOT met")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
