"""The agent's one narrow input interface, and the YAML-files source used by tests and benches.

A source delivers raw Kubernetes objects (dicts); `state_from_objects` parses them into the
`ClusterState` that `compute` reads. The Kubernetes source (k8s_source.py) is the production one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import yaml

from egress_cni.api.errors import FieldError
from egress_cni.api.model import (
    EgressClusterInfo,
    EgressEndpointSlice,
    EgressGateway,
    EgressPolicy,
    EgressTunnel,
    parse_object,
)
from egress_cni.dataplane.inputs import ClusterState

log = logging.getLogger(__name__)
OnChange = Callable[[], None]


class Source(Protocol):
    """Cluster objects for one node. `synced` turns true once every kind has been listed once:
    until then the agent adds but never removes anything."""

    def start(self, on_change: OnChange) -> None: ...
    def stop(self) -> None: ...
    @property
    def synced(self) -> bool: ...
    def objects(self) -> list[dict[str, Any]]: ...
    def report_tunnel(self, node: str, parent: Mapping[str, str], ready: bool) -> None:
        """Publish this node's underlay (EgressTunnel status.tunnel.parent) and, when ready, phase Ready."""


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def state_from_objects(objects: Iterable[Mapping[str, Any]], node: str = "") -> ClusterState:
    """Parse what a source delivers; a malformed object is logged and skipped, never fatal."""
    policies: list[EgressPolicy] = []
    gateways: list[EgressGateway] = []
    slices: list[EgressEndpointSlice] = []
    tunnels: list[EgressTunnel] = []
    info: EgressClusterInfo | None = None
    pods: dict[str, dict[str, str]] = {}
    namespaces: dict[str, dict[str, str]] = {}
    for raw in objects:
        kind = raw.get("kind")
        meta = raw.get("metadata") or {}
        if kind == "Pod":
            if not node or (raw.get("spec") or {}).get("nodeName") in (node, None):
                pods[f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"] = _labels(raw)
            continue
        if kind == "Namespace":
            namespaces[str(meta.get("name", ""))] = _labels(raw)
            continue
        try:
            obj = parse_object(raw)
        except FieldError as exc:
            log.warning("skipping malformed object", extra={"kind": kind, "name": meta.get("name"), "error": str(exc)})
            continue
        if isinstance(obj, EgressPolicy):
            policies.append(obj)
        elif isinstance(obj, EgressGateway):
            gateways.append(obj)
        elif isinstance(obj, EgressEndpointSlice):
            slices.append(obj)
        elif isinstance(obj, EgressTunnel):
            tunnels.append(obj)
        elif isinstance(obj, EgressClusterInfo):
            info = obj
    return ClusterState(tuple(policies), tuple(gateways), tuple(slices), tuple(tunnels), info,
                        pod_labels=pods, namespace_labels=namespaces)


def load_yaml_objects(paths: Iterable[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            out += [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    return out


class YamlSource:
    """Objects from the *.yaml files of a directory, re-read whenever one changes (polled).

    Tests drive "controller decisions" (a new gateway node for a policy) by rewriting a file.
    Tunnel reports are recorded in `reported` instead of being written anywhere.
    """

    def __init__(self, directory: str, poll_seconds: float = 0.05) -> None:
        self.directory = directory
        self.poll_seconds = poll_seconds
        self.reported: dict[str, dict[str, str]] = {}
        self._objects: list[dict[str, Any]] = []
        self._stamp: tuple[tuple[str, float, int], ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._synced = False
        self._lock = threading.Lock()

    def _files(self) -> list[str]:
        return sorted(os.path.join(self.directory, n) for n in os.listdir(self.directory)
                      if n.endswith((".yaml", ".yml")) and not n.startswith("."))

    def _reload(self) -> bool:
        files = self._files()
        stamp = tuple((p, (st := os.stat(p)).st_mtime, st.st_size) for p in files)
        if stamp == self._stamp:
            return False
        try:
            objects = load_yaml_objects(files)
        except (OSError, yaml.YAMLError) as exc:
            log.warning("cannot read yaml source", extra={"dir": self.directory, "error": str(exc)})
            return False
        with self._lock:
            self._objects, self._stamp, self._synced = objects, stamp, True
        return True

    def start(self, on_change: OnChange) -> None:
        self._reload()
        on_change()

        def poll() -> None:
            while not self._stop.wait(self.poll_seconds):
                if self._reload():
                    on_change()

        self._thread = threading.Thread(target=poll, name="yaml-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)

    @property
    def synced(self) -> bool:
        return self._synced

    def objects(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects)

    def report_tunnel(self, node: str, parent: Mapping[str, str], ready: bool) -> None:
        self.reported[node] = {**parent, "ready": str(ready)}
