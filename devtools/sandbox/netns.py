"""Create and remove the sandbox's network namespaces; run Python code inside one of them.

Only namespaces named in the plan are touched, always with `ip -n <ns>` (never the host namespace),
and teardown removes them by name. Every step checks before it acts, so `apply_topology` can run on
a half-built sandbox and converge.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from devtools.sandbox.plan import Endpoint, SandboxPlan, prefix_len_v4, prefix_len_v6

T = TypeVar("T")
NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class CommandError(RuntimeError):
    """An `ip`/`sysctl` command failed; the message carries the command and its stderr."""


def run(argv: Sequence[str], check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise CommandError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def existing_netns() -> set[str]:
    return {line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()}


def in_netns_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """Prefix that starts `argv` in `netns` only: unlike `ip netns exec`, nsenter keeps the host's
    mount namespace, so containerd's overlay and netns bind mounts stay visible to everyone."""
    return ["nsenter", f"--net={netns_path(netns)}", "--", *argv]


def _link_exists(netns: str, device: str) -> bool:
    return run(["ip", "-n", netns, "link", "show", "dev", device], check=False).returncode == 0


def _sysctl(netns: str, key: str, value: str) -> None:
    run(in_netns_argv(netns, ["sysctl", "-q", "-w", f"{key}={value}"]))


def _attach(plan: SandboxPlan, endpoint: Endpoint) -> None:
    """veth `endpoint.host_veth` (underlay, on the bridge) <-> eth0 (in the endpoint's netns)."""
    under, ns = plan.underlay_netns, endpoint.netns
    if not _link_exists(under, endpoint.host_veth):
        if _link_exists(ns, endpoint.device):  # half of an interrupted earlier attempt
            run(["ip", "-n", ns, "link", "del", endpoint.device])
        run(["ip", "-n", under, "link", "add", endpoint.host_veth, "type", "veth",
             "peer", "name", endpoint.device, "netns", ns])
    run(["ip", "-n", under, "link", "set", endpoint.host_veth, "master", plan.bridge, "up"])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    _sysctl(ns, f"net.ipv6.conf.{endpoint.device}.accept_dad", "0")
    run(["ip", "-n", ns, "addr", "replace", f"{endpoint.ipv4}/{prefix_len_v4()}", "dev", endpoint.device])
    run(["ip", "-n", ns, "addr", "replace", f"{endpoint.ipv6}/{prefix_len_v6()}", "dev", endpoint.device, "nodad"])
    run(["ip", "-n", ns, "link", "set", endpoint.device, "up"])
    run(["ip", "-n", ns, "route", "replace", "default", "via", plan.router_v4, "dev", endpoint.device])
    run(["ip", "-n", ns, "-6", "route", "replace", "default", "via", plan.router_v6, "dev", endpoint.device])


def apply_topology(plan: SandboxPlan) -> None:
    """Converge the namespaces, bridge, veths, addresses and routes to `plan`."""
    present = existing_netns()
    for name in plan.netns_names:
        if name not in present:
            run(["ip", "netns", "add", name])
    under = plan.underlay_netns
    run(["ip", "-n", under, "link", "set", "lo", "up"])
    if not _link_exists(under, plan.bridge):
        run(["ip", "-n", under, "link", "add", plan.bridge, "type", "bridge"])
    _sysctl(under, f"net.ipv6.conf.{plan.bridge}.accept_dad", "0")
    run(["ip", "-n", under, "addr", "replace", f"{plan.router_v4}/{prefix_len_v4()}", "dev", plan.bridge])
    run(["ip", "-n", under, "addr", "replace", f"{plan.router_v6}/{prefix_len_v6()}", "dev", plan.bridge, "nodad"])
    run(["ip", "-n", under, "link", "set", plan.bridge, "up"])
    for endpoint in plan.endpoints:
        _attach(plan, endpoint)
    for node in plan.nodes:
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            _sysctl(node.netns, key, "1")
    # Pods of a node: routed to it from the other nodes (bridge: host-gw style, as calico BGP would;
    # flannel routes them itself) and from the control plane (kube-apiserver dials the webhook's pod).
    # Underlay pods (macvlan) are on-link: nobody routes them.
    for node in [] if plan.underlay_pods else plan.nodes:
        peers = [n.netns for n in plan.nodes if n is not node] if plan.cni == "bridge" else []
        for ns in (plan.control_plane.netns, *peers):
            run(["ip", "-n", ns, "route", "replace", node.pod_cidr_v4, "via", node.endpoint.ipv4])
            run(["ip", "-n", ns, "-6", "route", "replace", node.pod_cidr_v6, "via", node.endpoint.ipv6])


def remove_topology(names: Sequence[str]) -> list[str]:
    """Delete the named namespaces that exist (their veths go with them); return what was removed."""
    present = existing_netns()
    removed = []
    for name in names:
        if name in present:
            run(["ip", "netns", "del", name])
            removed.append(name)
    return removed


def _enter(netns: str) -> None:
    fd = os.open(netns_path(netns), os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({netns_path(netns)}): {os.strerror(errno)}")
    finally:
        os.close(fd)


class NetnsWorker:
    """One thread that lives in `netns`: sockets it opens and processes it spawns are in that netns.

    setns(CLONE_NEWNET) changes only the calling thread, and a fork/vfork copies the calling
    thread's namespaces, so code submitted here (e.g. the control-plane harness, which binds to
    127.0.0.1 and probes it) runs unchanged inside the namespace.
    """

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._pool = concurrent.futures.ThreadPoolExecutor(1, f"netns-{netns}", initializer=_enter, initargs=(netns,))

    def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False)
