"""Initial sync of the webhook's cluster state cache against a real kube-apiserver (issue 14).

    .venv/bin/python bench/webhook_sync.py [--sizes 500,5000] [--rounds 5]

For each size a fresh etcd + kube-apiserver on loopback (devtools/devkube) with the CRDs, filled in
bulk with the cluster state `bench/webhook.py --policies N` reviews against (N policies in N/50
namespaces, 11 gateways; the validating webhook is not registered, so creation is fast). Then, in
alternating rounds:

- ours: the webhook's production cache (`webhook.app.informer_view`: an `InformerView` over the
  event-fed typed stores, one `k8s.Informer` per kind), in a fresh process each round as a webhook
  worker starts (imports done first, not timed), timed from `start()` until every informer has
  synced (every object parsed into a frozen model and stored), plus the first read of the policy
  index the conflict rules use (built lazily on the first review);
- peer: the same objects LISTed with the official `kubernetes` client (CoreV1Api and
  CustomObjectsApi, pages of 500 from the watch cache as our informers ask, JSON decoded, nothing
  parsed or indexed), one kind after the other.

Printed per size: median times, ours/peer (what parsing and indexing cost on top of transport and
JSON), per-policy cost; and the growth from the smaller size to the larger against the size ratio.
Bar: the sync time grows about linearly with the number of policies.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.webhook import cluster_state  # noqa: E402
from devtools.devkube.controlplane import ControlPlane  # noqa: E402
from egress_cni import k8s  # noqa: E402
from tests.support.tiers import apiserver_missing  # noqa: E402

RESOURCES = {"Namespace": k8s.NAMESPACES, "EgressGateway": k8s.EGRESS_GATEWAYS, "EgressPolicy": k8s.EGRESS_POLICIES,
             "EgressClusterPolicy": k8s.EGRESS_CLUSTER_POLICIES}
WATCHED = (k8s.NAMESPACES, k8s.EGRESS_GATEWAYS, k8s.EGRESS_POLICIES, k8s.EGRESS_CLUSTER_POLICIES, k8s.EGRESS_CLUSTER_INFOS)


def fill(client: k8s.Client, objects: list[dict[str, Any]]) -> float:
    """Create the objects (namespaces and gateways first), 16 requests in flight; returns seconds."""
    started = time.monotonic()
    first = [o for o in objects if o["kind"] in ("Namespace", "EgressGateway")]
    rest = [o for o in objects if o["kind"] not in ("Namespace", "EgressGateway")]
    with ThreadPoolExecutor(16) as pool:
        for batch in (first, rest):
            list(pool.map(lambda o: client.create(RESOURCES[o["kind"]], o), batch))
    return time.monotonic() - started


def ours(kubeconfig: str, expected: int) -> tuple[float, float]:
    """`sync_once` in a fresh process, as a webhook worker starts: the caches of earlier rounds (held
    by their watch threads until the watch times out) would otherwise grow this process's heap."""
    out = subprocess.run([sys.executable, __file__, "--sync-once", kubeconfig, str(expected)],
                         capture_output=True, text=True, check=True)
    synced, indexed = json.loads(out.stdout)
    return float(synced), float(indexed)


def sync_once(kubeconfig: str, expected: int) -> tuple[float, float]:
    """(seconds from start to synced, seconds more for the first policy index) of a new webhook cache."""
    from webhook.app import informer_view

    view = informer_view(kubeconfig)
    started = time.perf_counter()
    view.start()
    try:
        if not view.wait_synced(300):
            raise SystemExit("the webhook's informers did not sync within 300 s")
        synced = time.perf_counter()
        found = len(view.policies())
        indexed = time.perf_counter()
    finally:
        view.stop()  # the watch threads are daemons and end at their watch timeout
    if found != expected:
        raise SystemExit(f"the cache holds {found} policies, expected {expected}")
    return synced - started, indexed - synced


def peer(api: Any, expected: int) -> float:
    """Seconds to LIST every watched kind with the kubernetes client (pages of 500, JSON decoded)."""
    from kubernetes import client as kube

    core, custom = kube.CoreV1Api(api), kube.CustomObjectsApi(api)
    started = time.perf_counter()
    policies = 0
    for rt in WATCHED:
        token = ""
        while True:
            common = {"limit": 500, "_continue": token or None, "resource_version": None if token else "0"}
            if rt is k8s.NAMESPACES:
                raw = core.list_namespace(_preload_content=False, **common)
                page = json.loads(raw.data)
            else:
                page = custom.list_cluster_custom_object(rt.group, rt.version, rt.plural, **common)
            if rt in (k8s.EGRESS_POLICIES, k8s.EGRESS_CLUSTER_POLICIES):
                policies += len(page["items"])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                break
    elapsed = time.perf_counter() - started
    if policies != expected:
        raise SystemExit(f"the peer listed {policies} policies, expected {expected}")
    return elapsed


def measure(size: int, rounds: int) -> dict[str, Any]:
    from kubernetes import config as kube_config

    objects = cluster_state(size)
    with tempfile.TemporaryDirectory(prefix="egw-webhook-sync-") as tmp, ControlPlane(Path(tmp)) as plane:
        plane.apply_crds(REPO / "manifests" / "crds")
        kubeconfig = str(plane.kubeconfig)
        fill_seconds = fill(k8s.Client.from_kubeconfig(kubeconfig, component="bench-fill"), objects)
        api = kube_config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        ours(kubeconfig, size)  # warm up: imports, the API server's watch cache, TLS sessions
        peer(api, size)
        runs: dict[str, list[float]] = {"ours": [], "index": [], "peer": []}
        for round_ in range(rounds):
            for kind in (("ours", "peer") if round_ % 2 == 0 else ("peer", "ours")):
                if kind == "ours":
                    synced, indexed = ours(kubeconfig, size)
                    runs["ours"].append(synced)
                    runs["index"].append(indexed)
                else:
                    runs["peer"].append(peer(api, size))
            print(f"  {size} policies, round {round_ + 1}: ours {runs['ours'][-1] * 1000:.0f} ms "
                  f"(+ index {runs['index'][-1] * 1000:.1f} ms), peer {runs['peer'][-1] * 1000:.0f} ms", flush=True)
    return {"objects": len(objects), "fill": fill_seconds, **{k: statistics.median(v) for k, v in runs.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,5000", help="comma-separated numbers of existing policies")
    parser.add_argument("--rounds", type=int, default=5, help="alternating ours/peer measurements per size")
    parser.add_argument("--sync-once", nargs=2, metavar=("KUBECONFIG", "POLICIES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sync_once:
        logging.basicConfig(level=logging.ERROR)
        print(json.dumps(sync_once(args.sync_once[0], int(args.sync_once[1]))))
        return 0
    logging.basicConfig(level=logging.ERROR)
    if reason := apiserver_missing():
        print(f"cannot measure: {reason}")
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for size in sizes:
        results[size] = measure(size, args.rounds)
        r = results[size]
        print(f"{size} policies ({r['objects']} objects, created in {r['fill']:.1f} s), median of {args.rounds} rounds: "
              f"ours {r['ours'] * 1000:.0f} ms to synced (+ {r['index'] * 1000:.1f} ms first index), "
              f"peer LIST {r['peer'] * 1000:.0f} ms; ours/peer {r['ours'] / r['peer']:.2f}x; "
              f"{r['ours'] / size * 1e6:.0f} us per policy (peer {r['peer'] / size * 1e6:.0f} us)", flush=True)
    small, large = min(sizes), max(sizes)
    if small == large:
        return 0
    growth = results[large]["ours"] / results[small]["ours"]
    peer_growth = results[large]["peer"] / results[small]["peer"]
    ratio = large / small
    linear = growth <= 1.5 * ratio  # "about linear": within half again of proportional
    print(f"growth {small} -> {large} policies ({ratio:.0f}x): ours {growth:.1f}x, peer {peer_growth:.1f}x "
          f"-> {'about linear' if linear else 'NOT linear'} (bar: about {ratio:.0f}x)")
    return 0 if linear else 1


if __name__ == "__main__":
    sys.exit(main())
