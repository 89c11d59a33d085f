"""Generate the CRDs (manifests/chart/egressgateway/crds/*.yaml, also reached as manifests/crds): one CRD per kind with a structural OpenAPI v3 schema.

Run `python hack/gen_crds.py` after changing a schema; tests/unit/test_crds.py fails when the files
are stale. Names, short names, categories and printer columns follow the reference API; we add
status.conditions and status.observedGeneration on EgressGateway and both policy kinds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the bounds of this checkout, whatever package is installed
from egress_cni.api import limits as L  # noqa: E402

GROUP = "egressgateway.spidernet.io"
OUT = ROOT / "manifests" / "chart" / "egressgateway" / "crds"  # manifests/crds links here: one copy

Schema = dict[str, Any]


def string(**extra: Any) -> Schema:
    return {"type": "string", **extra}


def boolean(**extra: Any) -> Schema:
    return {"type": "boolean", **extra}


def integer(**extra: Any) -> Schema:
    return {"type": "integer", "format": "int64", **extra}


def strings(max_items: int, max_length: int, **extra: Any) -> Schema:
    """A bounded list of bounded strings (api/limits.py)."""
    return {"type": "array", "maxItems": max_items, "items": {"type": "string", "maxLength": max_length}, **extra}


def array(items: Schema, max_items: int, **extra: Any) -> Schema:
    return {"type": "array", "maxItems": max_items, "items": items, **extra}


def obj(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        out["required"] = required
    return out


LABEL_SELECTOR = obj(
    {
        "matchLabels": {"type": "object", "additionalProperties": string(maxLength=L.LABEL_VALUE)},
        "matchExpressions": array(obj(
            {"key": string(maxLength=L.LABEL_KEY), "operator": string(enum=["In", "NotIn", "Exists", "DoesNotExist"]),
             "values": strings(L.SELECTOR_VALUES, L.LABEL_VALUE)},
            required=["key", "operator"],
        ), L.SELECTOR_EXPRESSIONS),
    },
    **{"x-kubernetes-map-type": "atomic"},
)

CONDITIONS = {
    "type": "array",
    "maxItems": L.CONDITIONS,
    "items": obj(
        {
            "type": string(maxLength=L.CONDITION_TYPE),
            "status": string(enum=["True", "False", "Unknown"]),
            "reason": string(maxLength=L.CONDITION_REASON),
            "message": string(maxLength=L.CONDITION_MESSAGE),
            "lastTransitionTime": string(format="date-time"),
            "observedGeneration": integer(minimum=0),
        },
        required=["type", "status"],
    ),
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}

IP_LISTS = obj({"ipv4": strings(L.CIDRS, L.CIDR), "ipv6": strings(L.CIDRS, L.CIDR)})

GATEWAY = obj({
    "spec": obj({
        "clusterDefault": boolean(description="At most one gateway of the cluster is the default for policies that name none."),
        "ippools": obj({
            "ipv4": strings(L.CIDRS, L.IP_RANGE, description=(
                "Egress IPs: single IPs, a-b ranges or CIDRs (an IPv4 CIDR excludes its network and broadcast address).")),
            "ipv6": strings(L.CIDRS, L.IP_RANGE, description="Egress IPv6 addresses, same forms as ipv4."),
            "ipv4DefaultEIP": string(maxLength=L.IP, description="Filled by the webhook when empty."),
            "ipv6DefaultEIP": string(maxLength=L.IP),
        }),
        "nodeSelector": obj({"policy": string(maxLength=L.WORD), "selector": LABEL_SELECTOR}),
        "namespaceSelector": {**LABEL_SELECTOR, "description": (
            "The namespaces whose EgressPolicies may use this gateway; absent: every namespace. "
            "EgressClusterPolicies may always use it.")},
    }),
    "status": obj({
        "nodeList": array(obj({
            "name": string(maxLength=L.NAME),
            "status": string(maxLength=L.WORD),
            "eips": array(obj({
                "ipv4": string(maxLength=L.IP),
                "ipv6": string(maxLength=L.IP),
                "policies": array(obj({"name": string(maxLength=L.NAME), "namespace": string(maxLength=L.NAMESPACE)}),
                                  L.POLICIES_PER_EIP),
                "standbys": strings(L.NODES, L.NAME, description="Nodes that take this EIP over when its node is lost, first alive first."),
            }), L.EIPS_PER_NODE),
        }, required=["name"]), L.NODES),
        "ipUsage": obj({k: integer() for k in ("ipv4Total", "ipv4Free", "ipv6Total", "ipv6Free")}),
        "conditions": CONDITIONS,
        "observedGeneration": integer(),
    }),
})


def policy(cluster: bool) -> Schema:
    applied_to: dict[str, Schema] = {"podSelector": LABEL_SELECTOR, "podSubnet": strings(L.CIDRS, L.CIDR)}
    if cluster:
        applied_to["namespaceSelector"] = LABEL_SELECTOR
    return obj({
        "spec": obj({
            "egressGatewayName": string(maxLength=L.NAME, description=(
                "Defaulted by the webhook (namespace label, then the cluster default). Immutable.")),
            "egressIP": obj(
                {
                    "ipv4": string(maxLength=L.IP),
                    "ipv6": string(maxLength=L.IP),
                    "useNodeIP": boolean(default=False),
                    "allocatorPolicy": string(default="default", enum=["default", "rr"]),
                },
                default={"allocatorPolicy": "default", "useNodeIP": False},
            ),
            "appliedTo": obj(applied_to),
            "destSubnet": strings(L.CIDRS, L.CIDR, description="Destination CIDRs; empty means every destination outside the cluster."),
            "priority": integer(minimum=0, description="When policies select the same traffic the lowest value wins; no value comes last."),
        }, required=["appliedTo"]),
        "status": obj({
            "eip": obj({"ipv4": string(maxLength=L.IP), "ipv6": string(maxLength=L.IP)}),
            "node": string(maxLength=L.NAME),
            "conditions": CONDITIONS,
            "observedGeneration": integer(),
        }),
    }, required=["spec"])


ENDPOINT_SLICE = obj({
    "endpoints": array(obj({
        "ns": string(maxLength=L.NAMESPACE), "pod": string(maxLength=L.NAME), "node": string(maxLength=L.NAME),
        "ipv4": strings(L.IPS_PER_ENDPOINT, L.IP), "ipv6": strings(L.IPS_PER_ENDPOINT, L.IP),
    }), L.ENDPOINTS_PER_SLICE),
})

TUNNEL = obj({
    "spec": {"type": "object"},
    "status": obj({
        "tunnel": obj({
            "ipv4": string(maxLength=L.IP), "ipv6": string(maxLength=L.IP), "mac": string(maxLength=L.MAC),
            "parent": obj({"name": string(maxLength=L.IFNAME), "ipv4": string(maxLength=L.IP), "ipv6": string(maxLength=L.IP),
                            "mac": string(maxLength=L.MAC)}),
        }),
        "phase": string(enum=["Pending", "Init", "Failed", "Ready", "HeartbeatTimeout", "NodeNotReady"]),
        "mark": string(maxLength=L.MARK),
        "lastHeartbeatTime": string(format="date-time"),
    }),
})

CLUSTER_INFO = obj({
    "spec": obj({
        "autoDetect": obj({
            "podCidrMode": string(default="auto", enum=["auto", "calico", "k8s", ""]),
            "clusterIP": boolean(default=True),
            "nodeIP": boolean(default=True),
        }, default={"podCidrMode": "auto", "clusterIP": True, "nodeIP": True}),
        "extraCidr": strings(L.CIDRS, L.CIDR, description="In-cluster destinations never steered to a gateway: IPs or CIDRs."),
    }),
    "status": obj({
        "podCidrMode": string(maxLength=L.WORD),
        "nodeIP": {"type": "object", "maxProperties": L.NODES, "additionalProperties": IP_LISTS},
        "clusterIP": IP_LISTS,
        "podCIDR": {"type": "object", "maxProperties": L.POD_CIDR_SOURCES, "additionalProperties": IP_LISTS},
        "extraCidr": strings(L.CIDRS, L.CIDR),
    }),
})


def col(name: str, path: str, type_: str = "string", priority: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        out["priority"] = priority
    return out


READY = col("ready", '.status.conditions[?(@.type=="Ready")].status', priority=1)
POLICY_COLUMNS = [col("gateway", ".spec.egressGatewayName"), col("ipv4", ".status.eip.ipv4"), col("ipv6", ".status.eip.ipv6")]

KINDS: list[tuple[str, str, str, bool, str, Schema, list[dict[str, Any]]]] = [
    ("EgressGateway", "egressgateways", "egw", False, "egressgateway", GATEWAY, [
        col("ipv4DefaultEIP", ".spec.ippools.ipv4DefaultEIP"),
        col("ipv6DefaultEIP", ".spec.ippools.ipv6DefaultEIP"),
        col("clusterDefault", ".spec.clusterDefault", "boolean"),
        *(col(k, f".status.ipUsage.{k}", "integer") for k in ("ipv4Total", "ipv4Free", "ipv6Total", "ipv6Free")),
        READY,
    ]),
    ("EgressPolicy", "egresspolicies", "egp", True, "egresspolicy", policy(cluster=False),
     [*POLICY_COLUMNS, col("egressNode", ".status.node"), READY]),
    ("EgressClusterPolicy", "egressclusterpolicies", "egcp", False, "egressclusterpolicy", policy(cluster=True),
     [*POLICY_COLUMNS, col("egressTunnel", ".status.node"), READY]),
    ("EgressEndpointSlice", "egressendpointslices", "egep", True, "egressendpointslice", ENDPOINT_SLICE, []),
    ("EgressClusterEndpointSlice", "egressclusterendpointslices", "egcep", False, "egressclusterendpointslice", ENDPOINT_SLICE, []),
    ("EgressTunnel", "egresstunnels", "egt", False, "egresstunnel", TUNNEL, [
        col("tunnelMac", ".status.tunnel.mac"), col("tunnelIPv4", ".status.tunnel.ipv4"),
        col("tunnelIPv6", ".status.tunnel.ipv6"), col("mark", ".status.mark"), col("phase", ".status.phase"),
    ]),
    ("EgressClusterInfo", "egressclusterinfos", "egci", False, "egressclusterinfo", CLUSTER_INFO, []),
]


def crd(kind: str, plural: str, short: str, namespaced: bool, category: str, schema: Schema,
        columns: list[dict[str, Any]]) -> dict[str, Any]:
    version: dict[str, Any] = {
        "name": "v1beta1",
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"apiVersion": string(), "kind": string(), "metadata": {"type": "object"}, **schema["properties"]},
            **({"required": schema["required"]} if "required" in schema else {}),
        }},
        "subresources": {"status": {}},
    }
    if columns:
        version["additionalPrinterColumns"] = [*columns, col("age", ".metadata.creationTimestamp", "date")]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": [short], "categories": [category]},
            "scope": "Namespaced" if namespaced else "Cluster",
            "versions": [version],
        },
    }


def render() -> dict[str, str]:
    files = {}
    for kind, plural, *rest in KINDS:
        doc = crd(kind, plural, *rest)
        files[f"{GROUP}_{plural}.yaml"] = "# Generated by hack/gen_crds.py; do not edit.\n" + yaml.safe_dump(doc, sort_keys=False)
    return files


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
    print(f"wrote {len(KINDS)} CRDs to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
