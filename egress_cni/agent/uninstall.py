"""The node's side of `helm uninstall`: on the chart's pre-delete signal the agent stops reconciling,
removes everything it and the CNI plugin put on the node, and confirms (docs/install.md, Uninstall).

The signal is the annotation `ANNOTATION_UNINSTALL` on EgressClusterInfo `default` (every agent
already watches it); its value is a token the hook Job chose. The confirmation is the same token in
the annotation `ANNOTATION_UNINSTALLED` (api/names.py) of the agent's own Lease `egress-agent-<node>`, the one object
the node-claim policy lets it write (agent/k8s_source.py writes it; the controller reads such a Lease
as no liveness at all: controller/liveness.py).

What is removed, in this order:
1. the dataplane (`KernelDataplane.uninstall`: chains and jumps, ipsets, ip rules, routes in our
   tables, EIP addresses, the VXLAN device, the EIP holder);
2. the CNI files (lowlevel/cnifiles.py, after step 3 has read our conflist entry: our conflist entry first, so no new pod runs the plugin, then
   the wrapper, then the private runtime);
3. the plugin's shared host rule for underlay pods and its table (`KernelDataplane.detach_underlay`),
   when no underlay pod of ours runs: a running one reaches Services and the node through its host
   veth (the uninstall hook's own pod may be one), which goes with the pod's netns;
4. the plugin's per-pod state dir and everything inside the registry dir (endpoints, acks, heartbeat).
The registry dir itself and the parents of the runtime and state dirs stay, empty: they are the
DaemonSet's hostPath volumes (docs/install.md says why).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from egress_cni import registry
from egress_cni.agent.sources import ClusterStores
from egress_cni.api.names import ANNOTATION_UNINSTALL
from egress_cni.lowlevel import cnifiles
from egress_cni.lowlevel.netlink import RT_TABLE_MAIN

log = logging.getLogger(__name__)

CLUSTER_INFO = "default"


def requested(stores: ClusterStores) -> str:
    """The uninstall token the hook set on EgressClusterInfo `default`, "" when none."""
    info = stores.cluster_infos.get(CLUSTER_INFO)
    return str(info.metadata.annotations.get(ANNOTATION_UNINSTALL) or "").strip() if info is not None else ""


@dataclass(frozen=True)
class NodePaths:
    """Where the node's files are as the agent container sees them; "" skips that part."""

    registry_dir: str = ""
    cni_conf_dir: str = ""
    cni_bin_dir: str = ""
    cni_runtime_dir: str = ""
    cni_state_dir: str = ""


def empty_dir(path: str) -> list[str]:
    """Remove everything inside `path`, keeping `path` itself (a mount point)."""
    removed: list[str] = []
    if not path or not os.path.isdir(path):
        return removed
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
        removed.append(entry.path)
    return removed


def underlay_hosts(conf_dir: str) -> set[cnifiles.UnderlayHost]:
    """The plugin's defaults and whatever its conflist entries configured instead."""
    out = {cnifiles.UnderlayHost(registry.HOST_VETH_PREFIX)}
    for e in cnifiles.plugin_entries(Path(conf_dir)) if conf_dir else []:
        try:
            out.add(cnifiles.UnderlayHost(str(e.get("hostVethPrefix", registry.HOST_VETH_PREFIX)), int(e.get("hostRuleTable", RT_TABLE_MAIN)),
                                 int(e.get("hostRulePriority", 1000))))
        except (TypeError, ValueError):
            continue  # the plugin refused such an entry too: nothing of it is on the node
    return out


def clean_node(dataplane_uninstall: Callable[[], None], paths: NodePaths,
               detach_underlay: Callable[[cnifiles.UnderlayHost], list[str]] | None = None) -> list[str]:
    """Run every removal step, each on its own (one failing does not keep the others from running);
    returns the steps that failed ([] when the node is clean)."""
    failed: list[str] = []

    def step(name: str, action: Callable[[], object]) -> None:
        try:
            result = action()
            log.info("uninstall step done", extra={"step": name, "removed": result if isinstance(result, list) else None})
        except Exception as exc:
            failed.append(f"{name}: {exc}")
            log.error("uninstall step failed", extra={"step": name, "error": str(exc)})

    step("dataplane", dataplane_uninstall)
    if detach_underlay is not None:  # running underlay pods go back to their own link alone
        detach = detach_underlay
        for host in sorted(underlay_hosts(paths.cni_conf_dir), key=repr):
            step("underlay", functools.partial(detach, host))
    if paths.cni_conf_dir and paths.cni_bin_dir:
        runtime = Path(paths.cni_runtime_dir) if paths.cni_runtime_dir else None
        step("cni", lambda: cnifiles.remove(Path(paths.cni_conf_dir), Path(paths.cni_bin_dir), runtime))
    if paths.cni_state_dir:
        step("cni-state", lambda: _remove_tree(paths.cni_state_dir))
    if paths.registry_dir:
        step("registry", lambda: empty_dir(paths.registry_dir))
    return failed


def _remove_tree(path: str) -> list[str]:
    if not os.path.lexists(path):
        return []
    shutil.rmtree(path)
    return [path]
