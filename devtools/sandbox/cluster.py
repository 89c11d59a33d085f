"""Bring the whole sandbox up step by step, and tear it down from its saved state.

Every step polls for its own readiness (no fixed sleeps) and records what it started before
waiting, so a failure at any point still leaves a state file `down()` can clean up from.
"""

from __future__ import annotations

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

from devtools.sandbox import cgroups, cni, components, containerd, footprint, images, kubelet, kubeproxy, netns, nodehost, procs
from devtools.sandbox.plan import OVERLAY_PODS, NodePlan, SandboxPlan
from devtools.sandbox.state import SandboxState

LOG_ROOT = Path(os.environ.get("LOGDIR", "/tmp/egressgateway-logs"))
REQUIRED_TOOLS = ("ip", "nsenter", "unshare", "containerd", "runc", "ctr", "gcc", "curl", "iptables", "conntrack")


def missing_prerequisites(with_components: bool = True, cni_mode: str = "bridge") -> list[str]:
    from devtools.devkube.binaries import KUBE_TOOLS, flannel_binary, helm_binary, kube_bin_dir

    missing = [f"{tool} (apt: see hack/install-deps.sh)" for tool in REQUIRED_TOOLS if not shutil.which(tool)]
    missing += [f"{kube_bin_dir() / t} (run hack/build-kube.sh)" for t in (*KUBE_TOOLS, "kubelet", "kube-proxy")
                if not (kube_bin_dir() / t).exists()]
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("/usr/lib/cni/bridge (apt: containernetworking-plugins)")
    if cni_mode == "flannel" and flannel_binary() is None:
        missing.append("flanneld (make flannel: hack/build-flannel.sh)")
    if with_components and helm_binary() is None:
        missing.append("helm (make helm: hack/build-helm.sh)")
    if with_components and not components.IMAGE_ARCHIVE.exists():
        missing.append(f"{components.IMAGE_ARCHIVE} (make image)")
    if os.geteuid() != 0:
        missing.append("root (network namespaces, containerd)")
    return missing


class Sandbox:
    def __init__(self, plan: SandboxPlan, *, components: bool = True, say: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.work_dir = plan.state_dir
        self.with_components = components
        self.say = say
        self.state = SandboxState(self.work_dir)
        self.pending: list[str] = []
        self.timings: dict[str, float] = {}
        self.log_dir = LOG_ROOT / self.work_dir.name  # one per sandbox (the e2e one has its own)

    @classmethod
    def attach(cls, state_dir: Path, say: Callable[[str], None] = print) -> Sandbox:
        """A running sandbox started by another process (`--keep`), rebuilt from its state file."""
        from devtools.sandbox.plan import build_plan

        state = SandboxState.load(state_dir)
        if state is None:
            raise RuntimeError(f"no sandbox recorded in {state_dir}")
        sb = cls(build_plan(state_dir=state_dir, **state.plan_args), say=say)
        sb.state = state
        return sb

    # --- helpers usable from any process (they only need the state file) -----------------------------

    def node_paths(self, name: str) -> containerd.NodePaths:
        return containerd.NodePaths(self.work_dir / name)

    @property
    def pre_install_path(self) -> Path:
        return self.work_dir / "pre-install-footprint.json"

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
        if missing := missing_prerequisites(self.with_components, self.plan.cni):
            raise RuntimeError("sandbox prerequisites missing:\n  " + "\n  ".join(missing))
        if SandboxState.load(self.work_dir) is not None:
            self.say(f"==> a previous sandbox is recorded in {self.work_dir}: tearing it down first")
            self.down()
        self.state = SandboxState(self.work_dir, netns=list(self.plan.netns_names),
                                  control_plane_netns=self.plan.control_plane.netns, kubeconfig=str(self.kubeconfig),
                                  plan_args=self.plan.args, owner=procs.this_process())
        self.state.save()
        shutil.rmtree(self.log_dir, ignore_errors=True)  # logs of the previous run of this sandbox
        with self.step("network: underlay bridge, control-plane, 3 node and external-server namespaces"):
            netns.apply_topology(self.plan)
        with self.step(f"external server {self.plan.external.ipv4}:8080 (answers `Remote IP: <source>`)"):
            self._start_external_server()
        with self.step(f"control plane in {self.plan.control_plane.netns} (etcd, kube-apiserver, kcm, scheduler, CRDs)"):
            self._start_control_plane()
        with self.step("nodes: own netns and mount namespace, containerd + images, kubelet, kube-proxy"):
            self._start_nodes()
        if self.with_components:
            with self.step("egressgateway: helm install of the chart (agent DaemonSet, controller and webhook Deployments)"):
                self.install_chart()
        else:
            self.pending.append("egressgateway (not installed: --no-components)")

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
            self.control_plane.start(components.CHART / "crds")
        finally:
            for record in self.control_plane.process_records():
                self.state.add_process(record)
        self.control_plane.keep_running_after_exit()

    def _start_nodes(self) -> None:
        archives = images.build_images(self.work_dir / "images")
        if self.with_components:
            archives.append(components.IMAGE_ARCHIVE)
        self.state.created_dirs += nodehost.ensure_mount_points()  # the record nodehost keeps is what teardown uses
        nodehost.register_sandbox(self.work_dir)  # found by another sandbox's teardown, whatever its --state-dir
        self.state.save()
        started = []
        flannel_mode = self.plan.cni == "flannel"
        for node in self.plan.nodes:
            paths = self.node_paths(node.name)
            self.state.node_dirs.append(str(paths.root))
            self.state.cgroup_roots.append(cgroups.node_root(node))
            main = None if flannel_mode else cni.main_plugin(self.plan, node, str(paths.ipam_dir))
            containerd.prepare_node(node, paths, plugin="none", in_node_namespace=True, main=main, with_conflist=not flannel_mode)
            holder = self.state.add_process(nodehost.start_holder(node, paths.root, kubelet.kernel_default_overlays(paths.root)))
            self.state.add_process(containerd.start(node, paths, holder, network=not flannel_mode))
            containerd.import_images(paths, archives)
            node_kubeconfig = self.control_plane.kubeconfig_for(f"system:node:{node.name}", ["system:nodes"])
            record = kubelet.start(node, paths.root, paths.socket, node_kubeconfig, self.control_plane.client_ca_file, holder)
            started.append((node, holder, self.state.add_process(record)))
        proxy_kubeconfig = self.control_plane.kubeconfig_for(kubeproxy.USER)
        for node, holder, record in started:
            # flannel: NotReady until flanneld's subnet gives containerd a network (kubelet reports it).
            kubelet.wait_ready(record, lambda name: self.get_or_none("node", name), node.name, registered_only=flannel_mode)
            # Like a cluster whose node IPAM hands out the subnets the CNI config uses.
            self.kubectl("patch", "node", node.name, "--type=merge", "-p",
                         json.dumps({"spec": {"podCIDR": node.pod_cidr_v4, "podCIDRs": [node.pod_cidr_v4, node.pod_cidr_v6]}}),
                         check=False)
            self.state.add_process(kubeproxy.start(node, self.node_paths(node.name).root, proxy_kubeconfig, holder,
                                                   self.plan.cluster_pod_cidrs, masquerade_all=self.plan.underlay_pods))
        if flannel_mode:
            self._start_flannel(started)

    def _start_flannel(self, nodes: list[tuple[NodePlan, procs.ProcessRecord, procs.ProcessRecord]]) -> None:
        """flanneld on every node (kube subnet manager), then the conflist from its subnet.env."""
        from devtools.sandbox import flannel

        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": flannel.RBAC}))
        kubeconfig = self.control_plane.kubeconfig_for(flannel.USER)
        daemons = []
        for node, holder, _ in nodes:
            root = self.node_paths(node.name).root
            daemons.append(self.state.add_process(flannel.start(node, root, kubeconfig, holder, OVERLAY_PODS)))
        for (node, _, kubelet_record), daemon in zip(nodes, daemons, strict=True):
            paths = self.node_paths(node.name)
            env = flannel.wait_subnet_env(paths.root, daemon)
            containerd.write_conflist(paths, containerd.conflist(
                node, paths, chained=False, main=flannel.cni_plugin(env, node.pod_bridge, str(paths.ipam_dir))))
            containerd.wait_ready(node, paths, self._by_name(f"containerd-{node.name}"))
            kubelet.wait_ready(kubelet_record, lambda name: self.get_or_none("node", name), node.name)

    def _by_name(self, name: str) -> procs.ProcessRecord:
        return next(p for p in self.state.processes if p.name == name)

    def install_chart(self) -> None:
        from devtools.devkube.binaries import helm_binary

        helm = helm_binary()
        assert helm is not None  # missing_prerequisites
        if not self.pre_install_path.exists():  # what `helm uninstall` must leave (e2e/test_install.py)
            self.pre_install_path.write_text(json.dumps(
                {node.name: footprint.snapshot(node, self.node_paths(node.name).root) for node in self.plan.nodes}))
        from devtools.devkube.controlplane import SERVICE_CIDR

        extra = components.environment_values(self.plan.underlay_pods, SERVICE_CIDR)
        if extra:
            self.say("    (macvlan: the seed's Spiderpool coordinator routed the Service CIDR and 10.6.168.63/32 of "
                     "underlay pods through the host; here egress-cni does it: agent.cni.hijackCIDR)")
        self.say(f"$ {components.shown(*extra)}")
        argv = netns.in_netns_argv(self.plan.control_plane.netns, components.install_command(helm, self.kubeconfig, *extra))
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        self.say((result.stdout + result.stderr).rstrip())
        if result.returncode != 0:
            raise RuntimeError(f"helm install exited {result.returncode}: {result.stderr.strip()}")
        if self.plan.underlay_pods:
            self._restart_unchained_pods()
        self.wait_installed()
        listing = self.kubectl("get", "pod", "-n", components.NAMESPACE, "-o", "wide").stdout
        self.say("$ kubectl get pod -n kube-system | grep egressgateway\n" +
                 "\n".join(line for line in listing.splitlines() if "egress" in line))

    def _restart_unchained_pods(self, timeout: float = 300.0) -> None:
        """Underlay: the controller and webhook pods that started before the agents' init containers
        chained egress-cni have no route to the Service CIDR (in the seed's cluster Spiderpool's
        coordinator is chained from the start); once every agent is ready, they are replaced."""
        ns, deadline = components.NAMESPACE, time.monotonic() + timeout
        while components.agents_missing(self.get_or_none("daemonset", "-n", ns, "egressgateway-agent"), len(self.plan.nodes)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"agents not ready after {timeout:.0f}s")
            time.sleep(1.0)
        self.say("    (pods started before egress-cni was chained get no hijack routes: replacing the controller and webhook pods)")
        self.kubectl("-n", ns, "rollout", "restart", *(f"deployment/{name}" for name in components.DEPLOYMENTS))

    def wait_installed(self, timeout: float = 300.0) -> None:
        """Until every agent and Deployment replica is ready, the webhook answers through its Service,
        each node's agent answers /readyz and a controller holds the leader Lease."""
        ns = components.NAMESPACE
        deadline = time.monotonic() + timeout
        missing = "?"
        while time.monotonic() < deadline:
            missing = components.workloads_ready(
                self.get_or_none("daemonset", "-n", ns, "egressgateway-agent"),
                [self.get_or_none("deployment", "-n", ns, name) for name in components.DEPLOYMENTS], len(self.plan.nodes))
            if not missing and not self._webhook_serving():
                missing = "webhook not answering through its Service"
            if not missing and (unready := [n.name for n in self.plan.nodes if not self.agent_ready(n)]):
                missing = f"agent /readyz not 200 on {unready}"
            if not missing and self.get_or_none("lease", "-n", ns, components.LEADER_LEASE) is None:
                missing = "no controller leader Lease"
            if not missing and (leaving := components.terminating(self.get_or_none("pods", "-n", ns) or {})):
                missing = f"pods still terminating: {leaving}"
            if not missing:
                return
            time.sleep(1.0)
        pods = self.get_or_none("pods", "-n", ns) or {}
        raise RuntimeError(f"egressgateway not ready after {timeout:.0f}s: {missing}; pods: {components.pod_summary(pods)}")

    def _webhook_serving(self) -> bool:
        probe = {"apiVersion": "egressgateway.spidernet.io/v1beta1", "kind": "EgressClusterInfo",
                 "metadata": {"name": "default"}, "spec": {}}
        result = self.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False)
        return result.returncode == 0 or "failed calling webhook" not in result.stderr

    def agent_ready(self, node: NodePlan) -> bool:
        """The agent's /readyz, asked inside its node's netns (hostNetwork: it listens there)."""
        result = subprocess.run(netns.in_netns_argv(node.netns, [
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", f"http://{components.AGENT_HEALTH}/readyz"]),
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
        first = [p for n, p in by_name.items() if n.startswith(("kubelet-", "kube-proxy-", "flanneld-"))]
        for record in first:  # nothing may recreate pods or rules while we remove them
            procs.stop(record)
        report["pods_removed"] = 0
        for node_dir in state.node_dirs:  # through CRI while containerd runs: CNI DEL, unmounts, netns
            if _containerd_alive(by_name, node_dir):
                try:
                    report["pods_removed"] += containerd.remove_all_pods(containerd.NodePaths(Path(node_dir)))
                except Exception as error:  # keep tearing down; the sweeps below catch what is left
                    details = getattr(error, "details", None)  # a grpc.RpcError's one-line reason
                    detail = str(details() if callable(details) else error)
                    self.say(f"    removing pods of {node_dir} via CRI failed ({detail}); the sweeps below clean up")
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
        if not _other_sandboxes(self.work_dir):  # their nodes may have mounts on these mount points
            report["mount_points_removed"] = nodehost.remove_mount_points()
        for log in self.work_dir.glob("*/logs/*.log"):  # control-plane, containerd and kubelet logs outlive the run
            shutil.copy2(log, self.log_dir / f"{log.parent.parent.name}-{log.name}")
        shutil.rmtree(self.work_dir, ignore_errors=True)
        return report


def sweep_stale(pattern: str, say: Callable[[str], None] = print) -> list[str]:
    """Tear down sandboxes whose state dir matches `pattern` left by a killed test session: the
    session that brought it up is gone (or, for a state without one, none of its processes is alive).
    A live session's is never touched; a session killed while a test froze its API server or a
    kubelet (SIGSTOP) leaves processes that no teardown of its own stops."""
    swept = []
    for state_file in sorted(Path("/").glob(f"{pattern.lstrip('/')}/state.json")):
        state = SandboxState.load(state_file.parent)
        if state is None or not abandoned(state):
            continue
        Sandbox.attach(state_file.parent, say=say).down()
        swept.append(str(state_file.parent))
    return swept


def abandoned(state: SandboxState) -> bool:
    """Its session is gone (a state without one: none of its processes is alive)."""
    return not procs.alive(state.owner) if state.owner else not any(procs.alive(p) for p in state.processes)


def _containerd_alive(by_name: dict[str, procs.ProcessRecord], node_dir: str) -> bool:
    record = by_name.get(f"containerd-{Path(node_dir).name}")
    return record is not None and procs.alive(record)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _other_sandboxes(own: Path) -> list[Path]:
    """State dirs of other sandboxes with a live process (concurrent e2e sessions, a kept sandbox)."""
    others = []
    dirs = {p.parent for p in Path("/run").glob("egressgateway-sandbox*/state.json")} | set(nodehost.registered_sandboxes())
    for state_dir in sorted(dirs):
        state = SandboxState.load(state_dir)
        if state_dir != own and state is not None and any(procs.alive(p) for p in state.processes):
            others.append(state_dir)
    return others
