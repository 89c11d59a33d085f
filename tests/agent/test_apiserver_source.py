"""The Kubernetes source on a real kube-apiserver: informers feed the agent's compute, the agent
reports its tunnel parent (status.tunnel.parent, phase Ready), keeps its liveness Lease, and acks a
CNI-registered pod whose labels it learned from the API. The kernel is the in-memory fake."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from egress_cni import k8s, registry
from egress_cni.agent.k8s_source import KubernetesSource, KubernetesTunnelReporter
from egress_cni.agent.loop import Agent
from egress_cni.dataplane.fake import FakeKernel
from egress_cni.dataplane.inputs import DataplaneConfig, NodeFacts

pytestmark = [pytest.mark.apiserver, pytest.mark.timeout(300)]
API = "egressgateway.spidernet.io/v1beta1"


def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s")


def test_agent_on_informers(control_plane: Any, namespace: str, tmp_path: Path) -> None:
    client = k8s.Client.from_kubeconfig(str(control_plane.kubeconfig))
    sfx = uuid.uuid4().hex[:6]
    me, gw = f"agent-node-{sfx}", f"agent-gw-{sfx}"
    created: list[tuple[k8s.ResourceType, str, str | None]] = []
    try:
        for i, name in enumerate((me, gw), start=1):
            client.create(k8s.EGRESS_TUNNELS, {"apiVersion": API, "kind": "EgressTunnel", "metadata": {"name": name}, "spec": {}})
            created.append((k8s.EGRESS_TUNNELS, name, None))
            client.patch_status(k8s.EGRESS_TUNNELS, name, {"status": {
                "tunnel": {"ipv4": f"172.31.9.{i}", "mac": f"66:00:00:00:09:0{i}", "parent": {"name": "eth0", "ipv4": f"10.9.0.{i}"}},
                "mark": f"0x2600090{i}", "phase": "Init"}})
        client.create(k8s.EGRESS_POLICIES, {"apiVersion": API, "kind": "EgressPolicy", "metadata": {"name": "web", "namespace": namespace},
                                            "spec": {"egressGatewayName": "gw", "appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}}}},
                      namespace=namespace)
        client.patch_status(k8s.EGRESS_POLICIES, "web", {"status": {"eip": {"ipv4": "10.9.0.200"}, "node": gw}}, namespace=namespace)
        client.create(k8s.PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": namespace, "labels": {"app": "web"}},
                                 "spec": {"nodeName": me, "containers": [{"name": "c", "image": "pause"}]}}, namespace=namespace)
        source = KubernetesSource(client, me, resync_seconds=60)
        lease = k8s.LeaseKeeper(client, f"egress-agent-{me}", "egressgateway-system", me, 1)
        created.append((k8s.LEASES, f"egress-agent-{me}", "egressgateway-system"))
        kernel = FakeKernel()
        reg = str(tmp_path / "registry")
        agent = Agent(node=me, source=source, kernel=kernel, config=DataplaneConfig(), registry_dir=reg, lease=lease,
                      reporter=KubernetesTunnelReporter(client),
                      facts=lambda: NodeFacts(me, "eth0", "10.9.0.1"), resync_seconds=1)
        agent.start()
        try:
            eventually(lambda: source.synced)
            registry.write_endpoint(reg, registry.Endpoint("cweb1", "eth0", namespace, "web-1", node=me, ipv4=["10.244.9.10"]))
            ack = eventually(lambda: registry.read_ack(reg, "cweb1_eth0"))
            assert ack.selected and ack.policies == (f"{namespace}/web",)
            eventually(lambda: any("steer:" in r and "0x26000902" in r for c in kernel.state.chains for r in c.rules))
            assert any("10.244.9.10" in s.members for s in kernel.state.ipsets)
            tunnel = eventually(lambda: (t := client.get(k8s.EGRESS_TUNNELS, me))["status"].get("phase") == "Ready" and t)
            assert tunnel["status"]["tunnel"]["parent"] == {"name": "eth0", "ipv4": "10.9.0.1"}
            assert tunnel["status"]["tunnel"]["mac"] == "66:00:00:00:09:01"  # the controller's fields are kept
            def lease_holder() -> str | None:  # the lease keeper runs on its own thread: poll, don't race it
                try:
                    spec = client.get(k8s.LEASES, f"egress-agent-{me}", "egressgateway-system")["spec"]
                except k8s.NotFound:
                    return None
                return str(spec.get("holderIdentity") or "") or None

            assert eventually(lease_holder) == me
            client.delete(k8s.EGRESS_POLICIES, "web", namespace)
            eventually(lambda: not any("steer:" in r for c in kernel.state.chains for r in c.rules))
        finally:
            agent.stop()
    finally:
        for rt, name, ns in created:
            try:
                client.delete(rt, name, ns)
            except k8s.APIError:
                pass
