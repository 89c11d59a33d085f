"""What a running sandbox consists of, saved after every step so `--down` (another process, maybe
after a crash) stops exactly those processes and removes exactly those namespaces and mounts."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.sandbox.procs import ProcessRecord

STATE_FILE = "state.json"


@dataclass
class SandboxState:
    work_dir: Path
    netns: list[str] = field(default_factory=list)
    node_dirs: list[str] = field(default_factory=list)
    cgroup_roots: list[str] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    kubeconfig: str = ""
    control_plane_netns: str = ""
    created_dirs: list[str] = field(default_factory=list)  # host dirs that did not exist before the sandbox
    plan_args: dict[str, Any] = field(default_factory=dict)  # build_plan's arguments: another process rebuilds the plan
    owner: ProcessRecord | None = None  # the process that brought it up (a test session): stale once it is gone

    @property
    def path(self) -> Path:
        return self.work_dir / STATE_FILE

    def add_process(self, record: ProcessRecord) -> ProcessRecord:
        self.processes.append(record)
        self.save()
        return record

    def save(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        raw: dict[str, Any] = {
            "netns": self.netns, "node_dirs": self.node_dirs, "cgroup_roots": self.cgroup_roots,
            "processes": [p.to_dict() for p in self.processes], "kubeconfig": self.kubeconfig,
            "control_plane_netns": self.control_plane_netns, "created_dirs": self.created_dirs,
            "plan_args": self.plan_args, "owner": self.owner.to_dict() if self.owner else None,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(raw, indent=2))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, work_dir: Path) -> SandboxState | None:
        try:
            raw = json.loads((work_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        return cls(work_dir, list(raw["netns"]), list(raw["node_dirs"]), list(raw["cgroup_roots"]),
                   [ProcessRecord.from_dict(p) for p in raw["processes"]], str(raw["kubeconfig"]),
                   str(raw["control_plane_netns"]), list(raw.get("created_dirs", [])), dict(raw.get("plan_args", {})),
                   ProcessRecord.from_dict(raw["owner"]) if raw.get("owner") else None)
