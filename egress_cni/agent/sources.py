"""What the agent reads and writes of the cluster: a set of typed stores in, tunnel reports out.

A `Source` delivers one `Store` per kind (`ClusterStores`), each parsing its objects once per
resourceVersion; `agent/state.py` assembles compute's `ClusterState` from them. Writes go through
a port of their own (`TunnelReporter`), so a read-only source (YAML files) needs no write stub.

Besides the Kubernetes source (k8s_source.py, production) this module has the in-memory source
(`MemorySource`: tests replace its objects) and the YAML-files source built on it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import yaml

from egress_cni.api.model import (
    EgressClusterEndpointSlice,
    EgressClusterInfo,
    EgressClusterPolicy,
    EgressEndpointSlice,
    EgressGateway,
    EgressPolicy,
    EgressTunnel,
    parse_as,
)
from egress_cni.api.workloads import NamespaceInfo, PodInfo
from egress_cni.dataplane.inputs import ClusterState
from egress_cni.store import Invalid, Listing, Store, key_of

log = logging.getLogger(__name__)
OnChange = Callable[[], None]


@dataclass(frozen=True)
class ClusterStores:
    """One typed store per kind the agent reads."""

    policies: Store[EgressPolicy]
    cluster_policies: Store[EgressClusterPolicy]
    gateways: Store[EgressGateway]
    endpoint_slices: Store[EgressEndpointSlice]
    cluster_endpoint_slices: Store[EgressClusterEndpointSlice]
    tunnels: Store[EgressTunnel]
    cluster_infos: Store[EgressClusterInfo]
    pods: Store[PodInfo]
    namespaces: Store[NamespaceInfo]

    @classmethod
    def over(cls, listings: Mapping[str, Listing]) -> ClusterStores:
        """Stores over one listing (an informer) per kind, keyed by kind as in `KINDS`."""
        return cls(**{attr: Store(listings[kind], parse) for attr, (kind, parse) in _STORES.items()})

    def all(self) -> tuple[Store[Any], ...]:
        return tuple(getattr(self, attr) for attr in _STORES)

    @property
    def synced(self) -> bool:
        """Every kind has been listed once: until then the agent adds but never removes anything."""
        return all(s.synced for s in self.all())

    def versions(self) -> tuple[int, ...]:
        return tuple(s.version for s in self.all())

    def invalid(self) -> tuple[Invalid, ...]:
        return tuple(i for s in self.all() for i in s.invalid())


def _typed(cls: type[Any]) -> Callable[[Mapping[str, Any]], Any]:
    return lambda raw: parse_as(cls, raw)


_STORES: dict[str, tuple[str, Callable[[Mapping[str, Any]], Any]]] = {
    "policies": ("EgressPolicy", _typed(EgressPolicy)),
    "cluster_policies": ("EgressClusterPolicy", _typed(EgressClusterPolicy)),
    "gateways": ("EgressGateway", _typed(EgressGateway)),
    "endpoint_slices": ("EgressEndpointSlice", _typed(EgressEndpointSlice)),
    "cluster_endpoint_slices": ("EgressClusterEndpointSlice", _typed(EgressClusterEndpointSlice)),
    "tunnels": ("EgressTunnel", _typed(EgressTunnel)),
    "cluster_infos": ("EgressClusterInfo", _typed(EgressClusterInfo)),
    "pods": ("Pod", PodInfo.parse),
    "namespaces": ("Namespace", NamespaceInfo.parse),
}
KINDS = tuple(kind for kind, _ in _STORES.values())


class Source(Protocol):
    def start(self, on_change: OnChange) -> None: ...
    def stop(self) -> None: ...
    @property
    def stores(self) -> ClusterStores: ...
    @property
    def synced(self) -> bool: ...


class TunnelReporter(Protocol):
    def report_tunnel(self, node: str, parent: Mapping[str, str], ready: bool) -> None:
        """Publish this node's underlay (EgressTunnel status.tunnel.parent) and, when ready, phase Ready."""


class RecordingReporter:
    """For sources without an API server: tunnel reports are recorded in `reported`."""

    def __init__(self) -> None:
        self.reported: dict[str, dict[str, str]] = {}

    def report_tunnel(self, node: str, parent: Mapping[str, str], ready: bool) -> None:
        self.reported[node] = {**parent, "ready": str(ready)}


class MemoryListing:
    """An informer stand-in holding one kind's objects in memory (replaced wholesale)."""

    def __init__(self) -> None:
        self._objects: dict[str, Mapping[str, Any]] = {}
        self._lock = threading.Lock()
        self.synced = False

    def replace(self, objects: Iterable[Mapping[str, Any]]) -> None:
        fresh = {key_of(o): o for o in objects}
        with self._lock:
            self._objects = fresh

    def list(self) -> list[Mapping[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def get(self, key: str) -> Mapping[str, Any] | None:
        with self._lock:
            return self._objects.get(key)


class MemorySource:
    """Objects held in memory, of every kind at once: `replace` them and the agent is told.

    `synced` can be set to stand for a source that has not listed everything yet.
    """

    def __init__(self, objects: Iterable[Mapping[str, Any]] = (), synced: bool = True) -> None:
        self._listings = {kind: MemoryListing() for kind in KINDS}
        self._stores = ClusterStores.over(self._listings)
        self._on_change: OnChange | None = None
        self.replace(objects, notify=False)
        self.synced = synced

    @property
    def stores(self) -> ClusterStores:
        return self._stores

    @property
    def synced(self) -> bool:
        return all(listing.synced for listing in self._listings.values())

    @synced.setter
    def synced(self, value: bool) -> None:
        for listing in self._listings.values():
            listing.synced = value

    def objects(self) -> list[Mapping[str, Any]]:
        """What `replace` was given last, by kind (for tests that derive the next set of objects)."""
        return [o for listing in self._listings.values() for o in listing.list()]

    def replace(self, objects: Iterable[Mapping[str, Any]], notify: bool = True) -> None:
        by_kind: dict[str, list[Mapping[str, Any]]] = {kind: [] for kind in KINDS}
        for raw in objects:
            kind = raw.get("kind")
            if isinstance(kind, str) and kind in by_kind:
                by_kind[kind].append(raw)
            else:
                log.warning("skipping object of a kind the agent does not read",
                            extra={"kind": kind, "key": key_of(raw)})
        for kind, listing in self._listings.items():
            listing.replace(by_kind[kind])
        if notify and self._on_change is not None:
            self._on_change()

    def start(self, on_change: OnChange) -> None:
        self._on_change = on_change
        on_change()

    def stop(self) -> None:
        self._on_change = None


def load_yaml_objects(paths: Iterable[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            out += [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    return out


def state_from_objects(objects: Iterable[Mapping[str, Any]], node: str = "") -> ClusterState:
    """Compute's input from raw objects in one go (scenarios, benches); a malformed object is skipped."""
    from egress_cni.agent.state import StateView

    return StateView(MemorySource(objects).stores, node).state()


class YamlSource(MemorySource):
    """Objects from the *.yaml files of a directory, re-read whenever one changes (polled).

    Tests drive "controller decisions" (a new gateway node for a policy) by rewriting a file.
    It is synced once the files have been read.
    """

    def __init__(self, directory: str, poll_seconds: float = 0.05) -> None:
        super().__init__(synced=False)
        self.directory = directory
        self.poll_seconds = poll_seconds
        self._stamp: tuple[tuple[str, float, int], ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        self._stamp = stamp
        self.replace(objects, notify=False)
        self.synced = True
        return True

    def start(self, on_change: OnChange) -> None:
        self._reload()
        super().start(on_change)

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
        super().stop()
