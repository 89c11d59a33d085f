"""Validation of EgressGateway (reference §2.2, with its fixes). DELETE is always allowed:
the controller's finalizer holds a referenced gateway until its policies are gone."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from egress_cni.api import semantics
from egress_cni.api.errors import FieldError
from egress_cni.api.model import LABEL_NAMESPACE_DEFAULT_GATEWAY, EgressClusterInfo, EgressGateway, parse_as
from egress_cni.api.names import is_label_value
from egress_cni.api.net import Cidr
from egress_cni.api.pools import IPPool, IPRange, pool_of
from webhook.admission import AdmissionRequest, Denial
from webhook.config import WebhookConfig
from webhook.subnets import schema_denial
from webhook.view import ClusterView

POOLS = "spec.ippools"


def validate_gateway(request: AdmissionRequest, view: ClusterView, config: WebhookConfig) -> list[Denial]:
    if request.operation not in ("CREATE", "UPDATE") or request.obj is None:
        return []
    try:
        gateway = parse_as(EgressGateway, request.obj)
    except FieldError as exc:
        return [schema_denial("gateway-schema", exc)]
    old = None
    if request.operation == "UPDATE" and request.old is not None:
        try:
            old = parse_as(EgressGateway, request.old)
        except FieldError:
            old = None  # an old object we cannot read cannot constrain the new one

    denials = _selector(gateway)
    denials += _families(gateway, config)
    if denials:
        return denials
    pools, denials = _pools(gateway)
    if denials:
        return denials
    denials += _cluster_default(gateway, view)
    denials += _pairing(pools, config)
    denials += _default_eips(gateway, pools)
    denials += _duplicates(gateway, pools, view)
    denials += _cluster_addresses(pools, view.cluster_info())
    denials += _excluded_policies(gateway, view)
    denials += _label_name(gateway)
    if old is not None:
        denials += _update(old, pools, view)
    return denials


def _label_name(gateway: EgressGateway) -> list[Denial]:
    """A name longer than a label value cannot be a namespace's default gateway (admitted: policies
    can still name it, or it can be the cluster default)."""
    name = gateway.metadata.name
    if not name or is_label_value(name):
        return []
    return [Denial("gateway-name-not-a-label", "metadata.name", f"{len(name)} characters",
                   f"is longer than 63 characters, so no namespace can choose it with the label "
                   f"{LABEL_NAMESPACE_DEFAULT_GATEWAY}=<gateway>; name it in spec.egressGatewayName or make it "
                   "the cluster default", warning=True)]


def _selector(gateway: EgressGateway) -> list[Denial]:
    selector = gateway.spec.node_selector.selector
    if selector is None or selector.empty:
        return [Denial("gateway-node-selector", "spec.nodeSelector.selector", None if selector is None else {},
                       "must select the gateway nodes with matchLabels or matchExpressions, e.g. matchLabels: {egressgateway: \"true\"}")]
    return []


def _families(gateway: EgressGateway, config: WebhookConfig) -> list[Denial]:
    denials = []
    ippools = gateway.spec.ippools
    for version, entries, default in ((4, ippools.ipv4, ippools.ipv4_default_eip), (6, ippools.ipv6, ippools.ipv6_default_eip)):
        if config.family_enabled(version):
            continue
        if entries:
            denials.append(Denial("family-not-enabled", f"{POOLS}.ipv{version}", list(entries),
                                  f"IPv{version} is not enabled in this installation (EGRESS_ENABLE_IPV{version}=false); remove it or enable IPv{version}"))
        if default:
            denials.append(Denial("family-not-enabled", f"{POOLS}.ipv{version}DefaultEIP", default,
                                  f"IPv{version} is not enabled in this installation; leave it empty"))
    return denials


def _pools(gateway: EgressGateway) -> tuple[dict[int, IPPool], list[Denial]]:
    """The pools the model parsed (an entry that does not parse was refused as gateway-pool-syntax)."""
    return {4: gateway.spec.ippools.pool(4), 6: gateway.spec.ippools.pool(6)}, []


def _cluster_default(gateway: EgressGateway, view: ClusterView) -> list[Denial]:
    if not gateway.spec.cluster_default:
        return []
    others = [g.metadata.name for g in view.gateways() if g.spec.cluster_default and g.metadata.name != gateway.metadata.name]
    if others:
        return [Denial("gateway-cluster-default", "spec.clusterDefault", True,
                       f"EgressGateway {others[0]} is already the cluster default and a cluster has only one; "
                       f"set clusterDefault: false here or on {others[0]} first")]
    return []


def _pairing(pools: dict[int, IPPool], config: WebhookConfig) -> list[Denial]:
    v4, v6 = pools[4], pools[6]
    if config.dual_stack and v4 and v6 and v4.count != v6.count:
        return [Denial("gateway-pool-pairing", POOLS, {"ipv4": v4.count, "ipv6": v6.count},
                       f"the IPv4 pool holds {v4.count} addresses and the IPv6 pool {v6.count}; a dual-stack gateway pairs "
                       "them one to one, so give both the same number of addresses (or leave one family empty)")]
    return []


def _default_eips(gateway: EgressGateway, pools: dict[int, IPPool]) -> list[Denial]:
    denials = []
    for version, default in ((4, gateway.spec.ippools.ipv4_default_eip), (6, gateway.spec.ippools.ipv6_default_eip)):
        if not default:
            continue
        path = f"{POOLS}.ipv{version}DefaultEIP"
        if not pools[version].contains(default):
            denials.append(Denial("gateway-default-eip", path, default,
                                  f"is not in {POOLS}.ipv{version} ({pools[version]}); pick an address of the pool or leave it empty"))
    return denials


def _duplicates(gateway: EgressGateway, pools: dict[int, IPPool], view: ClusterView) -> list[Denial]:
    """An address may belong to one gateway only; intervals are compared, never enumerated."""
    denials = []
    for other in view.gateways():
        if other.metadata.name == gateway.metadata.name:
            continue
        for version in (4, 6):
            theirs = other.spec.ippools.pool(version)  # parsed once, with the object
            shared = pools[version].intersection(theirs)
            if shared:
                denials.append(Denial("gateway-pool-duplicate", f"{POOLS}.ipv{version}", list(_entries(gateway, version)),
                                      f"{shared} already belongs to EgressGateway {other.metadata.name}; an EIP can belong to one gateway only"))
    return denials


def _excluded_policies(gateway: EgressGateway, view: ClusterView) -> list[Denial]:
    """A warning, not a denial, when spec.namespaceSelector leaves out namespaces whose EgressPolicies
    use the gateway: narrowing who may use a gateway is the admin's call; the controller takes those
    policies' EIPs away (Ready=False NamespaceNotAllowed) and their traffic is dropped, not leaked."""
    selector = gateway.spec.namespace_selector
    if selector is None:
        return []
    name = gateway.metadata.name
    refused = sorted(p.metadata.key for p in view.policies()
                     if p.NAMESPACED and p.spec.egress_gateway_name == name
                     and not semantics.gateway_admits(gateway, p, view.namespace_labels(p.metadata.namespace)))
    if not refused:
        return []
    shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
    return [Denial("gateway-namespace-excludes", "spec.namespaceSelector", selector.to_dict(),
                   f"leaves out the namespaces of {len(refused)} EgressPolicies that use EgressGateway {name} ({shown}); "
                   "they lose their EIPs (Ready=False NamespaceNotAllowed) and their traffic is dropped", warning=True)]


def _span_pool(cidrs: Iterable[Cidr], version: int) -> IPPool:
    return IPPool.of(version, (IPRange(c.first, c.last, version) for c in cidrs if c.family == version))


def _cluster_addresses(pools: dict[int, IPPool], info: EgressClusterInfo | None) -> list[Denial]:
    """An EIP must not be an address the cluster already uses: a node's IP is refused (claiming it
    would take the node's own address off it); a service or pod CIDR is a warning (the detection in
    EgressClusterInfo may include ranges that are not routed here)."""
    if info is None:
        return []
    status = info.status
    node_ips = [c for lists in status.node_ip.values() for c in lists.ipv4 + lists.ipv6]
    ranges = [*status.cluster_ip.ipv4, *status.cluster_ip.ipv6,
              *(c for lists in status.pod_cidr.values() for c in lists.ipv4 + lists.ipv6)]
    out = []
    for version in (4, 6):
        path = f"{POOLS}.ipv{version}"
        taken = pools[version].intersection(_span_pool(node_ips, version))
        if taken:
            out.append(Denial("gateway-pool-cluster", path, pools[version].to_strings(),
                              f"{taken} is a node address (EgressClusterInfo default status.nodeIP); an EIP the gateway "
                              "claims would be taken off that node; use addresses no node, pod or service has"))
        inside = pools[version].intersection(_span_pool(ranges, version))
        if inside:
            out.append(Denial("gateway-pool-cluster", path, pools[version].to_strings(),
                              f"{inside} lies inside the cluster's service or pod CIDRs (EgressClusterInfo default); "
                              "traffic to it is in-cluster traffic, so it will not work as an EIP", warning=True))
    return out


def _entries(gateway: EgressGateway, version: int) -> Sequence[str]:
    return gateway.spec.ippools.ipv4 if version == 4 else gateway.spec.ippools.ipv6


def _update(old: EgressGateway, pools: dict[int, IPPool], view: ClusterView) -> list[Denial]:
    """Pools may grow and shrink, but a family cannot appear later and an EIP in use cannot go."""
    denials = []
    for version in (4, 6):
        path = f"{POOLS}.ipv{version}"
        if not _entries(old, version) and pools[version]:
            denials.append(Denial("gateway-family-added", path, str(pools[version]),
                                  f"IPv{version} addresses cannot be added to a gateway created without them; "
                                  f"create a new EgressGateway for IPv{version}"))
            continue
        in_use = _in_use(old, version, view)
        gone = in_use.difference(pools[version]) if in_use else in_use
        if gone:
            denials.append(Denial("gateway-eip-in-use", path, pools[version].to_strings(),
                                  f"{gone} is allocated to policies and cannot be removed from the pool; "
                                  "keep it in the pool or delete the policies that use it first"))
    return denials


def _in_use(old: EgressGateway, version: int, view: ClusterView) -> IPPool:
    """Allocated EIPs from the OLD object's status, plus EIPs policies of this gateway name explicitly."""
    used = semantics.allocated_eips(old, version)
    attr = "ipv4" if version == 4 else "ipv6"
    named = [getattr(p.spec.eip, attr) for p in view.policies()
             if p.spec.egress_gateway_name == old.metadata.name and getattr(p.spec.eip, attr)]
    try:
        return used.union(pool_of(named, version))
    except ValueError:
        return used
