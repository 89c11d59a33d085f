"""What e2e scenarios do on the sandbox: create objects and pods, send from a pod, read what the
external server saw. Every wait polls with a deadline (the machine is a loaded 2-core VM)."""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from devtools.sandbox import netns, nodeops, procs
from devtools.sandbox.cluster import Sandbox

T = TypeVar("T")
EXTERNAL = "10.6.168.63"
EXTERNAL_OTHER = "10.6.168.64"  # a second address of the external server: "some other destination"
GROUP = "egressgateway.spidernet.io/v1beta1"


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 90.0, interval: float = 0.3) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


@dataclass
class Cluster:
    """The e2e view of a running sandbox."""

    sb: Sandbox
    _offset: int = 0
    _records: list[dict[str, Any]] = field(default_factory=list)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:  # noqa: A002
        return self.sb.kubectl(*args, input=input, check=check).stdout

    def apply(self, obj: dict[str, Any]) -> None:
        self.sb.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def get(self, *args: str) -> Any:
        return self.sb.get_or_none(*args)

    def delete(self, *args: str) -> None:
        self.sb.kubectl("delete", "--ignore-not-found", "--wait=false", *args, check=False)

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.sb.plan.nodes]

    def node_ip(self, name: str) -> str:
        return self.sb.plan.node(name).endpoint.ipv4

    def unsteered_source(self, namespace: str, pod: str, dst: str = EXTERNAL) -> str:
        """The source the external server sees for a pod's traffic no policy steers: its node's address
        (bridge, flannel, and macvlan to EXTERNAL: hijackCIDR routes it via the host, which masquerades
        it), else on macvlan its own (the pod is on the underlay itself)."""
        obj = self.get("pod", pod, "-n", namespace) or {}
        if self.sb.plan.underlay_pods and dst != EXTERNAL:
            return str(obj.get("status", {}).get("podIP", ""))
        return self.node_ip(str(obj.get("spec", {}).get("nodeName", "")))

    # --- objects ------------------------------------------------------------------------------------

    def gateway(self, name: str, pool: list[str], nodes: list[str]) -> None:
        """An EgressGateway selecting `nodes` by a label unique to this gateway."""
        label = f"e2e-gw-{name}"
        for node in self.node_names:
            value = "true" if node in nodes else None
            self.sb.kubectl("label", "node", node, f"{label}-" if value is None else f"{label}={value}", "--overwrite",
                            check=False)
        self.apply({"apiVersion": GROUP, "kind": "EgressGateway", "metadata": {"name": name},
                    "spec": {"ippools": {"ipv4": pool}, "nodeSelector": {"selector": {"matchLabels": {label: "true"}}}}})

    def move_gateway(self, name: str, nodes: list[str]) -> None:
        label = f"e2e-gw-{name}"
        for node in self.node_names:
            self.sb.kubectl("label", "node", node, f"{label}=true" if node in nodes else f"{label}-", "--overwrite",
                            check=False)

    def policy(self, namespace: str, name: str, gateway: str, labels: dict[str, str], **spec: Any) -> None:
        body = {"egressGatewayName": gateway, "appliedTo": {"podSelector": {"matchLabels": labels}}, **spec}
        self.apply({"apiVersion": GROUP, "kind": "EgressPolicy", "metadata": {"name": name, "namespace": namespace},
                    "spec": body})

    def policy_status(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self.get("egresspolicy", name, "-n", namespace) or {}
        return dict(obj.get("status") or {})

    def wait_policy(self, namespace: str, name: str, node: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            status = self.policy_status(namespace, name)
            placed = bool(status.get("node")) and (node is None or status.get("node") == node)
            return status if placed else None

        return wait_for(ready, f"policy {namespace}/{name} placed{f' on {node}' if node else ''}", timeout)

    # --- pods ---------------------------------------------------------------------------------------

    def pod(self, namespace: str, name: str, labels: dict[str, str], node: str | None = None,
            command: str = "sleep 36000") -> None:
        spec: dict[str, Any] = {"containers": [{"name": "app", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                                                "command": ["sh", "-c", command]}],
                                "terminationGracePeriodSeconds": 0}
        if node:
            spec["nodeName"] = node
        self.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
                    "spec": spec})

    def wait_running(self, namespace: str, name: str, timeout: float = 120.0) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            pod = self.get("pod", name, "-n", namespace)
            return pod if pod and pod.get("status", {}).get("phase") == "Running" and pod["status"].get("podIP") else None

        return wait_for(running, f"pod {namespace}/{name} Running", timeout)

    def source_ip(self, namespace: str, pod: str, dst: str = EXTERNAL, timeout: int = 5) -> str:
        """The source address the external server saw for one HTTP GET from `pod` ('' when it failed)."""
        tag = uuid.uuid4().hex[:12]
        self.sb.kubectl("exec", "-n", namespace, pod, "--", "timeout", str(timeout), "wget", "-qO-",
                        f"http://{dst}:8080/{tag}", check=False, timeout=timeout + 60)
        sources = [r["src"] for r in self.records() if r.get("tag") == f"/{tag}"]
        return sources[-1] if sources else ""

    def wait_source(self, namespace: str, pod: str, expected: str, dst: str = EXTERNAL, timeout: float = 60.0) -> str:
        def matches() -> str | None:
            source = self.source_ip(namespace, pod, dst, timeout=3)
            return source if source == expected else None

        return wait_for(matches, f"{namespace}/{pod} -> {dst} leaves as {expected}", timeout, interval=0.2)

    def records(self) -> list[dict[str, Any]]:
        """Everything the external server recorded so far (the file only grows: read the new part)."""
        path = self.sb.work_dir / "extserver.jsonl"
        if not path.exists():
            return []
        with path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        self._records.extend(json.loads(line) for line in complete.splitlines() if line.strip())
        return self._records

    # --- nodes ---------------------------------------------------------------------------------------

    def power_off(self, name: str) -> None:
        nodeops.power_off(self.sb, name)

    def power_on(self, name: str) -> None:
        nodeops.power_on(self.sb, name)


def namespaces(cluster: Cluster) -> Generator[str, None, None]:
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    try:
        yield name
    finally:
        cluster.delete("namespace", name)


# --- high availability (e2e/test_ha.py): everything here works while the API server is frozen ------------

def process_record(sb: Sandbox, name: str) -> procs.ProcessRecord:
    for record in sb.state.processes:
        if record.name == name:
            return record
    raise KeyError(f"no process {name!r} in the sandbox state")


@contextmanager
def apiserver_frozen(sb: Sandbox) -> Iterator[float]:
    """kube-apiserver SIGSTOPped (by its recorded PID) for the block, SIGCONTed whatever happens;
    yields the moment it stopped (time.time())."""
    record = process_record(sb, "kube-apiserver")
    if not procs.alive(record):
        raise AssertionError("kube-apiserver is not running")
    os.kill(record.pid, signal.SIGSTOP)
    try:
        yield time.time()
    finally:
        os.kill(record.pid, signal.SIGCONT)


def agent_record(sb: Sandbox, node: str) -> procs.ProcessRecord:
    """The node's running agent container process (found through its containerd, not the API)."""
    record = nodeops.agent_process(sb, node)
    if record is None:
        raise AssertionError(f"no running agent container on {node}")
    return record


def kill_agent(sb: Sandbox, node: str, signum: int = signal.SIGKILL, timeout: float = 10.0) -> float:
    """Send `signum` to the node's agent and wait until it is gone; returns when the signal was sent."""
    record = agent_record(sb, node)
    sent = time.time()
    os.kill(record.pid, signum)
    deadline = time.monotonic() + timeout
    while procs.alive(record):
        if time.monotonic() > deadline:
            raise AssertionError(f"agent on {node} still alive {timeout:.0f}s after signal {signum}")
        time.sleep(0.01)
    return sent


def start_agent(sb: Sandbox, node: str, previous: procs.ProcessRecord | None = None) -> procs.ProcessRecord:
    """The node's agent running again: the kubelet restarts the container (restartPolicy Always)."""
    return nodeops.wait_agent_process(sb, node, not_pid=previous.pid if previous else 0)


def agent_ready(sb: Sandbox, node: str) -> bool:
    """The agent's own /readyz, read inside the node's netns (no API involved)."""
    return sb.agent_ready(sb.plan.node(node))


def node_addresses(sb: Sandbox, node: str) -> set[str]:
    """Every address on every link of the node's netns (`ip -o addr`), without prefix lengths."""
    out = netns.run(["ip", "-n", sb.plan.node(node).netns, "-o", "addr", "show"], check=False).stdout
    found = set()
    for line in out.splitlines():
        words = line.split()
        if len(words) > 3 and words[2] in ("inet", "inet6"):
            found.add(words[3].split("/")[0])
    return found


def pod_netns_path(cluster: Cluster, namespace: str, pod: str) -> str:
    """/proc/<pid>/ns/net of the pod's container, found through its node's containerd (ctr task ls)."""
    obj = cluster.get("pod", pod, "-n", namespace) or {}
    node = obj.get("spec", {}).get("nodeName", "")
    ids = [str(s.get("containerID", "")).removeprefix("containerd://") for s in obj.get("status", {}).get("containerStatuses", [])]
    socket_path = cluster.sb.node_paths(node).socket
    out = subprocess.run(["ctr", "--address", str(socket_path), "-n", "k8s.io", "task", "ls"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines()[1:]:
        words = line.split()
        if len(words) >= 3 and words[0] in ids and words[2] == "RUNNING":
            return f"/proc/{words[1]}/ns/net"
    raise AssertionError(f"no running task of {namespace}/{pod} on {node} (containers {ids}; ctr: {out!r})")


def peer_path_blocked(sb: Sandbox, a: str, b: str, port: int = 7790, block: bool = True) -> list[int]:
    """Drop UDP `port` between nodes a and b (iptables INPUT and OUTPUT in both netns; their underlay
    stays up) or remove those rules again; returns the packets the rules have dropped so far."""
    dropped = []
    for node, peer in ((a, b), (b, a)):
        peer_ip = sb.plan.node(peer).endpoint.ipv4
        ns = sb.plan.node(node).netns
        for chain, match in (("INPUT", ["-s", peer_ip]), ("OUTPUT", ["-d", peer_ip])):
            rule = [chain, *match, "-p", "udp", "--dport", str(port), "-j", "DROP"]
            if block:
                netns.run(netns.in_netns_argv(ns, ["iptables", "-w", "-I", *rule]))
            else:
                dropped.append(_dropped(ns, chain, peer_ip, port))
                netns.run(netns.in_netns_argv(ns, ["iptables", "-w", "-D", *rule]), check=False)
    return dropped


def _dropped(ns: str, chain: str, peer_ip: str, port: int) -> int:
    out = netns.run(netns.in_netns_argv(ns, ["iptables", "-w", "-nvxL", chain]), check=False).stdout
    for line in out.splitlines():
        if "DROP" in line and peer_ip in line and f"dpt:{port}" in line:
            return int(line.split()[0])
    return 0


def _enter_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if netns._libc.setns(fd, netns.CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({path})")
    finally:
        os.close(fd)


@dataclass
class Probe:
    sent: float
    replied: float | None = None
    source: str = ""

    def ok(self, eip: str) -> bool:
        return self.replied is not None and self.source == eip


class _Background:
    """A sampling thread run for the length of a `with` block; subclasses fill `_run`."""

    name = "sampler"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        raise NotImplementedError


class Prober(_Background):
    """UDP probes to the external echo server from inside a pod's netns (no kubectl, no API): one new
    socket per probe (a new conntrack entry each time), sent every `interval`, each waiting up to
    `timeout` for the echo, which names the source address the server saw."""

    name = "prober"

    def __init__(self, netns_path: str, dst: str = EXTERNAL, port: int = 8082, interval: float = 0.2,
                 timeout: float = 1.0) -> None:
        super().__init__()
        self.netns_path, self.dst, self.port = netns_path, dst, port
        self.interval, self.timeout = interval, timeout
        self.probes: list[Probe] = []

    def snapshot(self, since: float = 0.0) -> list[Probe]:
        now = time.time()
        with self._lock:  # only probes whose outcome is decided
            return [p for p in self.probes if p.sent >= since and (p.replied is not None or now - p.sent > self.timeout)]

    def _run(self) -> None:
        _enter_path(self.netns_path)
        pending: dict[socket.socket, Probe] = {}
        next_at = time.monotonic()
        while not self._stop.is_set() or pending:
            now = time.monotonic()
            if now >= next_at and not self._stop.is_set():
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setblocking(False)
                probe = Probe(sent=time.time())
                try:
                    sock.sendto(f"ha-{uuid.uuid4().hex[:8]}\n".encode(), (self.dst, self.port))
                except OSError:
                    sock.close()
                else:
                    pending[sock] = probe
                with self._lock:
                    self.probes.append(probe)
                next_at += self.interval
                if next_at < now:  # the machine stalled: do not burst to catch up
                    next_at = now + self.interval
            wait = max(0.0, min(next_at - time.monotonic(), 0.05))
            readable, _, _ = select.select(list(pending), [], [], wait) if pending else ([], [], [])
            if not pending:
                time.sleep(wait)
            for sock in readable:
                try:
                    data = sock.recv(512)
                except OSError:
                    continue
                probe = pending.pop(sock)
                probe.source, probe.replied = data.split(b"\n", 1)[0].decode(errors="replace"), time.time()
                sock.close()
            for sock, probe in list(pending.items()):
                if time.time() - probe.sent > self.timeout:
                    del pending[sock]
                    sock.close()


class HolderSampler(_Background):
    """Which nodes hold `eip` (any link, `ip -o addr` in each node's netns), every `interval`."""

    name = "holders"

    def __init__(self, sb: Sandbox, eip: str, nodes: list[str], interval: float = 0.1) -> None:
        super().__init__()
        self.sb, self.eip, self.nodes, self.interval = sb, eip, nodes, interval
        self.samples: list[tuple[float, frozenset[str]]] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            holders = frozenset(n for n in self.nodes if self.eip in node_addresses(self.sb, n))
            with self._lock:
                self.samples.append((time.time(), holders))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def snapshot(self, since: float = 0.0) -> list[tuple[float, frozenset[str]]]:
        with self._lock:
            return [s for s in self.samples if s[0] >= since]

    def current(self) -> frozenset[str] | None:
        with self._lock:
            return self.samples[-1][1] if self.samples else None


def moves(samples: list[tuple[float, frozenset[str]]]) -> int:
    """How often the EIP's single holder changed to another node."""
    count, last = 0, None
    for _, holders in samples:
        if len(holders) == 1:
            (node,) = holders
            if last is not None and node != last:
                count += 1
            last = node
    return count


def _longest(samples: list[tuple[float, frozenset[str]]], held: Callable[[frozenset[str]], bool]) -> float:
    """The longest time `held(holders)` was true (first sample with it to first sample without)."""
    longest, since = 0.0, None
    for at, holders in samples:
        if held(holders) and since is None:
            since = at
        elif not held(holders) and since is not None:
            longest, since = max(longest, at - since), None
    if since is not None and samples:
        longest = max(longest, samples[-1][0] - since)
    return longest


def longest_double(samples: list[tuple[float, frozenset[str]]]) -> float:
    """The longest time two or more nodes held the EIP together."""
    return _longest(samples, lambda holders: len(holders) > 1)


def longest_unheld(samples: list[tuple[float, frozenset[str]]]) -> float:
    """The longest time no node held the EIP."""
    return _longest(samples, lambda holders: not holders)


def longest_outage(probes: list[Probe], eip: str) -> float:
    """The longest time without egress: between the sends of two good probes that have only failed
    ones (no reply, or another source) between them; 0 when none failed. A single lost probe at an
    interval of 0.2 s reads as 0.4 s (the resolution is one interval)."""
    longest, last_good, failed = 0.0, None, False
    for probe in probes:
        if not probe.ok(eip):
            failed = True
            continue
        if failed and last_good is not None:
            longest = max(longest, probe.sent - last_good)
        last_good, failed = probe.sent, False
    if failed:  # never recovered within the window
        return float("inf")
    return longest


def link_mac(netns_name: str, device: str = "eth0") -> bytes:
    """The link's MAC as `ip` reports it (sysfs would show the host's links under nsenter --net)."""
    words = netns.run(["ip", "-n", netns_name, "-o", "link", "show", "dev", device]).stdout.split()
    return bytes.fromhex(words[words.index("link/ether") + 1].replace(":", ""))


class ArpSampler(_Background):
    """Who answers ARP for `ip` on the underlay, asked from the external server's netns every
    `interval`: the set of node names whose MAC sent a reply within `window`."""

    name = "arp"

    def __init__(self, sb: Sandbox, ip: str, interval: float = 0.1, window: float = 0.08) -> None:
        self.ip, self.interval, self.window = ip, interval, window
        self.ext = sb.plan.external
        self.mac = link_mac(self.ext.netns, self.ext.device)
        self.nodes = {link_mac(n.netns, n.endpoint.device): n.name for n in sb.plan.nodes}
        self.samples: list[tuple[float, frozenset[str]]] = []
        super().__init__()

    def _run(self) -> None:
        from egress_cni.dataplane.announce import ARP_REQUEST, ETH_P_ARP, arp_frame

        _enter_path(str(netns.netns_path(self.ext.netns)))
        target = socket.inet_aton(self.ip)
        request = arp_frame(self.mac, socket.inet_aton(self.ext.ipv4), target, ARP_REQUEST)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
            s.bind((self.ext.device, ETH_P_ARP))
            while not self._stop.is_set():
                sent = time.time()
                s.send(request)
                answered: set[str] = set()
                deadline = time.monotonic() + self.window
                while (left := deadline - time.monotonic()) > 0:
                    if not select.select([s], [], [], left)[0]:
                        break
                    data = s.recv(2048)
                    arp = data[14:42]
                    if len(arp) == 28 and arp[6:8] == b"\x00\x02" and arp[14:18] == target:
                        answered.add(self.nodes.get(arp[8:14], arp[8:14].hex(":")))
                self.samples.append((sent, frozenset(answered)))
                self._stop.wait(max(0.0, self.interval - (time.time() - sent)))

    def snapshot(self, since: float = 0.0) -> list[tuple[float, frozenset[str]]]:
        return [s for s in list(self.samples) if s[0] >= since]


def neighbour_of(sb: Sandbox, ip: str) -> str:
    """The external server's neighbour entry for `ip`: the MAC it sends to, and the entry's state."""
    words = netns.run(["ip", "-n", sb.plan.external.netns, "neigh", "show", ip], check=False).stdout.split()
    mac = words[words.index("lladdr") + 1] if "lladdr" in words else "none"
    return f"{mac} {words[-1] if words else ''}".strip()
