"""Node failures for demos and resilience tests, and the agent container of a node, found without
the API (the tests use these while kube-apiserver is frozen).

A node 'loses power' for the data path: its underlay link goes down, its kubelet stops (SIGSTOP:
nothing restarts what died) and its agent dies (SIGKILL), so its Lease expires. It comes back with
its link, addresses and routes, and its kubelet, which restarts the agent container.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from devtools.sandbox import components, netns, procs
from devtools.sandbox.cluster import Sandbox


def agent_process(sb: Sandbox, name: str) -> procs.ProcessRecord | None:
    """The running agent container's process on node `name`, asked of the node's containerd."""
    base = ["ctr", "--address", str(sb.node_paths(name).socket), "-n", "k8s.io"]
    selector = (f'labels."io.kubernetes.container.name"=={components.AGENT_CONTAINER},'
                f'labels."io.kubernetes.pod.namespace"=={components.NAMESPACE}')
    ids = set(subprocess.run([*base, "containers", "ls", "-q", selector], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split())
    tasks = subprocess.run([*base, "task", "ls"], capture_output=True, text=True, check=True, timeout=30).stdout
    for line in tasks.splitlines()[1:]:
        words = line.split()
        if len(words) >= 3 and words[0] in ids and words[2] == "RUNNING":
            pid = int(words[1])
            if (ticks := procs.start_ticks(pid)) is not None:
                return procs.ProcessRecord(f"egress-agent-{name}", pid, ticks, "", netns=sb.plan.node(name).netns)
    return None


def wait_agent_process(sb: Sandbox, name: str, not_pid: int = 0, timeout: float = 60.0) -> procs.ProcessRecord:
    """The node's running agent process once it is not `not_pid` (the kubelet restarted it)."""
    deadline = time.monotonic() + timeout
    while True:
        record = agent_process(sb, name)
        if record is not None and record.pid != not_pid:
            return record
        if time.monotonic() > deadline:
            raise RuntimeError(f"no running agent container on {name} after {timeout:.0f}s (previous pid {not_pid})")
        time.sleep(0.1)


def kubelet_record(sb: Sandbox, name: str) -> procs.ProcessRecord:
    return next(p for p in sb.state.processes if p.name == f"kubelet-{name}")


def power_off(sb: Sandbox, name: str) -> None:
    node = sb.plan.node(name)
    netns.run(["ip", "-n", node.netns, "link", "set", node.endpoint.device, "down"])
    os.kill(kubelet_record(sb, name).pid, signal.SIGSTOP)
    if (agent := agent_process(sb, name)) is not None:
        os.kill(agent.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while procs.alive(agent) and time.monotonic() < deadline:
            time.sleep(0.01)


def power_on(sb: Sandbox, name: str) -> None:
    node = sb.plan.node(name)
    netns.run(["ip", "-n", node.netns, "link", "set", node.endpoint.device, "up"])
    netns.apply_topology(sb.plan)  # link down dropped its IPv6 address and routes: converge again
    os.kill(kubelet_record(sb, name).pid, signal.SIGCONT)
