"""A read-only view of the cluster state the rules need: namespace labels, gateways, policies.

`ClusterView` is the protocol the pure review function reads. `MemoryView` keeps parsed objects
in memory (tests, the benchmark, `--cluster-state` files); `InformerView` reads the typed stores
(`egress_cni/store.py`) that `egress_cni.k8s.Informer` watch events keep current, so a review never
waits on the API server and nothing is parsed twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from egress_cni.api import API_VERSION
from egress_cni.api.errors import FieldError
from egress_cni.api.model import (
    CLUSTER_INFO_NAME,
    EgressClusterInfo,
    EgressClusterPolicy,
    EgressGateway,
    EgressPolicy,
    parse_as,
    parse_object,
)
from egress_cni.api.workloads import NamespaceInfo
from egress_cni.store import Store

log = logging.getLogger(__name__)


class ClusterView(Protocol):
    def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        """Labels of a namespace, or None when it is not known."""

    def gateway(self, name: str) -> EgressGateway | None: ...

    def gateways(self) -> Sequence[EgressGateway]: ...

    def policies(self) -> Sequence[EgressPolicy]:
        """EgressPolicies and EgressClusterPolicies (a subclass) together."""

    def policies_in(self, namespace: str) -> Sequence[EgressPolicy]:
        """EgressPolicies of one namespace, or with "" the EgressClusterPolicies (an index for the conflict rules)."""

    def policy_namespaces(self) -> Sequence[str]:
        """The namespaces that hold EgressPolicies, in the order `policies()` lists them."""

    def policies_naming(self, address: str) -> Sequence[EgressPolicy]:
        """Policies whose spec.egressIP or status.eip holds `address` (an index for the EIP sharing rule)."""

    def cluster_info(self) -> EgressClusterInfo | None:
        """EgressClusterInfo `default`: the cluster's own node, service and pod addresses."""


def policy_key(policy: EgressPolicy) -> tuple[str, str]:
    """Identity across both policy kinds: (kind, ns/name)."""
    return policy.KIND, policy.metadata.key


@dataclass(frozen=True)
class PolicyIndex:
    """Both policy kinds, indexed the ways the rules look them up; built once per change, so a review
    reads the few candidates it needs instead of walking thousands of policies."""

    all: tuple[EgressPolicy, ...] = ()
    by_namespace: Mapping[str, tuple[EgressPolicy, ...]] = field(default_factory=dict)  # "": cluster policies
    by_address: Mapping[str, tuple[EgressPolicy, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, policies: Iterable[EgressPolicy]) -> PolicyIndex:
        ordered = tuple(policies)
        namespaces: dict[str, list[EgressPolicy]] = {"": []}
        addresses: dict[str, list[EgressPolicy]] = {}
        for policy in ordered:
            namespace = "" if isinstance(policy, EgressClusterPolicy) else policy.metadata.namespace
            namespaces.setdefault(namespace, []).append(policy)
            eip, status = policy.spec.eip, policy.status
            for address in {eip.ipv4, eip.ipv6, status.eip_ipv4, status.eip_ipv6} - {None}:
                addresses.setdefault(str(address), []).append(policy)
        return cls(ordered, {k: tuple(v) for k, v in namespaces.items()}, {k: tuple(v) for k, v in addresses.items()})

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(k for k in self.by_namespace if k)


class MemoryView:
    """Parsed objects in dictionaries, replaced copy-on-write so readers never see a half update."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._namespaces: dict[str, Mapping[str, str]] = {}
        self._gateways: dict[str, EgressGateway] = {}
        self._policies: dict[tuple[str, str], EgressPolicy] = {}
        self._gateway_list: tuple[EgressGateway, ...] = ()
        self._index = PolicyIndex()
        self._cluster_info: EgressClusterInfo | None = None

    @classmethod
    def of(cls, objects: Iterable[Mapping[str, Any]]) -> MemoryView:
        view = cls()
        view.upsert_all(objects)
        return view

    # --- ClusterView ---------------------------------------------------------------------------

    def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        return self._namespaces.get(name)

    def gateway(self, name: str) -> EgressGateway | None:
        return self._gateways.get(name)

    def gateways(self) -> Sequence[EgressGateway]:
        return self._gateway_list

    def policies(self) -> Sequence[EgressPolicy]:
        return self._index.all

    def policies_in(self, namespace: str) -> Sequence[EgressPolicy]:
        return self._index.by_namespace.get(namespace, ())

    def policy_namespaces(self) -> Sequence[str]:
        return self._index.namespaces

    def policies_naming(self, address: str) -> Sequence[EgressPolicy]:
        return self._index.by_address.get(address, ())

    def cluster_info(self) -> EgressClusterInfo | None:
        return self._cluster_info

    # --- updates -------------------------------------------------------------------------------

    def upsert(self, raw: Mapping[str, Any]) -> None:
        """Add or replace one object (Namespace or an egress kind); unparsable objects are dropped."""
        self.upsert_all((raw,))

    def upsert_all(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """Add or replace many objects at once: readers see none or all of them, and the lists and
        indexes are rebuilt once (not once per object)."""
        with self._lock:
            namespaces, gateways, policies = dict(self._namespaces), dict(self._gateways), dict(self._policies)
            for raw in objects:
                if raw.get("kind") == "Namespace":
                    meta = raw.get("metadata") or {}
                    namespaces[str(meta.get("name", ""))] = dict(meta.get("labels") or {})
                    continue
                try:
                    obj = parse_object(raw)
                except FieldError as exc:
                    log.warning("ignoring unparsable object", extra={"kind": raw.get("kind"), "error": str(exc)})
                    continue
                if isinstance(obj, EgressGateway):
                    gateways[obj.metadata.name] = obj
                elif isinstance(obj, EgressPolicy):
                    policies[policy_key(obj)] = obj
                elif isinstance(obj, EgressClusterInfo) and obj.metadata.name == CLUSTER_INFO_NAME:
                    self._cluster_info = obj
            self._namespaces, self._gateways, self._policies = namespaces, gateways, policies
            self._refresh()

    def remove(self, kind: str, key: str) -> None:
        """Forget an object; `key` is "ns/name" or "name"."""
        with self._lock:
            if kind == "Namespace":
                self._namespaces = {k: v for k, v in self._namespaces.items() if k != key}
            elif kind == EgressGateway.KIND:
                self._gateways = {k: v for k, v in self._gateways.items() if k != key}
            elif kind in (EgressPolicy.KIND, EgressClusterPolicy.KIND):
                self._policies = {k: v for k, v in self._policies.items() if k != (kind, key)}
            self._refresh()

    def _refresh(self) -> None:
        self._gateway_list = tuple(self._gateways[k] for k in sorted(self._gateways))
        self._index = PolicyIndex.of(self._policies[k] for k in sorted(self._policies))


class InformerLike(Protocol):
    """The part of `egress_cni.k8s.Informer` the view uses."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def wait_synced(self, timeout: float) -> bool: ...

    @property
    def synced(self) -> bool: ...

    @property
    def healthy(self) -> bool: ...


class _Events:
    """The listing behind event-fed stores: they follow their events, and are synced with the informers."""

    def __init__(self, view: InformerView) -> None:
        self._view = view

    @property
    def synced(self) -> bool:
        return self._view.synced

    def list(self) -> Sequence[Mapping[str, Any]]:
        return ()

    def get(self, key: str) -> Mapping[str, Any] | None:
        return None


def _typed(cls: type[EgressPolicy] | type[EgressGateway] | type[EgressClusterInfo]) -> Callable[[Mapping[str, Any]], Any]:
    # list items may omit apiVersion/kind; the informer's resource type says what they are
    return lambda raw: parse_as(cls, {"apiVersion": API_VERSION, "kind": cls.KIND, **raw})


class InformerView:
    """A ClusterView over typed stores (egress_cni/store.py) fed by informer events (Namespaces,
    EgressGateways, both policy kinds): each resourceVersion is parsed once, an unparsable object is
    kept out of the view (and counted by the store), and a read never waits on the API server.

    `on_change(kind)` returns the callback to hand to `Informer(..., on_change=...)`. A gateway
    looked up by name that the cache has not seen yet is read once from `fallback_get`: a policy
    applied right after its gateway must not be refused because a watch event is milliseconds late.
    """

    def __init__(self, fallback_get: Any = None) -> None:
        self._informers: list[InformerLike] = []
        self._fallback_get = fallback_get
        events = _Events(self)
        self.namespaces: Store[NamespaceInfo] = Store(events, NamespaceInfo.parse)
        self.gateway_store: Store[EgressGateway] = Store(events, _typed(EgressGateway))
        self.policy_store: Store[EgressPolicy] = Store(events, _typed(EgressPolicy))
        self.cluster_policy_store: Store[EgressClusterPolicy] = Store(events, _typed(EgressClusterPolicy))
        self.cluster_info_store: Store[EgressClusterInfo] = Store(events, _typed(EgressClusterInfo))
        self._stores: dict[str, Store[Any]] = {
            "Namespace": self.namespaces, EgressGateway.KIND: self.gateway_store,
            EgressPolicy.KIND: self.policy_store, EgressClusterPolicy.KIND: self.cluster_policy_store,
            EgressClusterInfo.KIND: self.cluster_info_store,
        }
        self._lock = threading.Lock()
        self._derived: tuple[tuple[int, int], PolicyIndex] = ((-1, -1), PolicyIndex())

    def on_change(self, kind: str) -> Any:
        store = self._stores[kind]

        def handle(key: str, _old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
            store.record(key, new)
        return handle

    def add_informer(self, informer: InformerLike) -> None:
        self._informers.append(informer)

    def start(self) -> None:
        for informer in self._informers:
            informer.start()

    def stop(self) -> None:
        for informer in self._informers:
            informer.stop()

    def wait_synced(self, timeout: float) -> bool:
        """True when every informer synced within `timeout` seconds in total."""
        deadline = time.monotonic() + timeout
        return all(i.wait_synced(max(0.0, deadline - time.monotonic())) for i in self._informers)

    @property
    def synced(self) -> bool:
        return all(i.synced for i in self._informers)

    @property
    def healthy(self) -> bool:
        """Ready to answer: every cache synced and no watch failing now (readiness drops while the
        API server cannot be watched, so the Service routes reviews to a replica that can)."""
        return all(i.healthy for i in self._informers)

    # --- ClusterView ---------------------------------------------------------------------------

    def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        found = self.namespaces.get(name)
        return found.labels if found is not None else None

    def gateway(self, name: str) -> EgressGateway | None:
        found = self.gateway_store.get(name)
        if found is not None or self._fallback_get is None or not name:
            return found
        try:
            raw = self._fallback_get(name)
        except Exception:  # NotFound, or the API is unreachable: the cache's answer stands
            return None
        if isinstance(raw, Mapping):
            self.gateway_store.record(name, raw)
        return self.gateway_store.get(name)

    def gateways(self) -> Sequence[EgressGateway]:
        return self.gateway_store.items()

    def cluster_info(self) -> EgressClusterInfo | None:
        return self.cluster_info_store.get(CLUSTER_INFO_NAME)

    def policies(self) -> Sequence[EgressPolicy]:
        return self._index().all

    def policies_in(self, namespace: str) -> Sequence[EgressPolicy]:
        return self._index().by_namespace.get(namespace, ())

    def policy_namespaces(self) -> Sequence[str]:
        return self._index().namespaces

    def policies_naming(self, address: str) -> Sequence[EgressPolicy]:
        return self._index().by_address.get(address, ())

    def _index(self) -> PolicyIndex:
        """Both kinds (cluster policies first, as `policy_key` sorts), indexed; rebuilt only when a
        policy store changed."""
        versions = (self.policy_store.version, self.cluster_policy_store.version)
        derived = self._derived
        if derived[0] != versions:
            derived = (versions, PolicyIndex.of((*self.cluster_policy_store.items(), *self.policy_store.items())))
            with self._lock:
                self._derived = derived
        return derived[1]
