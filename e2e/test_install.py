"""The release as users run it: `helm upgrade` that changes a value rolls every pod while a selected
pod keeps probing (5 a second: none lost, none with another source), and `helm uninstall` leaves
every node as it was before the install (devtools/sandbox/footprint.py), after which the chart
installs again for the tests that follow. On an underlay CNI (macvlan, the seed's) a pod that still
runs keeps the host veth our plugin gave it (its way to Services and the node): the only thing
allowed to remain, and gone once that pod is deleted."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from devtools.devkube.binaries import helm_binary
from devtools.sandbox import components, footprint, netns
from devtools.sandbox.plan import CNI_MODES
from e2e.helpers import Cluster, HolderSampler, Prober, longest_double, longest_outage, longest_unheld, pod_netns_path, wait_for

pytestmark = pytest.mark.e2e
SANDBOX_CNIS = tuple(m for m in CNI_MODES if m in ("bridge", "macvlan"))  # e2e/conftest.py: a sandbox of each

EIP = "10.6.168.245"
OURS = ("egressgateway-agent", "egressgateway-controller", "egress-webhook")
POD_VETH = re.compile(r"\begw[0-9a-f]{12}\b")  # cni/underlay.py veth_identity: "egw" + 12 hex digits


def helm(cluster: Cluster, *args: str, timeout: float = 300) -> str:
    found = helm_binary()
    assert found is not None, "no helm (make helm)"
    argv = netns.in_netns_argv(cluster.sb.plan.control_plane.netns, [
        found, *args, "-n", components.NAMESPACE, f"--kubeconfig={cluster.sb.kubeconfig}"])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"helm {' '.join(args)} exited {result.returncode}: {result.stderr}"
    return result.stdout + result.stderr


def our_pods(cluster: Cluster) -> dict[str, str]:
    """uid -> name of the release's pods that are not terminating."""
    pods = cluster.get("pods", "-n", components.NAMESPACE) or {"items": []}
    return {p["metadata"]["uid"]: p["metadata"]["name"] for p in pods["items"]
            if p["metadata"]["name"].startswith(OURS) and not p["metadata"].get("deletionTimestamp")}


@pytest.fixture
def probing(cluster: Cluster) -> Iterator[str]:
    """A pod on node1 selected by a policy whose EIP lives on node2 or node3; yields its netns path."""
    cluster.sb.wait_installed()  # from a healthy release: the module before may have powered nodes off and on
    ns = f"e2e-install-{uuid.uuid4().hex[:6]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    try:
        cluster.gateway("install", [EIP], ["node2", "node3"])
        cluster.pod(ns, "client", {"app": "client"}, node="node1")
        cluster.wait_running(ns, "client")
        cluster.policy(ns, "p", "install", {"app": "client"})
        cluster.wait_policy(ns, "p")
        assert cluster.wait_source(ns, "client", EIP) == EIP
        yield pod_netns_path(cluster, ns, "client")
    finally:
        cluster.move_gateway("install", [])
        cluster.delete("egressgateway", "install")
        cluster.delete("namespace", ns)


def test_helm_upgrade_rolls_every_pod_without_dropping_a_probe(cluster: Cluster, probing: str) -> None:
    before = our_pods(cluster)
    evict = 21 + int(time.time()) % 30  # not the default 20; on a kept sandbox most likely new too
    with Prober(probing, interval=0.2) as prober, HolderSampler(cluster.sb, EIP, ["node2", "node3"], 0.05) as held:
        wait_for(lambda: any(p.ok(EIP) for p in prober.snapshot()) or None, "a probe leaves with the EIP", 30)
        started = time.time()
        helm(cluster, "upgrade", components.RELEASE, str(components.CHART), "--reset-then-reuse-values",
             "--set", f"feature.gatewayFailover.eipEvictionTimeout={evict}")
        def replaced() -> dict[str, str] | None:
            now = our_pods(cluster)
            return now if len(now) == len(before) and not set(now) & set(before) else None

        rolled = wait_for(replaced, "every pod of the release replaced", 300, interval=1.0)
        cluster.sb.wait_installed()
        finished = time.time()
        wait_for(lambda: prober.snapshot(since=finished + 2.0) or None, "probes after the rollout", 30)
        probes = prober.snapshot(since=started)
        holders = held.snapshot(since=started)
    lost = sum(p.replied is None for p in probes)
    other = sum(p.replied is not None and p.source != EIP for p in probes)
    print(f"[upgrade] {len(before)} pods replaced by {len(rolled)} in {finished - started:.1f} s; {len(probes)} probes: "
          f"{lost} lost, {other} with another source, longest gap {longest_outage(probes, EIP):.3f} s; "
          f"EIP on no node for {longest_unheld(holders):.2f} s at most, on two for {longest_double(holders):.2f} s",
          flush=True)
    assert len(rolled) == len(before)
    assert (lost, other) == (0, 0)


def test_helm_uninstall_leaves_every_node_as_before_and_installs_again(cluster: Cluster, probing: str) -> None:
    sb = cluster.sb
    before = json.loads(sb.pre_install_path.read_text())

    def left() -> dict[str, list[str]]:
        return {node.name: diff for node in sb.plan.nodes
                if (diff := footprint.differences(before[node.name], footprint.snapshot(node, sb.node_paths(node.name).root)))}

    def shown(remaining: dict[str, list[str]]) -> str:
        return "\n".join(f"{n}: {line}" for n, d in remaining.items() for line in d)

    def only_pod_veths(remaining: dict[str, list[str]]) -> bool:
        return all(POD_VETH.search(line) for lines in remaining.values() for line in lines)

    try:
        started = time.monotonic()
        helm(cluster, "uninstall", components.RELEASE, "--wait")
        wait_for(lambda: not our_pods(cluster) or None, "no pod of the release left", 120, interval=1.0)
        deadline = time.monotonic() + 60
        while not only_pod_veths(remaining := left()) and time.monotonic() < deadline:
            time.sleep(1.0)
        print(f"[uninstall] helm uninstall + every node clean after {time.monotonic() - started:.1f} s "
              f"(running pods' veth lines: {sum(map(len, remaining.values()))})", flush=True)
        assert only_pod_veths(remaining), "after helm uninstall:\n" + shown(remaining)
        if cluster.sb.plan.cni == "macvlan":  # the probing pod is an underlay pod of ours: its veth stays with it
            assert remaining, "the running underlay pod kept no host veth: this check is vacuous"
        running = (cluster.get("pods", "-A") or {"items": []}) if remaining else {"items": []}
        for pod in running["items"]:  # every user pod: what remains is theirs, and goes with them
            if pod["metadata"]["namespace"] != "kube-system" and not pod["metadata"].get("deletionTimestamp"):
                cluster.delete("pod", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"])
        deadline = time.monotonic() + 60
        while (remaining := left()) and time.monotonic() < deadline:
            time.sleep(1.0)
        print(f"[uninstall] and once the pods still running are deleted, every node clean after "
              f"{time.monotonic() - started:.1f} s", flush=True)
        assert not remaining, "after helm uninstall and deleting the pods:\n" + shown(remaining)
    finally:  # the tests after this one need the release
        if not our_pods(cluster):
            sb.install_chart()
