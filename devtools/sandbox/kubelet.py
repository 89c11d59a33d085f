"""A real kubelet per sandbox node (test-harness.md 3.4), started inside the node netns.

Each kubelet has its own root dir, cert dir and cgroup root; its ports are the defaults because
every node has its own network namespace. It authenticates as system:node:<name> with a client
certificate from the apiserver's client CA, so the Node authorizer and NodeRestriction apply.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from devtools.sandbox import cgroups, nodehost, procs
from devtools.sandbox.plan import NodePlan


def kubelet_config(node: NodePlan, socket: Path, client_ca: Path, static_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{socket}",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(client_ca)}},
        "authorization": {"mode": "Webhook"},
        "address": node.endpoint.ipv4, "healthzBindAddress": "127.0.0.1", "readOnlyPort": 0,
        "cgroupRoot": cgroups.node_root(node), "cgroupsPerQOS": True, "enforceNodeAllocatable": ["pods"],
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "localStorageCapacityIsolation": False,
        # true: kubelet must not rewrite host-global sysctls (vm.overcommit_memory, kernel.panic...) of a shared machine
        "protectKernelDefaults": True,
        "clusterDomain": "cluster.local", "resolvConf": "/etc/resolv.conf", "staticPodPath": str(static_dir),
        "nodeStatusUpdateFrequency": "4s", "syncFrequency": "10s", "podCIDR": node.pod_cidr_v4,
        "serializeImagePulls": False, "podLogsDir": str(static_dir.parent / "pod-logs"),
        # A container the tests kill (agents, SIGKILL and power-off runs) is back within 1 s each time,
        # instead of backing off to 5 minutes (KubeletCrashLoopBackOffMax, beta and on since 1.35).
        "crashLoopBackOff": {"maxContainerRestartPeriod": "1s"},
    }


# What kubelet's container manager insists on (pkg/kubelet/cm setupKernelTunables).
KUBELET_KERNEL_DEFAULTS = {"vm/overcommit_memory": "1", "vm/panic_on_oom": "0", "kernel/panic": "10",
                           "kernel/panic_on_oops": "1", "kernel/keys/root_maxkeys": "1000000",
                           "kernel/keys/root_maxbytes": "25000000"}


def kernel_default_overlays(root: Path) -> list[tuple[Path, Path]]:
    """(file with kubelet's expected value, /proc/sys file it shadows) for every differing tunable.

    These sysctls are host-global, not per netns: kubelet would rewrite them on the shared machine
    (protectKernelDefaults: false) or refuse to start (true). Instead the node's mount namespace
    (nodehost.py) shows these files with the expected values; the host's values never change.
    """
    overlays = []
    for key, expected in KUBELET_KERNEL_DEFAULTS.items():
        target = Path("/proc/sys") / key
        if target.read_text().strip() != expected:
            shadow = root / "kernel-defaults" / key.replace("/", ".")
            shadow.parent.mkdir(parents=True, exist_ok=True)
            shadow.write_text(f"{expected}\n")
            overlays.append((shadow, target))
    return overlays


def start(node: NodePlan, root: Path, socket: Path, kubeconfig: Path, client_ca: Path,
          holder: procs.ProcessRecord) -> procs.ProcessRecord:
    for sub in ("kubelet", "kubelet-pki", "static-pods", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cgroups.create(cgroups.node_root(node))
    config = root / "kubelet.yaml"
    config.write_text(yaml.safe_dump(kubelet_config(node, socket, client_ca, root / "static-pods")))
    from devtools.devkube.binaries import kube_bin_dir

    argv = [str(kube_bin_dir() / "kubelet"), f"--config={config}", f"--kubeconfig={kubeconfig}",
            f"--root-dir={root / 'kubelet'}", f"--cert-dir={root / 'kubelet-pki'}",
            f"--hostname-override={node.name}", f"--node-ip={node.endpoint.ipv4},{node.endpoint.ipv6}", "--v=2"]
    return procs.launch(f"kubelet-{node.name}", nodehost.enter_argv(holder, argv), root / "logs", netns=node.netns)


def node_ready(node_obj: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in node_obj.get("status", {}).get("conditions", []))


def wait_ready(record: procs.ProcessRecord, get_node: Any, name: str, timeout: float = 180.0,
               registered_only: bool = False) -> None:
    """Poll until Node `name` is Ready (`registered_only`: exists, e.g. while its CNI is not there yet);
    fail early with the log tail when kubelet exits."""
    deadline = time.monotonic() + timeout
    while True:
        obj = get_node(name)
        if obj is not None and (registered_only or node_ready(obj)):
            return
        if not procs.alive(record):
            raise RuntimeError(f"kubelet {name} exited; log tail:\n{procs.tail(record, 25)}")
        if time.monotonic() > deadline:
            state = json.dumps(obj.get("status", {}).get("conditions", [])) if obj else "no Node object"
            raise RuntimeError(f"kubelet {name}: node not Ready after {timeout:.0f}s ({state}); log tail:\n{procs.tail(record, 25)}")
        time.sleep(0.5)
