"""flanneld per sandbox node (`--cni flannel`): the real daemon, VXLAN backend, kube subnet manager.

Each node runs flanneld (hack/build-flannel.sh) in its netns and mount namespace, as the user
`flannel` bound to what flannel's own manifest grants (Documentation/kube-flannel.yml). It takes the
node's spec.podCIDRs the sandbox patched in, creates `flannel.1` (and `flannel-v6.1`) on eth0 (VNI 1,
UDP 8472: not ours, the agents' tunnel is VNI 100 on 7789), routes every other node's pod subnets
through it, adds its FLANNEL-* and MASQUERADE rules (`--ip-masq`) and writes
/run/flannel/subnet.env (node-local: nodehost.NODE_LOCAL_DIRS).

flannel's own CNI plugin (github.com/flannel-io/cni-plugin) reads that file and delegates to
`bridge` + `host-local`; its module is not served by the Go module proxy, so `cni_plugin()` writes
what it would delegate, and containerd's network becomes ready once that conflist is there.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devtools.sandbox import nodehost, procs
from devtools.sandbox.plan import NodePlan

USER = "flannel"
SUBNET_ENV = "/run/flannel/subnet.env"  # flanneld's default, where flannel's CNI plugin reads it
VXLAN_VNI = 1  # flannel's defaults, kept: distinct from the agents' egress.vxlan (id 100, port 7789)
VXLAN_PORT = 8472

# What flannel's manifest grants its ServiceAccount, here to the user of its client certificate.
# (pods get: to find the node from POD_NAME; NODE_NAME is set, kept for parity.)
RBAC: list[dict[str, Any]] = [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "flannel"},
     "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
               {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
               {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "flannel"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]},
]


def net_conf(cluster_cidrs: tuple[str, str]) -> dict[str, Any]:
    """flannel's net-conf.json: the cluster's pod networks (dual stack), VXLAN with its defaults."""
    v4, v6 = cluster_cidrs
    return {"Network": v4, "EnableIPv6": True, "IPv6Network": v6,
            "Backend": {"Type": "vxlan", "VNI": VXLAN_VNI, "Port": VXLAN_PORT}}


def parse_subnet_env(text: str) -> dict[str, str]:
    """subnet.env (`KEY=value` lines) as flanneld writes it."""
    env = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key:
            env[key] = value
    return env


def cni_plugin(env: Mapping[str, str], bridge: str, ipam_dir: str) -> dict[str, Any]:
    """What flannel's CNI plugin delegates to for this subnet.env: `bridge` (default gateway, ipMasq
    only when flanneld does not masquerade, flannel's MTU, hairpin) + host-local on the node's subnets,
    routes to the flannel networks and the default routes."""
    ranges: list[list[dict[str, str]]] = []
    routes: list[dict[str, str]] = []
    for subnet_key, network_key, default in (("FLANNEL_SUBNET", "FLANNEL_NETWORK", "0.0.0.0/0"),
                                             ("FLANNEL_IPV6_SUBNET", "FLANNEL_IPV6_NETWORK", "::/0")):
        if subnet_key not in env:
            continue
        # flanneld writes the subnet's first address with its prefix (10.244.1.1/24): the bridge's.
        ranges.append([{"subnet": str(ipaddress.ip_interface(env[subnet_key]).network)}])
        routes += [{"dst": env[network_key]}, {"dst": default}]
    if not ranges:
        raise ValueError(f"subnet.env has neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET: {dict(env)}")
    return {
        "type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": env.get("FLANNEL_IPMASQ") != "true",
        "mtu": int(env["FLANNEL_MTU"]), "hairpinMode": True,
        "ipam": {"type": "host-local", "dataDir": ipam_dir, "ranges": ranges, "routes": routes},
    }


def argv(node: NodePlan, kubeconfig: Path, conf_path: Path) -> list[str]:
    from devtools.devkube.binaries import flannel_binary

    return ["env", f"NODE_NAME={node.name}", str(flannel_binary()), "--kube-subnet-mgr", f"--kubeconfig-file={kubeconfig}",
            f"--iface={node.endpoint.device}", f"--net-config-path={conf_path}", f"--subnet-file={SUBNET_ENV}", "--ip-masq"]


def start(node: NodePlan, root: Path, kubeconfig: Path, holder: procs.ProcessRecord,
          cluster_cidrs: tuple[str, str]) -> procs.ProcessRecord:
    import json

    conf_path = root / "flannel" / "net-conf.json"
    conf_path.parent.mkdir(parents=True, exist_ok=True)
    conf_path.write_text(json.dumps(net_conf(cluster_cidrs), indent=2))
    nodehost.node_path(root, SUBNET_ENV).unlink(missing_ok=True)  # of an earlier run: wait for this one's
    return procs.launch(f"flanneld-{node.name}", nodehost.enter_argv(holder, argv(node, kubeconfig, conf_path)),
                        root / "logs", netns=node.netns)


def wait_subnet_env(root: Path, record: procs.ProcessRecord, timeout: float = 120.0) -> dict[str, str]:
    """The node's subnet.env once flanneld has written it (it writes it whole, by rename)."""
    path = nodehost.node_path(root, SUBNET_ENV)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not procs.alive(record):
            raise RuntimeError(f"{record.name} exited before writing {SUBNET_ENV}; log {record.log_path}:\n{procs.tail(record)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{record.name}: no {SUBNET_ENV} after {timeout:.0f}s; log {record.log_path}:\n{procs.tail(record)}")
        time.sleep(0.1)
    return parse_subnet_env(path.read_text())
