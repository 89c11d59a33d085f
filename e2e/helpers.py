"""What e2e scenarios do on the sandbox: create objects and pods, send from a pod, read what the
external server saw. Every wait polls with a deadline (the machine is a loaded 2-core VM)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from devtools.sandbox import nodeops
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
