"""Our components on the sandbox: the manifests' identities and config, then controller, webhook, agents.

They run as processes (no images here): controller and webhook in the control-plane netns, one agent
per node netns (host network, as the DaemonSet). Each uses a token of the ServiceAccount the
manifests define, so the manifests' RBAC and admission policies are what they run with (an agent's
token is bound to its Node, so it carries the node claim). Webhook configurations are the
manifests' own, with `clientConfig.service` replaced by the URL the webhook listens on (no Services
or kube-proxy here), as envtest does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from devtools.sandbox import REPO_ROOT
from devtools.sandbox.containerd import NodePaths
from devtools.sandbox.plan import NodePlan

MANIFESTS = REPO_ROOT / "manifests"
NAMESPACE = "egressgateway-system"
WEBHOOK_PORT = 9443
CONTROLLER_SA, AGENT_SA = "egressgateway-controller", "egressgateway-agent"
WEBHOOK_SA = "egress-webhook"
AGENT_METRICS = "127.0.0.1:9641"  # in each node's netns: /healthz /readyz /metrics
# What a process-based install needs from the manifests (workloads and Services are replaced by processes).
SETUP_KINDS = ("Namespace", "ConfigMap", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
               "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


def manifest_objects(directory: Path = MANIFESTS) -> Iterator[dict[str, Any]]:
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind"):
                yield doc


def setup_objects(directory: Path = MANIFESTS) -> list[dict[str, Any]]:
    objects = [o for o in manifest_objects(directory) if o["kind"] in SETUP_KINDS]
    return sorted(objects, key=lambda o: SETUP_KINDS.index(o["kind"]))


def cluster_defaults(directory: Path = MANIFESTS) -> list[dict[str, Any]]:
    return [o for o in manifest_objects(directory) if o["kind"] == "EgressClusterInfo"]


def webhook_configurations(base_url: str, directory: Path = MANIFESTS) -> list[dict[str, Any]]:
    """The manifests' webhook configurations pointing at `base_url` (caBundle: the webhook patches it)."""
    found = []
    for obj in manifest_objects(directory):
        if obj["kind"] in WEBHOOK_KINDS:
            for hook in obj.get("webhooks", []):
                service = hook["clientConfig"].pop("service", None) or {}
                hook["clientConfig"]["url"] = base_url + service.get("path", "/")
            found.append(obj)
    return found


def _script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def controller_argv(kubeconfig: Path) -> list[str]:
    return [_script("egress-controller"), f"--kubeconfig={kubeconfig}", f"--namespace={NAMESPACE}",
            "--identity=sandbox-controller"]


def webhook_argv(kubeconfig: Path, address: str, work_dir: Path) -> list[str]:
    return [_script("egress-webhook"), f"--kubeconfig={kubeconfig}", f"--bind={address}", f"--port={WEBHOOK_PORT}",
            f"--host={address}", f"--cert-dir={work_dir / 'mounted-none'}", f"--runtime-cert-dir={work_dir / 'certs'}",
            f"--namespace={NAMESPACE}", "--workers=1"]


# As in a DaemonSet pod (hostNetwork): the agent sees its node's links in /sys/class/net. Under
# `nsenter --net` alone sysfs still shows the machine's own links (the agent then announced EIPs with
# the host's MAC); a mount namespace of its own (slave: later mounts still propagate in) with sysfs
# mounted inside the node's netns gives it the node's.
NODE_SYSFS = ["unshare", "-m", "--propagation", "slave", "sh", "-c", 'mount -t sysfs sysfs /sys && exec "$0" "$@"']


def agent_argv(node: NodePlan, paths: NodePaths, kubeconfig: Path) -> list[str]:
    return [*NODE_SYSFS, _script("egress-agent"), "run", f"--node={node.name}", f"--kubeconfig={kubeconfig}",
            f"--registry-dir={paths.registry_dir}", f"--parent={node.endpoint.device}", "--ipv6",
            f"--namespace={NAMESPACE}", f"--metrics-address={AGENT_METRICS}"]
