"""Generate manifests/crds/*.yaml: one CRD per kind with a structural OpenAPI v3 schema.

Run `python hack/gen_crds.py` after changing a schema; tests/unit/test_crds.py fails when the files
are stale. Names, short names, categories and printer columns follow the reference API; we add
status.conditions and status.observedGeneration on EgressGateway and both policy kinds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

GROUP = "egressgateway.spidernet.io"
OUT = Path(__file__).resolve().parent.parent / "manifests" / "crds"

Schema = dict[str, Any]


def string(**extra: Any) -> Schema:
    return {"type": "string", **extra}


def boolean(**extra: Any) -> Schema:
    return {"type": "boolean", **extra}


def integer(**extra: Any) -> Schema:
    return {"type": "integer", "format": "int64", **extra}


def strings(**extra: Any) -> Schema:
    return {"type": "array", "items": {"type": "string"}, **extra}


def obj(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        out["required"] = required
    return out


LABEL_SELECTOR = obj(
    {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": obj(
                {"key": string(), "operator": string(enum=["In", "NotIn", "Exists", "DoesNotExist"]), "values": strings()},
                required=["key", "operator"],
            ),
        },
    },
    **{"x-kubernetes-map-type": "atomic"},
)

CONDITIONS = {
    "type": "array",
    "items": obj(
        {
            "type": string(maxLength=316),
            "status": string(enum=["True", "False", "Unknown"]),
            "reason": string(maxLength=1024),
            "message": string(maxLength=32768),
            "lastTransitionTime": string(format="date-time"),
            "observedGeneration": integer(minimum=0),
        },
        required=["type", "status"],
    ),
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}

IP_LISTS = obj({"ipv4": strings(), "ipv6": strings()})

GATEWAY = obj({
    "spec": obj({
        "clusterDefault": boolean(description="At most one gateway of the cluster is the default for policies that name none."),
        "ippools": obj({
            "ipv4": strings(description="Egress IPs: single IPs, a-b ranges or CIDRs (an IPv4 CIDR excludes its network and broadcast address)."),
            "ipv6": strings(description="Egress IPv6 addresses, same forms as ipv4."),
            "ipv4DefaultEIP": string(description="Filled by the webhook when empty."),
            "ipv6DefaultEIP": string(),
        }),
        "nodeSelector": obj({"policy": string(), "selector": LABEL_SELECTOR}),
        "namespaceSelector": {**LABEL_SELECTOR, "description": (
            "The namespaces whose EgressPolicies may use this gateway; absent: every namespace. "
            "EgressClusterPolicies may always use it.")},
    }),
    "status": obj({
        "nodeList": {"type": "array", "items": obj({
            "name": string(),
            "status": string(),
            "eips": {"type": "array", "items": obj({
                "ipv4": string(),
                "ipv6": string(),
                "policies": {"type": "array", "items": obj({"name": string(), "namespace": string()})},
                "standbys": strings(description="Nodes that take this EIP over when its node is lost, first alive first."),
            })},
        }, required=["name"])},
        "ipUsage": obj({k: integer() for k in ("ipv4Total", "ipv4Free", "ipv6Total", "ipv6Free")}),
        "conditions": CONDITIONS,
        "observedGeneration": integer(),
    }),
})


def policy(cluster: bool) -> Schema:
    applied_to: dict[str, Schema] = {"podSelector": LABEL_SELECTOR, "podSubnet": strings()}
    if cluster:
        applied_to["namespaceSelector"] = LABEL_SELECTOR
    return obj({
        "spec": obj({
            "egressGatewayName": string(description="Defaulted by the webhook (namespace label, then the cluster default). Immutable."),
            "egressIP": obj(
                {
                    "ipv4": string(),
                    "ipv6": string(),
                    "useNodeIP": boolean(default=False),
                    "allocatorPolicy": string(default="default", enum=["default", "rr"]),
                },
                default={"allocatorPolicy": "default", "useNodeIP": False},
            ),
            "appliedTo": obj(applied_to),
            "destSubnet": strings(description="Destination CIDRs; empty means every destination outside the cluster."),
            "priority": integer(minimum=0, description="When policies select the same traffic the lowest value wins; no value comes last."),
        }, required=["appliedTo"]),
        "status": obj({
            "eip": obj({"ipv4": string(), "ipv6": string()}),
            "node": string(),
            "conditions": CONDITIONS,
            "observedGeneration": integer(),
        }),
    }, required=["spec"])


ENDPOINT_SLICE = obj({
    "endpoints": {"type": "array", "items": obj({
        "ns": string(), "pod": string(), "node": string(), "ipv4": strings(), "ipv6": strings(),
    })},
})

TUNNEL = obj({
    "spec": {"type": "object"},
    "status": obj({
        "tunnel": obj({
            "ipv4": string(), "ipv6": string(), "mac": string(),
            "parent": obj({"name": string(), "ipv4": string(), "ipv6": string()}),
        }),
        "phase": string(enum=["Pending", "Init", "Failed", "Ready", "HeartbeatTimeout", "NodeNotReady"]),
        "mark": string(),
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
        "extraCidr": strings(description="In-cluster destinations never steered to a gateway: IPs or CIDRs."),
    }),
    "status": obj({
        "podCidrMode": string(),
        "nodeIP": {"type": "object", "additionalProperties": IP_LISTS},
        "clusterIP": IP_LISTS,
        "podCIDR": {"type": "object", "additionalProperties": IP_LISTS},
        "extraCidr": strings(),
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
