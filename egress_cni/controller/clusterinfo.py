"""EgressClusterInfo `default` status (pure): the in-cluster destinations that a policy with an
empty `destSubnet` must not send to a gateway.

- `nodeIP`: every Node's InternalIP addresses (when `autoDetect.nodeIP`).
- `clusterIP`: the service CIDRs (when `autoDetect.clusterIP`), read from the API rather than from
  kube-controller-manager flags: the `networking.k8s.io/v1` ServiceCIDR objects (the API server
  creates `kubernetes` from its `--service-cluster-ip-range`); on servers without that API, the
  controller's `--service-cidr` flag, else the `kubernetes` Service's ClusterIPs as single-address
  CIDRs (an honest under-approximation: the mask is not published anywhere else).
- `podCIDR`: key `k8s` = the union of `Node.spec.podCIDRs`; plus one key per Calico IPPool when
  that CRD exists. `podCidrMode` `auto` reports both, `k8s` / `calico` one, `""` none; the status
  records the effective mode (`auto` resolves to `calico` when Calico pools exist, else `k8s`).
- `extraCidr`: mirrored from the spec, bare IPs and CIDRs alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from egress_cni.api.meta import LENIENT
from egress_cni.api.model import ClusterInfoSpec, ClusterInfoStatus, IPLists
from egress_cni.api.net import AddressError, Cidr, parse_cidr


def split_families(values: Iterable[str]) -> IPLists:
    """Addresses and CIDRs read from Nodes, Services and Calico pools, by family; text that is
    neither (another controller's bug) is left out rather than failing the whole status."""
    v4: list[Cidr] = []
    v6: list[Cidr] = []
    for value in values:
        try:
            cidr = parse_cidr(str(value).strip(), LENIENT)
        except AddressError:
            continue
        target = v4 if cidr.family == 4 else v6
        if cidr not in target:
            target.append(cidr)
    return IPLists(tuple(v4), tuple(v6))


def node_internal_ips(node: Mapping[str, Any]) -> IPLists:
    addresses = (node.get("status") or {}).get("addresses") or []
    return split_families(a.get("address", "") for a in addresses if a.get("type") == "InternalIP")


def service_cidrs(service_cidr_objects: Sequence[Mapping[str, Any]] | None, flag: Sequence[str],
                  kubernetes_service: Mapping[str, Any] | None) -> IPLists:
    if service_cidr_objects:
        return split_families(c for o in service_cidr_objects for c in (o.get("spec") or {}).get("cidrs") or [])
    if flag:
        return split_families(flag)
    if kubernetes_service is not None:
        spec = kubernetes_service.get("spec") or {}
        ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
        return split_families(f"{ip}/{32 if ':' not in ip else 128}" for ip in ips if ip and ip != "None")
    return IPLists()


def cluster_info_status(spec: ClusterInfoSpec, nodes: Sequence[Mapping[str, Any]], cluster_ip: IPLists,
                        calico_pools: Sequence[Mapping[str, Any]] | None) -> ClusterInfoStatus:
    """`calico_pools` is None when the Calico IPPool CRD does not exist."""
    node_ip = {}
    if spec.node_ip:
        for node in nodes:
            ips = node_internal_ips(node)
            if ips.ipv4 or ips.ipv6:
                node_ip[str((node.get("metadata") or {}).get("name", ""))] = ips
    mode = spec.pod_cidr_mode
    effective = ("calico" if calico_pools else "k8s") if mode == "auto" else mode
    pod_cidr: dict[str, IPLists] = {}
    if mode in ("auto", "k8s"):
        k8s = split_families(c for n in nodes for c in (n.get("spec") or {}).get("podCIDRs") or [])
        if k8s.ipv4 or k8s.ipv6:
            pod_cidr["k8s"] = k8s
    if mode in ("auto", "calico"):
        for pool in calico_pools or []:
            cidr = str((pool.get("spec") or {}).get("cidr", ""))
            lists = split_families([cidr])
            if lists.ipv4 or lists.ipv6:
                pod_cidr[str((pool.get("metadata") or {}).get("name", ""))] = lists
    return ClusterInfoStatus(
        pod_cidr_mode=effective,
        node_ip=node_ip,
        cluster_ip=cluster_ip if spec.cluster_ip else IPLists(),
        pod_cidr=pod_cidr,
        extra_cidr=spec.extra_cidr,
    )
