"""One Debian containerd per sandbox node: config, CNI chain, start in the node netns, images, teardown.

Each node gets its own root/state/socket under <state>/<node>/containerd (test-harness.md 3.1). Its
CNI bin dir (Debian's plugins linked in: containerd 1.6 takes a single bin_dir), conflist dir,
registry and plugin state are the node's own copies of /opt/cni/bin, /etc/cni/net.d,
/run/egressgateway and /var/lib/egressgateway (nodehost.py): inside the node's mount namespace
containerd sees them at those paths, the DaemonSet's init container chains `egress-cni` into that
conflist. Tests that run containerd without a node namespace (tests/cni, tests/image) get the same
directories by their host-side paths and chain the plugin (or a stub) themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.sandbox import REPO_ROOT, cni, nodehost, procs
from devtools.sandbox.cri import CRIClient
from devtools.sandbox.images import PAUSE_IMAGE
from devtools.sandbox.plan import NodePlan

DEBIAN_CNI_DIR = Path("/usr/lib/cni")
PLUGIN_NAME = "egress-cni"
NETWORK_NAME = "egw-sandbox"

# Until the real plugin is installed: a chained plugin that changes nothing (prevResult passes through).
STUB_PLUGIN = """#!/usr/bin/python3
# egress-cni placeholder written by the sandbox: passes prevResult through unchanged.
import json, os, sys
conf = json.load(sys.stdin) if os.environ.get("CNI_COMMAND") != "VERSION" else {}
command = os.environ.get("CNI_COMMAND")
if command == "ADD":
    json.dump(conf.get("prevResult") or {"cniVersion": conf.get("cniVersion", "1.0.0")}, sys.stdout)
elif command == "VERSION":
    json.dump({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}, sys.stdout)
"""


@dataclass(frozen=True)
class NodePaths:
    """Where a node's containerd, CNI and registry files live (all below its own directory)."""

    root: Path

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return nodehost.node_path(self.root, "/etc/cni/net.d")

    @property
    def cni_bin_dir(self) -> Path:
        return nodehost.node_path(self.root, "/opt/cni/bin")

    @property
    def ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def registry_dir(self) -> Path:
        return nodehost.node_path(self.root, "/run/egressgateway")

    @property
    def cni_state_dir(self) -> Path:
        """The plugin's per-attachment state (the real host's /var/lib/egressgateway/cni is not ours)."""
        return nodehost.node_path(self.root, "/var/lib/egressgateway/cni")

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"


def containerd_config(paths: NodePaths, in_node_namespace: bool = False) -> str:
    """config.toml (version 2) for a containerd without systemd and without CAP_SYS_RESOURCE; its CNI
    dirs by the paths the node sees (in its mount namespace) or by their host-side paths."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    bin_dir, conf_dir = ("/opt/cni/bin", "/etc/cni/net.d") if in_node_namespace else (paths.cni_bin_dir, paths.cni_conf_dir)
    return f"""version = 2
root = "{paths.containerd_root}"
state = "{paths.containerd_state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{paths.socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{paths.root / 'containerd' / 'opt'}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
"""


def conflist(node: NodePlan, paths: NodePaths, plugin_config: dict[str, Any] | None = None,
             chained: bool = True, main: dict[str, Any] | None = None) -> dict[str, Any]:
    """`main` (default: bridge + host-local, dual stack, masquerading like an overlay CNI), chained with
    egress-cni unless `chained` is false (the DaemonSet's init container appends it)."""
    ours = {"type": PLUGIN_NAME, "registryDir": str(paths.registry_dir), "stateDir": str(paths.cni_state_dir),
            "capabilities": {"io.kubernetes.cri.pod-annotations": True}, **(plugin_config or {})}
    return {"cniVersion": "1.0.0", "name": NETWORK_NAME,
            "plugins": [main or cni.bridge_plugin(node, str(paths.ipam_dir)), *([ours] if chained else [])]}


def write_conflist(paths: NodePaths, conf: dict[str, Any]) -> None:
    target = paths.cni_conf_dir / f"10-{NETWORK_NAME}.conflist"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(conf, indent=2))
    os.replace(tmp, target)  # containerd watches the dir: never a half-written file


def real_plugin() -> Path | None:
    """The project's plugin executable once the CNI work has landed (plugin-bin/egress-cni)."""
    candidate = REPO_ROOT / "plugin-bin" / PLUGIN_NAME
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def prepare_node(node: NodePlan, paths: NodePaths, plugin: str = "auto", plugin_config: dict[str, Any] | None = None,
                 in_node_namespace: bool = False, main: dict[str, Any] | None = None, with_conflist: bool = True) -> str:
    """Write config, conflist and the CNI bin dir; return which egress-cni is chained ("real"/"stub"/"none").

    plugin: "real", "stub", "auto" (real when the checkout has it), or "none" (the chart installs it).
    main: the primary plugin (default bridge); with_conflist false: written later (flannel's subnet).
    """
    if plugin not in ("auto", "real", "stub", "none"):
        raise ValueError(f"plugin={plugin!r}: expected auto, real, stub or none")
    ours = (paths.registry_dir, paths.cni_state_dir) if plugin != "none" else ()  # else the chart's to create
    for directory in (paths.containerd_root, paths.containerd_state, paths.cni_conf_dir, paths.cni_bin_dir,
                      paths.ipam_dir, paths.log_dir, *ours):
        directory.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(containerd_config(paths, in_node_namespace))
    if with_conflist:
        write_conflist(paths, conflist(node, paths, plugin_config, chained=plugin != "none", main=main))
    for debian_plugin in DEBIAN_CNI_DIR.iterdir():
        link = paths.cni_bin_dir / debian_plugin.name
        if not link.exists():
            link.symlink_to(debian_plugin)
    if plugin == "none":
        return "none"
    target = paths.cni_bin_dir / PLUGIN_NAME
    target.unlink(missing_ok=True)
    source = real_plugin() if plugin != "stub" else None
    if plugin == "real" and source is None:
        raise FileNotFoundError(f"plugin=real: {REPO_ROOT / 'plugin-bin' / PLUGIN_NAME} is missing or not executable")
    if source is not None:
        # exec by absolute path: the checkout's launcher finds its venv relative to itself.
        target.write_text(f'#!/bin/sh\nexec "{source}" "$@"\n')
        target.chmod(0o755)
        return "real"
    target.write_text(STUB_PLUGIN)
    target.chmod(0o755)
    return "stub"


def start(node: NodePlan, paths: NodePaths, holder: procs.ProcessRecord | None = None,
          timeout: float = 120.0, network: bool = True) -> procs.ProcessRecord:
    """containerd inside the node netns (and its mount namespace: `holder`); returns once CRI answers
    and (`network`) reports its network ready."""
    argv = ["containerd", "--config", str(paths.config)]
    record = procs.launch(f"containerd-{node.name}", nodehost.enter_argv(holder, argv) if holder else argv,
                          paths.log_dir, netns=node.netns)
    wait_ready(node, paths, record, timeout, network)
    return record


def wait_ready(node: NodePlan, paths: NodePaths, record: procs.ProcessRecord, timeout: float = 120.0,
               network: bool = True) -> None:
    """Until CRI answers and (`network`) containerd reports its network ready (a conflist it can load)."""
    client = CRIClient(str(paths.socket))
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if client.network_ready() or (not network and client.version()):
                    return
            except Exception:  # socket not there yet / still initialising: poll again
                pass
            if not procs.alive(record):
                raise RuntimeError(f"containerd on {node.name} exited; log tail:\n{procs.tail(record)}")
            if time.monotonic() > deadline:
                what = "network not ready" if network else "not answering"
                raise RuntimeError(f"containerd on {node.name}: {what} after {timeout:.0f}s:\n{procs.tail(record)}")
            time.sleep(0.1)
    finally:
        client.close()


def import_images(paths: NodePaths, archives: list[Path]) -> None:
    for archive in archives:
        subprocess.run(["ctr", "--address", str(paths.socket), "-n", "k8s.io", "images", "import", str(archive)],
                       check=True, capture_output=True, timeout=300)


def remove_all_pods(paths: NodePaths) -> int:
    """Stop and remove every pod sandbox (runs CNI DEL, unmounts rootfs and netns); return how many."""
    if not paths.socket.exists():
        return 0
    client = CRIClient(str(paths.socket))
    try:
        sandboxes = client.sandboxes()
        for sandbox in sandboxes:
            client.remove_pod(sandbox.id)
        return len(sandboxes)
    finally:
        client.close()


def leftover_shims(paths: NodePaths) -> list[int]:
    """PIDs of runc shims started by this node's containerd (their argv names its socket)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(paths.socket).encode() in argv:
            pids.append(int(entry.name))
    return pids


def mounts_under(root: Path) -> list[str]:
    """Mount points below `root` (deepest first), as the host mount namespace sees them."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_all(root: Path) -> list[str]:
    points = mounts_under(root)
    for point in points:
        subprocess.run(["umount", "-l", point], capture_output=True)
    return points


def wipe(paths: NodePaths) -> None:
    unmount_all(paths.root)
    shutil.rmtree(paths.root, ignore_errors=True)
