"""Each sandbox node's own mount namespace, as the container of a kind node has one.

containerd, kubelet and kube-proxy of a node run in it, so the host paths a DaemonSet's hostPath
volumes name (`/opt/cni/bin`, `/etc/cni/net.d`, `/run/egressgateway`, ...) are that node's own
directories, as on separate machines. A holder process (`sleep infinity` under
`unshare --mount --propagation slave`) keeps the namespace; before it sleeps it bind-mounts
`<node dir>/host/<path>` over each NODE_LOCAL path, mounts a private tmpfs on /run/netns (the pods'
netns mounts stay inside the node) and shadows the host-global sysctls the kubelet insists on.

The namespace and all its mounts go with its last process: teardown has nothing to unmount. The
host only sees the empty mount points; the ones the sandbox had to create are recorded and removed.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from devtools.sandbox import procs
from devtools.sandbox.plan import NodePlan

NODE_LOCAL_DIRS = ("/opt/cni/bin", "/etc/cni/net.d", "/opt/egressgateway", "/run/egressgateway",
                   "/var/lib/egressgateway", "/var/lib/cni", "/var/log/containers",
                   "/run/flannel")  # flanneld's subnet.env (--cni flannel)
NODE_LOCAL_FILES = ("/run/xtables.lock",)
READY_MARK = ".mounted"
CREATED_RECORD = Path("/run/egressgateway-sandbox-mount-points.json")
SANDBOXES_RECORD = Path("/run/egressgateway-sandboxes.json")  # every sandbox's state dir (any --state-dir)


def host_dir(root: Path) -> Path:
    """Where the node's own copies of NODE_LOCAL_* live (its '/' for those paths)."""
    return root / "host"


def node_path(root: Path, path: str) -> Path:
    """The host-side file behind `path` as the node sees it (e.g. its /etc/cni/net.d)."""
    return host_dir(root) / path.lstrip("/")


def ensure_mount_points() -> list[str]:
    """Create the missing mount points on the host; return what was created, outermost first. They
    are also added to CREATED_RECORD, shared by every sandbox of the machine: sandboxes overlap (a kept
    one, e2e sessions), and whichever is torn down last removes them (`remove_mount_points`)."""
    created: list[str] = []
    for path in (*NODE_LOCAL_DIRS, *NODE_LOCAL_FILES):
        target = Path(path)
        missing = [p for p in (*reversed(target.parents), target) if not p.exists()]
        for item in missing:
            if item == target and path in NODE_LOCAL_FILES:
                item.touch()
            else:
                item.mkdir()
            created.append(str(item))
    if created:
        CREATED_RECORD.write_text(json.dumps([*recorded_mount_points(), *created]))
    return created


def register_sandbox(state_dir: Path) -> None:
    """Record a sandbox's state dir for the teardown of the others: removing a mount point detaches
    every mount on it in every namespace (Linux >= 3.18), so no teardown may while a sandbox lives."""
    dirs = [str(d) for d in registered_sandboxes() if d.exists() and d != state_dir] + [str(state_dir)]
    SANDBOXES_RECORD.write_text(json.dumps(dirs))


def registered_sandboxes() -> list[Path]:
    try:
        return [Path(p) for p in json.loads(SANDBOXES_RECORD.read_text())]
    except (OSError, ValueError, TypeError):
        return []


def recorded_mount_points() -> list[str]:
    try:
        return [str(p) for p in json.loads(CREATED_RECORD.read_text())]
    except (OSError, ValueError, TypeError):
        return []


def remove_mount_points() -> list[str]:
    """Remove every mount point a sandbox created (only when empty, deepest first) and the record;
    call only when no other sandbox runs: its nodes may have mounts on them. What was removed."""
    removed = []
    for created in reversed(recorded_mount_points()):
        path = Path(created)
        with contextlib.suppress(OSError):  # not empty: it gained other users meanwhile
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
            removed.append(created)
    CREATED_RECORD.unlink(missing_ok=True)
    SANDBOXES_RECORD.unlink(missing_ok=True)
    return removed


def setup_script(root: Path, sysctl_overlays: Sequence[tuple[Path, Path]]) -> str:
    # shared within the node: the agent mounts it HostToContainer, so pods' netns mounted later reach it
    binds = ["mount -t tmpfs -o mode=0755 egw-node-netns /run/netns", "mount --make-shared /run/netns"]
    for path in NODE_LOCAL_DIRS:
        source = node_path(root, path)
        source.mkdir(parents=True, exist_ok=True)
        binds.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(path)}")
    for path in NODE_LOCAL_FILES:
        source = node_path(root, path)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.touch()
        binds.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(path)}")
    binds += [f"mount --bind {shlex.quote(str(shadow))} {shlex.quote(str(target))}" for shadow, target in sysctl_overlays]
    mark = shlex.quote(str(host_dir(root) / READY_MARK))
    return " && ".join([*binds, f"touch {mark}", "exec sleep infinity"])


def start_holder(node: NodePlan, root: Path, sysctl_overlays: Sequence[tuple[Path, Path]],
                 timeout: float = 30.0) -> procs.ProcessRecord:
    """The node's mount namespace (in its netns); returns once every mount is in place."""
    (host_dir(root) / READY_MARK).unlink(missing_ok=True)
    argv = ["unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", setup_script(root, sysctl_overlays)]
    record = procs.launch(f"node-{node.name}", argv, root / "logs", netns=node.netns)
    deadline = time.monotonic() + timeout
    while not (host_dir(root) / READY_MARK).exists():
        if not procs.alive(record):
            raise RuntimeError(f"node {node.name}: mount namespace setup failed:\n{procs.tail(record)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"node {node.name}: mount namespace not ready after {timeout:.0f}s:\n{procs.tail(record)}")
        time.sleep(0.02)
    return record


def enter_argv(holder: procs.ProcessRecord, argv: Sequence[str]) -> list[str]:
    """argv run inside the node's mount namespace (combine with the node's netns in procs.launch)."""
    return ["nsenter", f"--mount=/proc/{holder.pid}/ns/mnt", "--", *argv]
