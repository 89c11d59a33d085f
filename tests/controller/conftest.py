"""Fixture for controller tests on the real API server: unique names per test, cleanup of every
cluster-scoped object the test made, controllers and fake agents stopped by handle."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from egress_cni import k8s
from tests.controller.cluster import NAMESPACE, Agents, ControllerProcess, delete_quietly, make_node


class Env:
    def __init__(self, plane: Any, log_dir: Path) -> None:
        self.plane = plane
        self.client = k8s.Client.from_kubeconfig(str(plane.kubeconfig))
        self.suffix = uuid.uuid4().hex[:6]
        self.label = {"egw-test": self.suffix}
        self.agents = Agents(self.client)
        self.log_dir = log_dir
        self.controllers: list[ControllerProcess] = []
        self.created: list[tuple[k8s.ResourceType, str, str | None]] = []

    def name(self, stem: str) -> str:
        return f"{stem}-{self.suffix}"

    def node(self, stem: str, *, agent: bool = True, labels: dict[str, str] | None = None, ip: str = "", pod_cidr: str = "") -> str:
        name = self.name(stem)
        make_node(self.client, name, {**self.label, **(labels or {})}, ip=ip, pod_cidr=pod_cidr)
        self.created.append((k8s.NODES, name, None))
        self.created.append((k8s.LEASES, f"egress-agent-{name}", NAMESPACE))
        if agent:
            self.agents.start(name)
        return name

    def create(self, rt: k8s.ResourceType, body: dict[str, Any]) -> dict[str, Any]:
        obj = self.client.create(rt, body)
        meta = obj["metadata"]
        self.created.append((rt, meta["name"], meta.get("namespace")))
        return obj

    def controller(self, identity: str = "a", *extra: str, lease: str = "", env: dict[str, str] | None = None) -> ControllerProcess:
        proc = ControllerProcess(str(self.plane.kubeconfig), self.log_dir, f"{identity}-{self.suffix}",
                                 "--leader-lease", lease or self.name("egressgateway-controller"), *extra, env=env)
        self.controllers.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.controllers:
            proc.stop()
        self.agents.stop_all()
        for rt, name, ns in reversed(self.created):
            if rt is k8s.EGRESS_GATEWAYS:
                try:
                    self.client.patch(rt, name, {"metadata": {"finalizers": None}})
                except k8s.NotFound:
                    continue
            delete_quietly(self.client, rt, name, ns)
        for tunnel in [n for rt, n, _ in self.created if rt is k8s.NODES]:
            delete_quietly(self.client, k8s.EGRESS_TUNNELS, tunnel)


@pytest.fixture
def env(control_plane: Any, tmp_path: Path) -> Iterator[Env]:
    e = Env(control_plane, Path(control_plane.log_dir))
    try:
        yield e
    finally:
        e.cleanup()
