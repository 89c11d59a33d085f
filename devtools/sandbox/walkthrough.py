"""The user's walkthrough (shared/seeds/004) on the sandbox: its YAML applied verbatim, then the
`Remote IP:` check from inside the pod, then a gateway-node failure with the same EIP."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.sandbox import REPO_ROOT, nodeops
from devtools.sandbox.cluster import Sandbox

SEED = REPO_ROOT.parent / "shared" / "seeds" / "004_7c69096a364c9dd0.txt"
HEREDOC = re.compile(r"cat <<EOF \| (kubectl [a-z]+ -f -)\n(.*?)\nEOF", re.S)
EXTERNAL_URL = "http://10.6.168.63:8080"  # the walkthrough's `curl 10.6.168.63:8080`


@dataclass(frozen=True)
class Heredoc:
    command: str  # e.g. "kubectl apply -f -"
    manifest: str

    @property
    def kind(self) -> str:
        match = re.search(r"^kind: (\w+)", self.manifest, re.M)
        return match.group(1) if match else "?"


def heredocs(text: str) -> list[Heredoc]:
    return [Heredoc(command, body) for command, body in HEREDOC.findall(text)]


def seed_heredocs(path: Path = SEED) -> dict[str, Heredoc]:
    found = {doc.kind: doc for doc in heredocs(path.read_text())}
    expected = {"EgressGateway", "Deployment", "EgressPolicy"}
    if set(found) != expected:
        raise ValueError(f"{path}: expected heredocs for {sorted(expected)}, found {sorted(found)}")
    return found


@dataclass(frozen=True)
class FailoverResult:
    failed_node: str
    new_node: str
    eip: str
    seconds: float  # until the pod left with the EIP again (the data path)
    status_seconds: float  # until the policy status named the new node (the controller)


class Walkthrough:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sb = sandbox
        self.say = sandbox.say
        self.docs = seed_heredocs()
        self.pod_node = ""

    def run(self, failover: bool = True) -> None:
        self.apply("EgressGateway")
        self.apply("Deployment")
        pod = self.wait_pod()
        # The walkthrough labels one node; two (not the pod's own) make the failover meaningful.
        gateways = [n.name for n in self.sb.plan.nodes if n.name != self.pod_node][:2]
        for name in gateways:
            self.shell(f'kubectl label node {name} egressgateway="true"', "label", "node", name, "egressgateway=true",
                       "--overwrite")
        self.apply("EgressPolicy")
        status = self.wait_policy_status()
        self.shell("kubectl get egw,egp,egep -A", "get", "egw,egp,egep", "-A")
        remote = self.fetch_from_pod(pod)
        self.say(f"$ kubectl exec -it {pod} -- wget -qO- {EXTERNAL_URL}\n{remote}")
        eip = (status or {}).get("eip", {}).get("ipv4", "")
        node_ip = self.sb.plan.node(self.pod_node).endpoint.ipv4
        if eip and remote == f"Remote IP: {eip}":
            self.say(f"    the pod leaves with the policy's EIP {eip} (its node {self.pod_node} is {node_ip})")
        else:
            self.sb.pending.append(f"EIP: the pod left as `{remote}` (policy status {json.dumps(status)}); expected the EIP")
            return
        if failover:
            result = self.failover(pod, eip, str(status.get("node", "")))
            self.say(f"    failover: {result.failed_node} down -> the pod leaves with {result.eip} again after "
                     f"{result.seconds:.2f}s; the policy status names {result.new_node} after {result.status_seconds:.2f}s")

    # --- steps ------------------------------------------------------------------------------------------

    def apply(self, kind: str) -> None:
        doc = self.docs[kind]
        self.say(f"$ cat <<EOF | {doc.command}\n{doc.manifest}\nEOF")
        verb = doc.command.split()[1]
        result = self.sb.kubectl(verb, "-f", "-", input=doc.manifest + "\n", check=False)
        self.say((result.stdout + result.stderr).rstrip())
        if result.returncode != 0 and "AlreadyExists" not in result.stderr:
            raise RuntimeError(f"{doc.command} of the walkthrough's {kind} failed: {result.stderr.strip()}")

    def shell(self, shown: str, *args: str) -> str:
        result = self.sb.kubectl(*args, check=False)
        out = (result.stdout + result.stderr).rstrip()
        self.say(f"$ {shown}\n{out}")
        return out

    def wait_pod(self, timeout: float = 180.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            pods = self.sb.kubectl_json("get", "pods", "-n", "default", "-l", "app=test-app")["items"]
            ready = [p for p in pods if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")
                     and not p["metadata"].get("deletionTimestamp")]
            if ready:
                pod = ready[0]
                self.pod_node = pod["spec"]["nodeName"]
                self.shell("kubectl get pod -owide", "get", "pod", "-o", "wide")
                return str(pod["metadata"]["name"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"test-app pod not Running after {timeout:.0f}s: {json.dumps([p.get('status') for p in pods])[:2000]}")
            time.sleep(0.5)

    def wait_policy_status(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            policy = self.sb.get_or_none("egresspolicy", "test", "-n", "default") or {}
            status = policy.get("status") or {}
            if status.get("eip", {}).get("ipv4") and status.get("node"):
                return dict(status)
            time.sleep(0.3)
        return {}

    def fetch_from_pod(self, pod: str, timeout: int = 5) -> str:
        # busybox's own `wget -T` segfaults (static glibc); `timeout` bounds it instead.
        result = self.sb.kubectl("exec", "-n", "default", pod, "--", "timeout", str(timeout), "wget", "-qO-", EXTERNAL_URL,
                                 check=False, timeout=timeout + 60)
        return (result.stdout or result.stderr).strip()

    def failover(self, pod: str, eip: str, gateway: str, timeout: float = 90.0) -> FailoverResult:
        """The gateway node goes down (underlay link, kubelet and agent stop); poll until the pod leaves
        with the EIP again and until the policy status names another node."""
        self.say(f"$ # gateway node {gateway} goes down: its underlay link, kubelet and agent stop")
        started = time.monotonic()
        nodeops.power_off(self.sb, gateway)
        served_after = status_after = 0.0
        try:
            while not (served_after and status_after):
                remote = self.fetch_from_pod(pod, timeout=1)
                if not served_after and remote == f"Remote IP: {eip}":
                    served_after = time.monotonic() - started
                    self.say(f"$ kubectl exec -it {pod} -- wget -qO- {EXTERNAL_URL}\n{remote}")
                policy = self.sb.get_or_none("egresspolicy", "test", "-n", "default") or {}
                new_node = str((policy.get("status") or {}).get("node", ""))
                if not status_after and new_node and new_node != gateway:
                    status_after = time.monotonic() - started
                    self.shell("kubectl get egp -A", "get", "egp", "-A")
                if time.monotonic() - started > timeout:
                    raise RuntimeError(f"failover: after {timeout:.0f}s the pod gets `{remote}`, policy node {new_node!r}")
            return FailoverResult(gateway, new_node, eip, served_after, status_after)
        finally:
            nodeops.power_on(self.sb, gateway)


def kubectl_hint(sb: Sandbox) -> str:
    from devtools.devkube.binaries import kube_bin_dir

    return (f"ip netns exec {sb.plan.control_plane.netns} {kube_bin_dir() / 'kubectl'} "
            f"--kubeconfig={sb.kubeconfig}")
