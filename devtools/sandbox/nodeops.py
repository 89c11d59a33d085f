"""Node failures for demos and resilience tests: a node 'loses power' for the data path (its underlay
link goes down and its agent stops, so its Lease expires) and comes back (link, addresses, agent)."""

from __future__ import annotations

from pathlib import Path

from devtools.sandbox import netns, procs
from devtools.sandbox.cluster import Sandbox


def power_off(sb: Sandbox, name: str) -> None:
    node = sb.plan.node(name)
    netns.run(["ip", "-n", node.netns, "link", "set", node.endpoint.device, "down"])
    for record in sb.state.processes:
        if record.name == f"egress-agent-{name}":
            procs.stop(record, timeout=5)


def power_on(sb: Sandbox, name: str) -> None:
    node = sb.plan.node(name)
    netns.run(["ip", "-n", node.netns, "link", "set", node.endpoint.device, "up"])
    netns.apply_topology(sb.plan)  # link down dropped its IPv6 address and routes: converge again
    for index, record in enumerate(sb.state.processes):
        if record.name == f"egress-agent-{name}" and not procs.alive(record) and record.argv:
            sb.state.processes[index] = procs.launch(record.name, record.argv, Path(record.log_path).parent,
                                                     netns=record.netns or node.netns)
            sb.state.save()
