"""The cgroup v1 trees of a sandbox node: kubelet's cgroupRoot and containerd's pod cgroups live there.

Teardown kills what is left in the tree (only processes of this node's pods can be there) and
removes the directories bottom-up, so the host's cgroup hierarchy is as before.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from devtools.sandbox.plan import NodePlan

CGROUP_FS = Path("/sys/fs/cgroup")


def node_root(node: NodePlan) -> str:
    return f"/{node.netns}"


def hierarchies() -> list[Path]:
    """Mounted cgroup v1 hierarchies (cpu, memory, ..., name=systemd)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        if fields[separator + 1] == "cgroup" and fields[4].startswith(f"{CGROUP_FS}/"):
            found.append(Path(fields[4]))
    return found


def create(root: str) -> None:
    """mkdir `root` in every hierarchy (kubelet refuses a cgroupRoot missing in any of them)."""
    for hierarchy in hierarchies():
        directory = hierarchy / root.lstrip("/")
        directory.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):  # a new cpuset is empty: inherit the parent's
            if (directory / knob).exists() and not (directory / knob).read_text().strip():
                (directory / knob).write_text((hierarchy / knob).read_text())


def _trees(root: str) -> list[Path]:
    return [top for hierarchy in hierarchies() if (top := hierarchy / root.lstrip("/")).is_dir()]


def pids(root: str) -> set[int]:
    found: set[int] = set()
    for top in _trees(root):
        for procs_file in top.rglob("cgroup.procs"):
            try:
                found.update(int(p) for p in procs_file.read_text().split())
            except OSError:
                continue
    return found


def kill_all(root: str, timeout: float = 10.0) -> int:
    """SIGKILL every process still in the tree (pod processes whose runtime is gone); return how many."""
    victims = pids(root)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pids(root) and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(victims)


def remove(root: str) -> list[str]:
    """rmdir the tree bottom-up in every hierarchy; return directories that could not be removed."""
    stuck = []
    for top in _trees(root):
        for directory in sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
            try:
                directory.rmdir()
            except OSError:
                stuck.append(str(directory))
        try:
            top.rmdir()
        except OSError:
            stuck.append(str(top))
    return stuck
