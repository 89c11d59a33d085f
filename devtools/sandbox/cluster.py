"""Bring the whole sandbox up step by step, and tear it down from its saved state.

Every step polls for its own readiness (no fixed sleeps) and records what it started before
waiting, so a failure at any point still leaves a state file `down()` can clean up from.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devtools.sandbox import cgroups, components, containerd, images, kubelet, netns, procs
from devtools.sandbox.plan import NodePlan, SandboxPlan
from devtools.sandbox.state import SandboxState

LOG_ROOT = Path(os.environ.get("LOGDIR", "/tmp/egressgateway-logs"))
REQUIRED_TOOLS = ("ip", "nsenter", "unshare", "containerd", "runc", "ctr", "gcc", "curl")


def missing_prerequisites() -> list[str]:
    from devtools.devkube.binaries import KUBE_TOOLS, kube_bin_dir

    missing = [f"{tool} (apt: see hack/install-deps.sh)" for tool in REQUIRED_TOOLS if not shutil.which(tool)]
    missing += [f"{kube_bin_dir() / t} (run hack/build-kube.sh)" for t in (*KUBE_TOOLS, "kubelet")
                if not (kube_bin_dir() / t).exists()]
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("/usr/lib/cni/bridge (apt: containernetworking-plugins)")
    if os.geteuid() != 0:
        missing.append("root (network namespaces, containerd)")
    return missing


class Sandbox:
    def __init__(self, plan: SandboxPlan, *, plugin: str = "auto", components: bool = True,
                 say: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.work_dir = plan.state_dir
        self.plugin = plugin
        self.with_components = components
        self.say = say
        self.state = SandboxState(self.work_dir)
        self.pending: list[str] = []
        self.plugin_kind = ""
        self.timings: dict[str, float] = {}
        self.log_dir = LOG_ROOT / self.work_dir.name  # one per sandbox (the e2e one has its own)

    # --- helpers usable from any process (they only need the state file) -----------------------------

    def node_paths(self, name: str) -> containerd.NodePaths:
        return containerd.NodePaths(self.work_dir / name)

    @property
    def kubeconfig(self) -> Path:
        return self.work_dir / "cp" / "admin.kubeconfig"

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,  # noqa: A002 - subprocess's name
                timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """kubectl as admin, run inside the control-plane netns (the only place the apiserver is)."""
        from devtools.devkube.binaries import kube_bin_dir

        argv = netns.in_netns_argv(self.plan.control_plane.netns, [
            str(kube_bin_dir() / "kubectl"), f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self.work_dir / 'cp' / 'kubectl-cache'}", *args])
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def get_or_none(self, *args: str) -> Any:
        result = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        started = time.monotonic()
        self.say(f"==> {title}")
        yield
        self.timings[title] = time.monotonic() - started
        self.say(f"    ok ({self.timings[title]:.1f}s)")

    # --- up ---------------------------------------------------------------------------------------------

    def up(self) -> None:
        if missing := missing_prerequisites():
            raise RuntimeError("sandbox prerequisites missing:\n  " + "\n  ".join(missing))
        if SandboxState.load(self.work_dir) is not None:
            self.say(f"==> a previous sandbox is recorded in {self.work_dir}: tearing it down first")
            self.down()
        self.state = SandboxState(self.work_dir, netns=list(self.plan.netns_names),
                                  control_plane_netns=self.plan.control_plane.netns, kubeconfig=str(self.kubeconfig))
        self.state.save()
        shutil.rmtree(self.log_dir, ignore_errors=True)  # logs of the previous run of this sandbox
        with self.step("network: underlay bridge, control-plane, 3 node and external-server namespaces"):
            netns.apply_topology(self.plan)
        with self.step(f"external server {self.plan.external.ipv4}:8080 (answers `Remote IP: <source>`)"):
            self._start_external_server()
        with self.step(f"control plane in {self.plan.control_plane.netns} (etcd, kube-apiserver, kcm, scheduler, CRDs)"):
            self._start_control_plane()
        with self.step("nodes: containerd + CNI chain + images + kubelet per node netns"):
            self._start_nodes()
        if self.with_components:
            with self.step("egressgateway: controller + webhook (cp netns), agent per node"):
                self._start_components()
        else:
            self.pending.append("controller, webhook and agents (not started: --no-components)")

    def _start_external_server(self) -> None:
        record = procs.launch("extserver", [sys.executable, "-m", "devtools.sandbox.extserver",
                                            "--record", str(self.work_dir / "extserver.jsonl")],
                              self.log_dir, netns=self.plan.external.netns)
        self.state.add_process(record)
        self._wait(lambda: self._fetch_from(self.plan.nodes[0].netns) is not None, "external server answers", record)

    def _fetch_from(self, netns_name: str) -> str | None:
        result = subprocess.run(netns.in_netns_argv(netns_name, [
            "curl", "-s", "--max-time", "3", f"http://{self.plan.external.ipv4}:8080/"]), capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else None

    def _start_control_plane(self) -> None:
        from devtools.sandbox.controlplane import SandboxControlPlane

        self.control_plane = SandboxControlPlane(self.plan, self.work_dir / "cp")
        try:
            self.control_plane.start(components.MANIFESTS / "crds")
        finally:
            for record in self.control_plane.process_records():
                self.state.add_process(record)
        self.control_plane.keep_running_after_exit()

    def _start_nodes(self) -> None:
        archives = images.build_images(self.work_dir / "images")
        if not kubelet.CONTAINER_LOG_LINKS.exists():
            self.state.created_dirs.append(str(kubelet.CONTAINER_LOG_LINKS))
        kubelets = []
        for node in self.plan.nodes:
            paths = self.node_paths(node.name)
            self.state.node_dirs.append(str(paths.root))
            self.state.cgroup_roots.append(cgroups.node_root(node))
            self.plugin_kind = containerd.prepare_node(node, paths, self.plugin)
            self.state.add_process(containerd.start(node, paths))
            containerd.import_images(paths, archives)
            node_kubeconfig = self.control_plane.kubeconfig_for(f"system:node:{node.name}", ["system:nodes"])
            record = kubelet.start(node, paths.root, paths.socket, node_kubeconfig, self.control_plane.client_ca_file)
            kubelets.append((node, self.state.add_process(record)))
        for node, record in kubelets:
            kubelet.wait_ready(record, lambda name: self.get_or_none("node", name), node.name)
            # Like a cluster whose node IPAM hands out the subnets the CNI config uses.
            self.kubectl("patch", "node", node.name, "--type=merge", "-p",
                         json.dumps({"spec": {"podCIDR": node.pod_cidr_v4, "podCIDRs": [node.pod_cidr_v4, node.pod_cidr_v6]}}),
                         check=False)
        if self.plugin_kind == "stub":
            self.pending.append("egress-cni: a pass-through stub is chained (plugin-bin/egress-cni not in this checkout)")

    def _start_components(self) -> None:
        cp = self.control_plane
        for obj in components.setup_objects():
            self.kubectl("apply", "-f", "-", input=json.dumps(obj))
        token_kubeconfig: Callable[..., Path] = lambda sa, bound=None: cp.worker.call(  # noqa: E731
            cp.plane.service_account_kubeconfig, components.NAMESPACE, sa, create=False, duration="48h", bound=bound)
        log_dir = self.log_dir
        webhook_dir = self.work_dir / "webhook"
        hooks = components.webhook_configurations(f"https://{self.plan.control_plane.ipv4}:{components.WEBHOOK_PORT}")
        for hook in hooks:  # before the webhook starts: it patches their caBundle at startup
            self.kubectl("apply", "-f", "-", input=json.dumps(hook))
        webhook = procs.launch("egress-webhook", components.webhook_argv(token_kubeconfig(components.WEBHOOK_SA),
                                                                         self.plan.control_plane.ipv4, webhook_dir),
                               log_dir, netns=self.plan.control_plane.netns)
        self.state.add_process(webhook)
        self._wait(lambda: self._webhook_serving(hooks), "webhook registered and answering (dry-run EgressClusterInfo)", webhook)
        for obj in components.cluster_defaults():
            self.kubectl("apply", "-f", "-", input=json.dumps(obj))
        controller = procs.launch("egress-controller", components.controller_argv(token_kubeconfig(components.CONTROLLER_SA)),
                                  log_dir, netns=self.plan.control_plane.netns)
        self.state.add_process(controller)
        agents = []
        for node in self.plan.nodes:
            # Bound to its Node: the token carries the node claim the node-claim policy checks, as a
            # DaemonSet pod's projected token does (manifests/agent-node-claim.yaml).
            agent_kubeconfig = token_kubeconfig(components.AGENT_SA, ("Node", node.name))
            argv = components.agent_argv(node, self.node_paths(node.name), agent_kubeconfig)
            agents.append(self.state.add_process(procs.launch(f"egress-agent-{node.name}", argv, log_dir, netns=node.netns)))
        for node, agent in zip(self.plan.nodes, agents, strict=True):
            # Not its Lease: only gateway-eligible agents hold one (docs/ha.md); its own /readyz instead.
            self._wait(lambda n=node: self._agent_ready(n), f"agent {node.name} ready", agent)  # type: ignore[misc]
        self._wait(lambda: procs.alive(controller) and self.get_or_none("lease", "-n", components.NAMESPACE,
                                                                        "egressgateway-controller") is not None,
                   "controller holds the leader Lease", controller)

    def _webhook_serving(self, hooks: list[dict[str, Any]]) -> bool:
        for hook in hooks:
            current = self.get_or_none(hook["kind"].lower(), hook["metadata"]["name"])
            if current is None or not all(h.get("clientConfig", {}).get("caBundle") for h in current.get("webhooks", [])):
                return False
        probe = {"apiVersion": "egressgateway.spidernet.io/v1beta1", "kind": "EgressClusterInfo",
                 "metadata": {"name": "default"}, "spec": {}}
        result = self.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False)
        return "failed calling webhook" not in result.stderr

    def _agent_ready(self, node: NodePlan) -> bool:
        """The agent's /readyz, asked inside its node's netns (it listens on the node's loopback)."""
        result = subprocess.run(netns.in_netns_argv(node.netns, [
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", f"http://{components.AGENT_METRICS}/readyz"]),
            capture_output=True, text=True)
        return result.stdout.strip() == "200"

    def _wait(self, probe: Callable[[], bool], what: str, record: procs.ProcessRecord, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while not probe():
            if not procs.alive(record):
                raise RuntimeError(f"{what}: {record.name} exited; log {record.log_path}:\n{procs.tail(record)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: not after {timeout:.0f}s; log {record.log_path}:\n{procs.tail(record)}")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    # --- down -------------------------------------------------------------------------------------------

    def down(self) -> dict[str, Any]:
        """Stop everything the state file names, in dependency order; return what was cleaned."""
        state = SandboxState.load(self.work_dir) or SandboxState(self.work_dir, netns=list(self.plan.netns_names))
        report: dict[str, Any] = {}
        by_name = {p.name: p for p in state.processes}
        first = [p for n, p in by_name.items() if n.startswith(("kubelet-", "egress-"))]
        for record in first:  # nothing may recreate pods or rules while we remove them
            procs.stop(record)
        report["pods_removed"] = 0
        for node_dir in state.node_dirs:  # through CRI while containerd runs: CNI DEL, unmounts, netns
            if _containerd_alive(by_name, node_dir):
                try:
                    report["pods_removed"] += containerd.remove_all_pods(containerd.NodePaths(Path(node_dir)))
                except Exception as error:  # keep tearing down; the sweeps below catch what is left
                    self.say(f"    removing pods of {node_dir} via CRI failed: {error}")
        for record in reversed(state.processes):
            procs.stop(record)
        report["processes"] = len(state.processes)
        report["pod_processes_killed"] = sum(cgroups.kill_all(root) for root in state.cgroup_roots)
        shims = [pid for d in state.node_dirs for pid in containerd.leftover_shims(containerd.NodePaths(Path(d)))]
        for pid in shims:
            _kill(pid)
        report["shims_killed"] = len(shims)
        report["unmounted"] = [m for d in state.node_dirs for m in containerd.unmount_all(Path(d))]
        report["cgroups_left"] = [c for root in state.cgroup_roots for c in cgroups.remove(root)]
        report["netns_removed"] = netns.remove_topology(state.netns or list(self.plan.netns_names))
        report["cni_netns_removed"] = _remove_pod_netns(state)
        report["log_links_removed"] = _remove_log_links(state)
        for directory in state.created_dirs:
            with contextlib.suppress(OSError):  # only when empty: it may have gained other users meanwhile
                Path(directory).rmdir()
        for log in self.work_dir.glob("*/logs/*.log"):  # control-plane, containerd and kubelet logs outlive the run
            shutil.copy2(log, self.log_dir / f"{log.parent.parent.name}-{log.name}")
        shutil.rmtree(self.work_dir, ignore_errors=True)
        return report


def sweep_stale(pattern: str, say: Callable[[str], None] = print) -> list[str]:
    """Tear down sandboxes whose state dir matches `pattern` and none of whose processes is alive
    (left by a killed test session); a live one (another session's) is never touched."""
    swept = []
    for state_file in sorted(Path("/").glob(f"{pattern.lstrip('/')}/state.json")):
        state = SandboxState.load(state_file.parent)
        if state is None or any(procs.alive(p) for p in state.processes):
            continue
        from devtools.sandbox.plan import build_plan

        Sandbox(build_plan(state_dir=state_file.parent), say=say).down()
        swept.append(str(state_file.parent))
    return swept


def _containerd_alive(by_name: dict[str, procs.ProcessRecord], node_dir: str) -> bool:
    record = by_name.get(f"containerd-{Path(node_dir).name}")
    return record is not None and procs.alive(record)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


CNI_CACHE = Path("/var/lib/cni/results")


def _remove_log_links(state: SandboxState) -> int:
    """kubelet's /var/log/containers symlinks into this sandbox's node dirs (dangling once pods are gone)."""
    removed = 0
    for link in kubelet.CONTAINER_LOG_LINKS.glob("*.log"):
        with contextlib.suppress(OSError):
            target = os.readlink(link)
            if link.is_symlink() and any(target.startswith(f"{d}/") for d in state.node_dirs):
                link.unlink()
                removed += 1
    return removed


def _remove_pod_netns(state: SandboxState) -> list[str]:
    """Pod netns and libcni cache entries containerd left behind (it died before RemovePodSandbox),
    found through the OCI specs of this sandbox's own containers."""
    removed = []
    for node_dir in state.node_dirs:
        for spec in Path(node_dir, "containerd").rglob("config.json"):
            for cached in CNI_CACHE.glob(f"*-{spec.parent.name}-*"):
                cached.unlink(missing_ok=True)
            try:
                namespaces = json.loads(spec.read_text())["linux"]["namespaces"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            for entry in namespaces:
                path = entry.get("path", "")
                if entry.get("type") == "network" and path.startswith("/var/run/netns/cni-") and Path(path).exists():
                    subprocess.run(["ip", "netns", "del", Path(path).name], capture_output=True)
                    removed.append(Path(path).name)
    return removed
