"""A three-node cluster built from network namespaces, with the agent running in each node.

    underlay netns (bridge br0) ── node1/node2/node3 (eth0 10.100.0.N, fd00:100::N) ── ext (10.100.0.100/.101)
    each node: pods behind veths (10.244.N.K, fd00:244:N::K), routes to the other nodes' pod CIDRs
    (what a CNI would set up) and MASQUERADE for pod -> outside (so unselected pods leave as the node IP).

The "controller" is the YAML directory every agent reads: tests change a policy's status.node by
rewriting policies.yaml. Everything is removed by name at teardown; processes are stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
ECHO = str(Path(__file__).resolve().parent / "echo.py")
PORT = 8080
EIP4, EIP6 = "10.100.0.200", "fd00:100::200"
EXT4, EXT4_OTHER, EXT6 = "10.100.0.100", "10.100.0.101", "fd00:100::100"
API = "egressgateway.spidernet.io/v1beta1"


def sh(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002
    proc = subprocess.run(list(cmd), capture_output=True, text=True, input=input, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.returncode} {proc.stderr.strip()}")
    return proc


@contextmanager
def scratch_netns(tag: str) -> Iterator[str]:
    """A network namespace of the test's own (`egwt-<random>-<tag>`), deleted by name afterwards."""
    name = f"egwt-{uuid.uuid4().hex[:6]}-{tag}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def parent_mac(n: int) -> str:
    """node n's eth0 MAC (set at build): the agent's report in its EgressTunnel (status.tunnel.parent.mac)."""
    return f"02:00:00:00:00:0{n}"


def tunnel(n: int, dual: bool) -> dict[str, Any]:
    parent = {"name": "eth0", "ipv4": f"10.100.0.{n}", "mac": parent_mac(n), **({"ipv6": f"fd00:100::{n}"} if dual else {})}
    t = {"ipv4": f"172.31.0.{n}", "mac": f"66:00:00:00:00:0{n}", "parent": parent}
    if dual:
        t["ipv6"] = f"fd11::{n}"
    return {"apiVersion": API, "kind": "EgressTunnel", "metadata": {"name": f"node{n}"},
            "status": {"tunnel": t, "mark": f"0x2600000{n}", "phase": "Ready"}}


class Topology:
    def __init__(self, dual: bool = False, pods: dict[int, list[str]] | None = None) -> None:
        self.id = uuid.uuid4().hex[:6]
        self.dual = dual
        self.pods = pods or {1: ["a", "b"], 2: ["a"], 3: ["a", "b"]}
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []
        self.agents: dict[int, subprocess.Popen[str]] = {}
        self.dir = Path(tempfile.mkdtemp(prefix=f"egwt-{self.id}-"))
        self.inputs = self.dir / "inputs"
        self.inputs.mkdir()
        self.resync_seconds = 1.0  # agents' full resync; tests of the drift check raise it out of their way
        self.agent_extra: list[str] = []  # more flags for every agent (e.g. --drift-seconds)
        self.engine = "auto"  # --iptables-backend: auto (nftables where nft works), nftables, nft, legacy
        self.vxlan_mode = "Always"  # --vxlan-mode: Always, CrossSubnet (every node here is on-link), Never

    # --- names ----------------------------------------------------------------------------------

    def ns(self, what: str) -> str:
        return f"egwt-{self.id}-{what}"

    def node(self, n: int) -> str:
        return self.ns(f"n{n}")

    def pod(self, n: int, p: str) -> str:
        return self.ns(f"p{n}{p}")

    def pod_ip(self, n: int, p: str, family: int = 4) -> str:
        k = 10 + ord(p) - ord("a")
        return f"10.244.{n}.{k}" if family == 4 else f"fd00:244:{n}::{k}"

    def exec_in(self, ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *cmd, check=check)

    # --- build ----------------------------------------------------------------------------------

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def build(self) -> Topology:
        ul = self.ns("ul")
        self._add_ns(ul)
        sh("ip", "-n", ul, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ul, "link", "set", "br0", "up")
        # the underlay is a switch: bridged frames do not go through iptables (br_netfilter, if loaded)
        for key in ("net.bridge.bridge-nf-call-iptables=0", "net.bridge.bridge-nf-call-ip6tables=0"):
            self.exec_in(ul, "sysctl", "-qw", key, check=False)
        members = [(f"n{n}", self.node(n), f"10.100.0.{n}", f"fd00:100::{n}") for n in (1, 2, 3)]
        members.append(("ext", self.ns("ext"), EXT4, EXT6))
        for short, name, ip4, ip6 in members:
            self._add_ns(name)
            mac = ["address", parent_mac(int(short[1:]))] if short != "ext" else []
            sh("ip", "-n", name, "link", "add", "eth0", *mac, "type", "veth", "peer", "name", f"u-{short}", "netns", ul)
            sh("ip", "-n", ul, "link", "set", f"u-{short}", "master", "br0", "up")
            sh("ip", "-n", name, "addr", "add", f"{ip4}/24", "dev", "eth0")
            if self.dual:
                sh("ip", "-n", name, "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
            sh("ip", "-n", name, "link", "set", "eth0", "up")
        ext = self.ns("ext")
        sh("ip", "-n", ext, "addr", "add", f"{EXT4_OTHER}/24", "dev", "eth0")
        for n in (1, 2, 3):
            self._build_node(n)
        server = subprocess.Popen(["ip", "netns", "exec", ext, PYTHON, ECHO, str(PORT)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.procs.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        self.write_inputs()
        return self

    def _build_node(self, n: int) -> None:
        node = self.node(n)
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            self.exec_in(node, "sysctl", "-qw", key)
        for p in self.pods.get(n, []):
            pod = self.pod(n, p)
            self._add_ns(pod)
            host = f"v{n}{p}"
            sh("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", host, "netns", node)
            sh("ip", "-n", node, "link", "set", host, "up")
            sh("ip", "-n", pod, "link", "set", "eth0", "up")
            sh("ip", "-n", pod, "addr", "add", f"{self.pod_ip(n, p)}/32", "dev", "eth0")
            sh("ip", "-n", pod, "route", "add", "169.254.1.1", "dev", "eth0")
            sh("ip", "-n", pod, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
            sh("ip", "-n", node, "addr", "add", "169.254.1.1/32", "dev", host)
            sh("ip", "-n", node, "route", "add", f"{self.pod_ip(n, p)}/32", "dev", host)
            if self.dual:
                sh("ip", "-n", pod, "addr", "add", f"{self.pod_ip(n, p, 6)}/128", "dev", "eth0", "nodad")
                sh("ip", "-n", node, "addr", "add", "fe80::1/64", "dev", host, "nodad")
                sh("ip", "-n", pod, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
                sh("ip", "-n", node, "-6", "route", "add", f"{self.pod_ip(n, p, 6)}/128", "dev", host)
        self.node_routes(n)
        rules = "*nat\n-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -o eth0 -j MASQUERADE\nCOMMIT\n"
        self.exec_in_input(node, ["iptables-restore", "--noflush"], rules)
        if self.dual:
            rules6 = "*nat\n-A POSTROUTING -s fd00:244::/32 ! -d fd00:244::/32 -o eth0 -j MASQUERADE\nCOMMIT\n"
            self.exec_in_input(node, ["ip6tables-restore", "--noflush"], rules6)

    def node_routes(self, n: int) -> None:
        """What a CNI/routing daemon keeps on a node: the other nodes' pod CIDRs and a default route.
        (The kernel drops routes via a link that goes down; `restore_link` puts them back.)"""
        node = self.node(n)
        sh("ip", "-n", node, "route", "replace", "default", "via", EXT4)
        for m in (1, 2, 3):
            if m != n:
                sh("ip", "-n", node, "route", "replace", f"10.244.{m}.0/24", "via", f"10.100.0.{m}")
                if self.dual:
                    sh("ip", "-n", node, "-6", "route", "replace", f"fd00:244:{m}::/64", "via", f"fd00:100::{m}")

    def watch(self) -> None:
        """Counters of what reaches ext's IP stack from a pod address (frames to its MAC only: a
        switch's flooding is not reception) and of VXLAN frames crossing the segment (its bridge)."""
        pods = "ip saddr 10.244.0.0/16 counter name pod4; ip6 saddr fd00:244::/32 counter name pod6"
        self.exec_in_input(self.ns("ext"), ["nft", "-f", "-"],
                           "table inet egwt-watch {\n counter pod4 {}\n counter pod6 {}\n"
                           " chain in { type filter hook prerouting priority -500; }\n}\n"
                           + "".join(f"add rule inet egwt-watch in {r}\n" for r in pods.split("; ")))
        self.exec_in_input(self.ns("ul"), ["nft", "-f", "-"],
                           "table bridge egwt-watch {\n counter vxlan {}\n"
                           " chain look { type filter hook forward priority 0; udp dport 7789 counter name vxlan; }\n}\n")

    def watched(self) -> dict[str, int]:
        """{"pod4", "pod6": packets ext received from pod IPs, "vxlan": VXLAN frames on the segment}."""
        out = {}
        for ns, family, names in ((self.ns("ext"), "inet", ("pod4", "pod6")), (self.ns("ul"), "bridge", ("vxlan",))):
            for name in names:
                text = self.exec_in(ns, "nft", "list", "counter", family, "egwt-watch", name).stdout
                out[name] = int(text.split("packets ")[1].split()[0])
        return out

    def restore_link(self, n: int) -> None:
        sh("ip", "-n", self.node(n), "link", "set", "eth0", "up")
        self.node_routes(n)

    def our_rules(self, n: int) -> str:
        """Our rules on node n in either engine's words: iptables-save, then our nftables table."""
        script = "iptables-save; ip6tables-save; nft list table ip egress 2>/dev/null; nft list table ip6 egress 2>/dev/null"
        return self.exec_in(self.node(n), "sh", "-c", script, check=False).stdout

    def exec_in_input(self, ns: str, cmd: list[str], text: str) -> None:
        sh("ip", "netns", "exec", ns, *cmd, input=text)

    # --- cluster objects ------------------------------------------------------------------------

    def write_inputs(self, gateway: str = "node2", extra_policies: list[dict[str, Any]] | None = None) -> None:
        objs: list[dict[str, Any]] = [tunnel(n, self.dual) for n in (1, 2, 3)]
        node_ip = {f"node{n}": {"ipv4": [f"10.100.0.{n}"], **({"ipv6": [f"fd00:100::{n}"]} if self.dual else {})}
                   for n in (1, 2, 3)}
        pools = {"ipv4": ["10.244.0.0/16"], **({"ipv6": ["fd00:244::/32"]} if self.dual else {})}
        objs.append({"apiVersion": API, "kind": "EgressClusterInfo", "metadata": {"name": "default"},
                     "status": {"nodeIP": node_ip, "podCIDR": {"pool": pools}}})
        self._dump("cluster.yaml", objs)
        self.set_policies(gateway, extra_policies)

    def policy(self, name: str, pods: list[tuple[int, str]], gateway: str, eip4: str = EIP4, eip6: str = EIP6,
               dest: list[str] | None = None) -> list[dict[str, Any]]:
        eip = {"ipv4": eip4, **({"ipv6": eip6} if self.dual else {})}
        endpoints = [{"ns": "default", "pod": f"p{n}{p}", "node": f"node{n}", "ipv4": [self.pod_ip(n, p)],
                      **({"ipv6": [self.pod_ip(n, p, 6)]} if self.dual else {})} for n, p in pods]
        spec: dict[str, Any] = {"egressGatewayName": "gw", "appliedTo": {"podSelector": {"matchLabels": {"policy": name}}}}
        if dest:
            spec["destSubnet"] = dest
        return [
            {"apiVersion": API, "kind": "EgressPolicy", "metadata": {"name": name, "namespace": "default"},
             "spec": spec, "status": {"eip": eip, "node": gateway}},
            {"apiVersion": API, "kind": "EgressEndpointSlice",
             "metadata": {"name": f"{name}-1", "namespace": "default", "labels": {"spidernet.io/policy-name": name}},
             "endpoints": endpoints},
        ]

    def set_policies(self, gateway: str, extra: list[dict[str, Any]] | None = None,
                     web_pods: list[tuple[int, str]] | None = None) -> None:
        """Policy default/web (pods p1a, p2a unless `web_pods`) on `gateway`, plus `extra` objects
        (kept for later calls that do not pass them)."""
        if extra is not None:
            self.extra = extra
        objs = self.policy("web", web_pods or [(1, "a"), (2, "a")], gateway) + getattr(self, "extra", [])
        self._dump("policies.yaml", objs)

    def _dump(self, name: str, objs: list[dict[str, Any]]) -> None:
        tmp = self.inputs / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump_all(objs))
        os.replace(tmp, self.inputs / name)

    # --- agents ---------------------------------------------------------------------------------

    def agent_args(self, n: int, command: str = "run") -> list[str]:
        args = ["ip", "netns", "exec", self.node(n), PYTHON, "-m", "egress_cni.agent.main", command,
                "--node", f"node{n}", "--source", f"yaml:{self.inputs}", "--parent", "eth0",
                "--registry-dir", str(self.dir / f"registry-node{n}"), "--metrics-address", "",
                "--resync-seconds", str(self.resync_seconds), "--log-level", "WARNING", "--iptables-backend", self.engine,
                "--vxlan-mode", self.vxlan_mode]
        # `once` leaves no agent behind to renew the EIPs' kernel lifetime: give them long enough to
        # outlive the test's next look (a running agent renews them with its own, 1 s by default)
        once = ["--eip-lifetime-seconds", "60"] if command == "once" else []
        return args + once + self.agent_extra + (["--ipv6"] if self.dual else [])

    def once(self, n: int) -> str:
        proc = subprocess.run(self.agent_args(n, "once"), capture_output=True, text=True, timeout=120, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"agent once on node{n} failed: {proc.stdout} {proc.stderr}")
        return proc.stdout.strip().splitlines()[-1]

    def start_agent(self, n: int) -> None:
        log = open(self.dir / f"agent-node{n}.log", "a")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(self.agent_args(n), stdout=log, stderr=log, text=True, cwd=ROOT)
        self.agents[n] = proc
        self.procs.append(proc)

    def start_web_on_node2(self) -> bool:
        """Build; policy default/web selects p1a only, gateway node2; a one-shot reconcile, then agents,
        on node1 and node2. Whether p1a leaves with the EIP then."""
        self.build()
        self.set_policies("node2", web_pods=[(1, "a")])
        for n in (1, 2):
            self.once(n)
        for n in (1, 2):
            self.start_agent(n)
        return self.wait_probe(1, "a", EIP4) == EIP4

    def stop_agent(self, n: int, sig: int = signal.SIGKILL) -> None:
        proc = self.agents.pop(n, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=10)

    def agent_log(self, n: int) -> str:
        path = self.dir / f"agent-node{n}.log"
        return path.read_text() if path.exists() else ""

    # --- traffic --------------------------------------------------------------------------------

    def probe(self, n: int, p: str, dst: str = EXT4, proto: str = "tcp", timeout: float = 3.0) -> str:
        proc = self.exec_in(self.pod(n, p), PYTHON, ECHO, "probe", dst, str(PORT), proto, str(timeout), check=False)
        return proc.stdout.strip()

    def wait_probe(self, n: int, p: str, expect: str, dst: str = EXT4, proto: str = "tcp", timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        got = ""
        while time.monotonic() < deadline:
            got = self.probe(n, p, dst, proto, timeout=1.0)
            if got == expect:
                return got
            time.sleep(0.1)
        return got

    def fail_gateway(self, n: int, successor: str) -> float:
        """The gateway node loses its link and its agent dies; the "controller" moves the policy to
        `successor` (a YAML change). Returns the epoch time of the loss."""
        t0 = time.time()
        sh("ip", "-n", self.node(n), "link", "set", "eth0", "down")
        self.stop_agent(n)
        self.set_policies(successor)
        return t0

    def start_until(self, n: int, p: str, expect: str, dst: str = EXT4, deadline: float = 30.0) -> subprocess.Popen[str]:
        """A prober in pod (n, p) that exits with the epoch time of the first reply showing `expect`."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.pod(n, p), PYTHON, ECHO, "until", dst, str(PORT), expect,
                                 str(deadline)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    # --- teardown -------------------------------------------------------------------------------

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
