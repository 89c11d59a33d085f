"""Our components on the sandbox, installed as users install them: `helm install` of the chart.

The seed's command (shared/seeds/004) from the chart directory, into kube-system, with the product
image (`make image`) imported into every node's containerd beforehand: the agent is the DaemonSet's
pod on each node (its init container chains the plugin into that node's conflist), controller and
webhook are Deployments, the API server reaches the webhook through its Service.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devtools.sandbox import REPO_ROOT

CHART = REPO_ROOT / "manifests" / "chart" / "egressgateway"
IMAGE_ARCHIVE = REPO_ROOT / "build" / "egressgateway-image.oci.tar"
RELEASE = "egressgateway"
NAMESPACE = "kube-system"
SEED_VALUES = ("--set", 'feature.tunnelIpv4Subnet=192.200.0.1/16', "--set", "feature.enableGatewayReplyRoute=true")
AGENT_HEALTH = "127.0.0.1:5810"  # the DaemonSet's health port, in each node's netns: /healthz /readyz /metrics
AGENT_LABEL = "app.kubernetes.io/name=egressgateway-agent"
AGENT_CONTAINER = "agent"
DEPLOYMENTS = ("egressgateway-controller", "egress-webhook")
LEADER_LEASE = "egressgateway-controller"


def install_command(helm: str, kubeconfig: Path, *extra: str) -> list[str]:
    """The seed's `helm install`, from the chart directory instead of its repository."""
    return [helm, "install", RELEASE, str(CHART), "-n", NAMESPACE, f"--kubeconfig={kubeconfig}", *SEED_VALUES, *extra]


def shown(*extra: str) -> str:
    """The install as the seed writes it, with the chart directory in place of `egressgateway/egressgateway`."""
    return " ".join([f"helm install {RELEASE} {CHART.relative_to(REPO_ROOT)} -n {NAMESPACE} "
                     '--set feature.tunnelIpv4Subnet="192.200.0.1/16" --set feature.enableGatewayReplyRoute=true', *extra])


def environment_values(underlay_pods: bool, service_cidr: str) -> tuple[str, ...]:
    """What the seed's cluster had outside egressgateway: there Spiderpool's coordinator routed the
    Service CIDR and 10.6.168.63/32 of macvlan pods through the host; here our plugin does (hijackCIDR)."""
    return ("--set", f"agent.cni.hijackCIDR={{{service_cidr},10.6.168.63/32}}") if underlay_pods else ()


def agents_missing(daemonset: dict[str, Any] | None, nodes: int) -> str:
    """'' when an agent is ready on each of `nodes`; else what is still missing."""
    if daemonset is None:
        return "no DaemonSet egressgateway-agent"
    status = daemonset.get("status", {})
    if status.get("numberReady", 0) < nodes or status.get("updatedNumberScheduled", 0) < nodes:
        return f"agents ready {status.get('numberReady', 0)}/{nodes}"
    return ""


def workloads_ready(daemonset: dict[str, Any] | None, deployments: list[dict[str, Any] | None], nodes: int) -> str:
    """'' when every agent and every Deployment replica is ready; else what is still missing."""
    if missing := agents_missing(daemonset, nodes):
        return missing
    for name, deployment in zip(DEPLOYMENTS, deployments, strict=True):
        if deployment is None:
            return f"no Deployment {name}"
        wanted = deployment.get("spec", {}).get("replicas", 1)
        got = deployment.get("status", {})
        if got.get("readyReplicas", 0) < wanted or got.get("updatedReplicas", 0) < wanted:
            return f"{name} ready {got.get('readyReplicas', 0)}/{wanted}"
    return ""


def terminating(pods: dict[str, Any]) -> list[str]:
    """Names of the release's pods that are being deleted (a rollout not finished)."""
    return [p["metadata"]["name"] for p in pods.get("items", [])
            if p["metadata"].get("deletionTimestamp") and p["metadata"]["name"].startswith("egress")]


def pod_summary(pods: dict[str, Any]) -> str:
    return json.dumps([(p["metadata"]["name"], p.get("status", {}).get("phase"),
                        [c.get("state") for c in p.get("status", {}).get("containerStatuses", [])])
                       for p in pods.get("items", [])])[:3000]
