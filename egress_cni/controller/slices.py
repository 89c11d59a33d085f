"""Endpoint slices of a policy (pure): which pods it selects, and the slice writes that get the
API from what exists to that, with the least churn.

A policy selects pods either by `appliedTo.podSelector` (in its own namespace for an EgressPolicy;
in the namespaces matching `namespaceSelector`, or all, for an EgressClusterPolicy) or by
`appliedTo.podSubnet` (pods with an IP inside one of the subnets — the reference accepts this field
but never implements it). Pods without IPs and finished pods are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from egress_cni.api import semantics
from egress_cni.api.meta import settle
from egress_cni.api.model import EgressPolicy, Endpoint
from egress_cni.api.net import IP, AddressError, as_ips, parse_ip


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    node: str = ""
    ipv4: tuple[IP, ...] = ()
    ipv6: tuple[IP, ...] = ()

    def __post_init__(self) -> None:
        settle(self, ipv4=as_ips(self.ipv4, 4), ipv6=as_ips(self.ipv6, 6))

    @classmethod
    def from_raw(cls, raw: Mapping[str, object]) -> PodView | None:
        """None for pods that cannot carry traffic: no IPs yet, or finished."""
        meta = raw.get("metadata") or {}
        spec = raw.get("spec") or {}
        status = raw.get("status") or {}
        assert isinstance(meta, Mapping) and isinstance(spec, Mapping) and isinstance(status, Mapping)
        if status.get("phase") in ("Succeeded", "Failed"):
            return None
        ips = [str(p.get("ip", "")) for p in status.get("podIPs") or [] if isinstance(p, Mapping)]
        if not ips and status.get("podIP"):
            ips = [str(status["podIP"])]
        v4: list[IP] = []
        v6: list[IP] = []
        for text in ips:
            try:
                ip = parse_ip(text)
            except AddressError:
                continue  # the API server validates pod IPs; a bad one cannot be programmed anyway
            (v4 if ip.family == 4 else v6).append(ip)
        if not v4 and not v6:
            return None
        return cls(str(meta.get("namespace", "")), str(meta.get("name", "")), dict(meta.get("labels") or {}),
                   str(spec.get("nodeName", "")), tuple(v4), tuple(v6))

    def endpoint(self) -> Endpoint:
        return Endpoint(self.namespace, self.name, self.node, self.ipv4, self.ipv6)


def selected_pods(policy: EgressPolicy, pods_by_namespace: Mapping[str, Mapping[str, PodView]],
                  namespaces: Mapping[str, Mapping[str, str]]) -> list[Endpoint]:
    """Endpoints of the pods `policy` selects (`semantics.selects`), sorted by (namespace, pod)."""
    if policy.NAMESPACED:
        scope = [policy.metadata.namespace]
    else:
        scope = [ns for ns in pods_by_namespace if semantics.in_scope(policy, ns, namespaces.get(ns, {}))]
    out: list[Endpoint] = []
    for ns in scope:
        ns_labels = namespaces.get(ns, {})
        out.extend(pod.endpoint() for pod in pods_by_namespace.get(ns, {}).values()
                   if semantics.selects(policy, ns, pod.labels, ns_labels, pod.ipv4 + pod.ipv6))
    return sorted(out, key=lambda e: (e.ns, e.pod))


@dataclass(frozen=True)
class SliceWrite:
    """One write: create (name ""), update (name set, endpoints) or delete (name set, delete=True)."""

    name: str
    endpoints: tuple[Endpoint, ...] = ()
    delete: bool = False


def plan_slices(desired: Sequence[Endpoint], existing: Mapping[str, Sequence[Endpoint]], max_per_slice: int) -> list[SliceWrite]:
    """Writes that turn `existing` (slice name -> endpoints) into slices holding exactly `desired`.

    Endpoints stay in the slice that already holds them (updated in place when their IPs or node
    changed); new ones fill free room before new slices are created; emptied slices are deleted.
    """
    want = {(e.ns, e.pod): e for e in desired}
    placed: set[tuple[str, str]] = set()
    contents: dict[str, list[Endpoint]] = {}
    for name in sorted(existing):
        kept: list[Endpoint] = []
        for e in existing[name]:
            key = (e.ns, e.pod)
            if key in want and key not in placed and len(kept) < max_per_slice:
                kept.append(want[key])
                placed.add(key)
        contents[name] = kept
    pending = [e for key, e in want.items() if key not in placed]
    for name in sorted(contents):
        room = max_per_slice - len(contents[name])
        if room > 0 and pending and contents[name]:
            contents[name].extend(pending[:room])
            pending = pending[room:]
    writes: list[SliceWrite] = []
    for name in sorted(contents):
        if not contents[name]:
            if pending:  # reuse an empty slice rather than delete one and create another
                contents[name], pending = pending[:max_per_slice], pending[max_per_slice:]
            else:
                writes.append(SliceWrite(name, delete=True))
                continue
        if tuple(contents[name]) != tuple(existing[name]):
            writes.append(SliceWrite(name, tuple(contents[name])))
    for i in range(0, len(pending), max_per_slice):
        writes.append(SliceWrite("", tuple(pending[i:i + max_per_slice])))
    return writes
