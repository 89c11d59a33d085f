"""Helpers for controller tests on a real API server: fake Nodes, agent Leases, pods with IPs,
the controller as a subprocess, and polling waits (never fixed sleeps)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from egress_cni import k8s

NAMESPACE = "egressgateway-system"
API = "egressgateway.spidernet.io/v1beta1"
REPO = Path(__file__).resolve().parents[2]


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll `probe` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except k8s.NotFound as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def ensure_namespace(client: k8s.Client, name: str, labels: dict[str, str] | None = None) -> None:
    try:
        client.create(k8s.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}})
    except k8s.Conflict:
        if labels:
            client.patch(k8s.NAMESPACES, name, {"metadata": {"labels": labels}})


def make_node(client: k8s.Client, name: str, labels: dict[str, str], ip: str = "", pod_cidr: str = "") -> None:
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": {}}
    if pod_cidr:
        body["spec"] = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    client.create(k8s.NODES, body)
    set_node_ready(client, name, True, ip)


def set_node_ready(client: k8s.Client, name: str, ready: bool, ip: str = "") -> None:
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False", "reason": "Test",
                                              "lastHeartbeatTime": k8s.now_rfc3339(), "lastTransitionTime": k8s.now_rfc3339()}]}
    if ip:
        status["addresses"] = [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]
    client.patch_status(k8s.NODES, name, {"status": status})


def delete_quietly(client: k8s.Client, rt: k8s.ResourceType, name: str, namespace: str | None = None) -> None:
    try:
        client.delete(rt, name, namespace)
    except k8s.NotFound:
        pass


class Agents:
    """Renews `egress-agent-<node>` Leases like the node agents do, until told to stop per node;
    `annotations[node]` is written with every renewal (the EIPs it holds, the peers it sees)."""

    def __init__(self, client: k8s.Client, duration: int = 1) -> None:
        self.client, self.duration = client, duration
        self._stops: dict[str, threading.Event] = {}
        self.annotations: dict[str, dict[str, str]] = {}

    def start(self, node: str) -> None:
        stop = threading.Event()
        self._stops[node] = stop
        keeper = k8s.LeaseKeeper(self.client, f"egress-agent-{node}", NAMESPACE, node, self.duration,
                                 annotations=lambda: dict(self.annotations.get(node, {})))

        def renew() -> None:
            while not stop.is_set():
                try:
                    keeper.try_acquire_or_renew()
                except k8s.APIError:
                    pass
                stop.wait(0.2)

        threading.Thread(target=renew, name=f"agent-{node}", daemon=True).start()

    def stop(self, node: str) -> None:
        self._stops.pop(node).set()

    def stop_all(self) -> None:
        for node in list(self._stops):
            self.stop(node)


def gateway(name: str, ipv4: list[str], selector: dict[str, str], default4: str = "", **spec: Any) -> dict[str, Any]:
    pools: dict[str, Any] = {"ipv4": ipv4}
    if default4:
        pools["ipv4DefaultEIP"] = default4
    return {"apiVersion": API, "kind": "EgressGateway", "metadata": {"name": name},
            "spec": {"ippools": pools, "nodeSelector": {"selector": {"matchLabels": selector}}, **spec}}


def policy(name: str, namespace: str | None, gateway_name: str, match: dict[str, str] | None = None,
           egress_ip: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    body: dict[str, Any] = {"appliedTo": {"podSelector": {"matchLabels": match or {"app": name}}}, **spec}
    if gateway_name:
        body["egressGatewayName"] = gateway_name
    if egress_ip is not None:
        body["egressIP"] = egress_ip
    kind = "EgressPolicy" if namespace else "EgressClusterPolicy"
    return {"apiVersion": API, "kind": kind, "metadata": meta, "spec": body}


_SERVICE_ACCOUNTS: set[tuple[str, str]] = set()


def make_pod(client: k8s.Client, namespace: str, name: str, labels: dict[str, str], ip: str, node: str = "") -> None:
    """A Pod object with status.podIPs written through the status subresource (no kubelet runs)."""
    if (client.host, namespace) not in _SERVICE_ACCOUNTS:  # without kube-controller-manager nobody creates it
        try:
            client.create(k8s.SERVICE_ACCOUNTS, {"apiVersion": "v1", "kind": "ServiceAccount",
                                                 "metadata": {"name": "default", "namespace": namespace}}, namespace=namespace)
        except k8s.Conflict:
            pass
        _SERVICE_ACCOUNTS.add((client.host, namespace))
    client.create(k8s.PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
                             "spec": {"nodeName": node or None, "automountServiceAccountToken": False,
                                      "containers": [{"name": "c", "image": "busybox"}]}}, namespace=namespace)
    client.patch_status(k8s.PODS, name, {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}, namespace=namespace)


def status_of(client: k8s.Client, rt: k8s.ResourceType, name: str, namespace: str | None = None) -> dict[str, Any]:
    return client.get(rt, name, namespace).get("status") or {}


def ready_reason(status: dict[str, Any]) -> str:
    return next((c.get("reason", "") for c in status.get("conditions") or [] if c.get("type") == "Ready"), "")


class ControllerProcess:
    """`python -m egress_cni.controller.main` against the test API server, stopped by PID."""

    def __init__(self, kubeconfig: str, log_dir: Path, identity: str, *extra: str, env: dict[str, str] | None = None) -> None:
        self.identity = identity
        self.log_path = log_dir / f"controller-{identity}.log"
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "KUBECONFIG": kubeconfig, **(env or {})}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # the controller itself, never a wrapper: stop() signals this PID
                [sys.executable, "-m", "egress_cni.controller.main", "--kubeconfig", kubeconfig, "--identity", identity,
                 "--health-address", "127.0.0.1:0", "--leader-lease-seconds", "2", "--resync-seconds", "30", *extra],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log_since(self, offset: int) -> str:
        return self.log_path.read_bytes()[offset:].decode(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
