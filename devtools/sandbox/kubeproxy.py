"""kube-proxy per sandbox node (built with the control plane by hack/build-kube.sh), iptables mode.

It makes Services work in each node's netns: in-cluster clients (our DaemonSet and Deployments)
reach the `kubernetes` Service, the webhook Service has endpoints. It identifies as
system:kube-proxy (bootstrap RBAC: system:node-proxier) and leaves host-global conntrack sysctls
alone (maxPerCore and the timeouts 0: as they are).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from devtools.sandbox import nodehost, procs
from devtools.sandbox.plan import NodePlan

USER = "system:kube-proxy"
HEALTHZ = "127.0.0.1:10256"


def proxy_config(node: NodePlan, kubeconfig: Path, cluster_cidrs: tuple[str, ...], masquerade_all: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node.name, "mode": "iptables",
        # local traffic: from the node's own pod subnets (its spec.podCIDRs, set before kube-proxy starts)
        "clusterCIDR": ",".join(cluster_cidrs), "detectLocalMode": "NodeCIDR",
        # Underlay pods: the API server is on their own segment, so without SNAT its replies would
        # bypass the node that DNATed the Service address.
        "iptables": {"masqueradeAll": masquerade_all},
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "metricsBindAddress": "127.0.0.1:10249", "healthzBindAddress": HEALTHZ,
    }


def start(node: NodePlan, root: Path, kubeconfig: Path, holder: procs.ProcessRecord,
          cluster_cidrs: tuple[str, ...], masquerade_all: bool = False) -> procs.ProcessRecord:
    from devtools.devkube.binaries import kube_bin_dir

    config = root / "kube-proxy.yaml"
    config.write_text(yaml.safe_dump(proxy_config(node, kubeconfig, cluster_cidrs, masquerade_all)))
    argv = [str(kube_bin_dir() / "kube-proxy"), f"--config={config}", "--v=1"]
    return procs.launch(f"kube-proxy-{node.name}", nodehost.enter_argv(holder, argv), root / "logs", netns=node.netns)
