"""A read-only view of the cluster state the rules need: namespace labels, gateways, policies.

`ClusterView` is the protocol the pure review function reads. `MemoryView` keeps parsed objects
in memory (tests, the benchmark, `--cluster-state` files); `InformerView` keeps a `MemoryView`
current from `egress_cni.k8s.Informer` watch events, so a review never waits on the API server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from egress_cni.api import API_VERSION
from egress_cni.api.errors import FieldError
from egress_cni.api.model import EgressClusterPolicy, EgressGateway, EgressPolicy, parse_object

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


def policy_key(policy: EgressPolicy) -> tuple[str, str]:
    """Identity across both policy kinds: (kind, ns/name)."""
    return policy.KIND, policy.metadata.key


class MemoryView:
    """Parsed objects in dictionaries, replaced copy-on-write so readers never see a half update."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._namespaces: dict[str, Mapping[str, str]] = {}
        self._gateways: dict[str, EgressGateway] = {}
        self._policies: dict[tuple[str, str], EgressPolicy] = {}
        self._gateway_list: tuple[EgressGateway, ...] = ()
        self._policy_list: tuple[EgressPolicy, ...] = ()
        self._by_namespace: dict[str, tuple[EgressPolicy, ...]] = {}

    @classmethod
    def of(cls, objects: Iterable[Mapping[str, Any]]) -> MemoryView:
        view = cls()
        for raw in objects:
            view.upsert(raw)
        return view

    # --- ClusterView ---------------------------------------------------------------------------

    def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        return self._namespaces.get(name)

    def gateway(self, name: str) -> EgressGateway | None:
        return self._gateways.get(name)

    def gateways(self) -> Sequence[EgressGateway]:
        return self._gateway_list

    def policies(self) -> Sequence[EgressPolicy]:
        return self._policy_list

    def policies_in(self, namespace: str) -> Sequence[EgressPolicy]:
        return self._by_namespace.get(namespace, ())

    # --- updates -------------------------------------------------------------------------------

    def upsert(self, raw: Mapping[str, Any]) -> None:
        """Add or replace one object (Namespace or an egress kind); unparsable objects are dropped."""
        if raw.get("kind") == "Namespace":
            meta = raw.get("metadata") or {}
            with self._lock:
                self._namespaces = {**self._namespaces, str(meta.get("name", "")): dict(meta.get("labels") or {})}
            return
        try:
            obj = parse_object(raw)
        except FieldError as exc:
            log.warning("ignoring unparsable object", extra={"kind": raw.get("kind"), "error": str(exc)})
            return
        with self._lock:
            if isinstance(obj, EgressGateway):
                self._gateways = {**self._gateways, obj.metadata.name: obj}
            elif isinstance(obj, EgressPolicy):
                self._policies = {**self._policies, policy_key(obj): obj}
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
        self._policy_list = tuple(self._policies[k] for k in sorted(self._policies))
        index: dict[str, list[EgressPolicy]] = {}
        for policy in self._policy_list:
            index.setdefault("" if isinstance(policy, EgressClusterPolicy) else policy.metadata.namespace, []).append(policy)
        self._by_namespace = {k: tuple(v) for k, v in index.items()}


class InformerLike(Protocol):
    """The part of `egress_cni.k8s.Informer` the view uses."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def wait_synced(self, timeout: float) -> bool: ...

    @property
    def synced(self) -> bool: ...


class InformerView(MemoryView):
    """A MemoryView fed by informers (Namespaces, EgressGateways, both policy kinds).

    `on_change(kind)` returns the callback to hand to `Informer(..., on_change=...)`. A gateway
    looked up by name that the cache has not seen yet is read once from `fallback_get`: a policy
    applied right after its gateway must not be refused because a watch event is milliseconds late.
    """

    def __init__(self, fallback_get: Any = None) -> None:
        super().__init__()
        self._informers: list[InformerLike] = []
        self._fallback_get = fallback_get

    def on_change(self, kind: str) -> Any:
        def handle(key: str, _old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
            if new is None:
                self.remove(kind, key)
            else:
                # list items may omit apiVersion/kind; the informer's resource type says what they are
                self.upsert({"apiVersion": API_VERSION, "kind": kind, **new} if kind != "Namespace" else {**new, "kind": kind})
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

    def gateway(self, name: str) -> EgressGateway | None:
        found = super().gateway(name)
        if found is not None or self._fallback_get is None or not name:
            return found
        try:
            raw = self._fallback_get(name)
        except Exception:  # NotFound, or the API is unreachable: the cache's answer stands
            return None
        if isinstance(raw, Mapping):
            self.upsert(raw)
        return super().gateway(name)
