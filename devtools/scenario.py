"""Load a scenario directory (input.yaml objects + node.yaml facts) into compute's inputs.

Used by the golden tests, the netns tests and the benches, so they all feed `compute` the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml

from egress_cni.agent.sources import load_yaml_objects, state_from_objects
from egress_cni.dataplane.inputs import ClusterState, DataplaneConfig, LocalEndpoint, NodeFacts

FACT_FIELDS = ("name", "parent", "parent_ipv4", "parent_ipv6", "parent_mtu", "ipv4", "ipv6", "carrier", "parent_mac",
               "onlink", "rp_filter")
CONFIG_FIELDS = ("vxlan_mode",)  # DataplaneConfig fields a scenario may set (node.yaml `config:`)


def facts_from(raw: Mapping[str, Any]) -> NodeFacts:
    unknown = set(raw) - set(FACT_FIELDS) - {"endpoints", "config"}
    if unknown:
        raise ValueError(f"node facts: unknown keys {sorted(unknown)}; accepted: {', '.join(FACT_FIELDS)}, endpoints, config")
    given: dict[str, Any] = {k: tuple(raw[k]) if k == "onlink" else raw[k] for k in FACT_FIELDS if k in raw}
    return NodeFacts(**given)


def config_from(directory: str) -> DataplaneConfig:
    """The scenario's settings: node.yaml `config:` (e.g. {vxlan_mode: CrossSubnet}) over the defaults."""
    with open(os.path.join(directory, "node.yaml"), encoding="utf-8") as f:
        raw = (yaml.safe_load(f) or {}).get("config") or {}
    unknown = set(raw) - set(CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"node config: unknown keys {sorted(unknown)}; accepted: {', '.join(CONFIG_FIELDS)}")
    return DataplaneConfig(**raw)


def endpoints_from(raw: Mapping[str, Any]) -> tuple[LocalEndpoint, ...]:
    return tuple(LocalEndpoint.of(e["key"], e["namespace"], e["pod"], e.get("ipv4", ()), e.get("ipv6", ()),
                                     e.get("underlay", False))
                 for e in raw.get("endpoints") or ())


def load_scenario(directory: str) -> tuple[ClusterState, NodeFacts]:
    with open(os.path.join(directory, "node.yaml"), encoding="utf-8") as f:
        node = yaml.safe_load(f) or {}
    facts = facts_from(node)
    state = state_from_objects(load_yaml_objects([os.path.join(directory, "input.yaml")]), facts.name)
    return ClusterState(state.policies, state.gateways, state.slices, state.tunnels, state.cluster_info,
                        endpoints_from(node), state.pod_labels, state.namespace_labels), facts
