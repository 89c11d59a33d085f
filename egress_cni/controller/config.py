"""Controller settings: flags, with environment variables as defaults (for the Deployment)."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True)
class Config:
    kubeconfig: str | None = None
    namespace: str = "egressgateway-system"
    identity: str = ""
    leader_lease: str = "egressgateway-controller"
    leader_lease_seconds: int = 15
    agent_lease_prefix: str = "egress-agent-"
    agent_lease_grace: float = 0.0
    agent_stale_fraction: float = 0.5
    agent_stale_hold: float = 10.0
    tunnel_ipv4_subnet: str = "172.31.0.0/16"
    tunnel_ipv6_subnet: str = "fd11::/112"
    max_endpoints_per_slice: int = 100
    service_cidrs: tuple[str, ...] = ()
    resync_seconds: float = 60.0
    health_address: str = "0.0.0.0:8788"
    extra_addresses: tuple[str, ...] = ()  # --metrics-port: the same endpoints on another port


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _installation_settings(path: str | None) -> dict[str, Any]:
    """The shared installation ConfigMap (manifests/config.yaml), mapped to this controller's flags."""
    if not path:
        return {}
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    if not isinstance(raw, dict):
        raise SystemExit(f"--config {path}: expected a YAML mapping, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    if "tunnelIPv4Subnet" in raw:
        out["tunnel_ipv4_subnet"] = str(raw["tunnelIPv4Subnet"])
    if "tunnelIPv6Subnet" in raw:
        out["tunnel_ipv6_subnet"] = str(raw["tunnelIPv6Subnet"])
    if raw.get("enableIPv4") is False:
        out["tunnel_ipv4_subnet"] = ""
    if raw.get("enableIPv6") is False:
        out["tunnel_ipv6_subnet"] = ""
    if "maxEndpointsPerSlice" in raw:
        out["max_endpoints_per_slice"] = int(raw["maxEndpointsPerSlice"])
    return out


def parse_args(argv: Sequence[str] | None = None) -> Config:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    settings = _installation_settings(known.config)
    p = argparse.ArgumentParser(prog="egress-controller", description="EgressGateway cluster controller")
    p.add_argument("--config", help="installation settings YAML (tunnel subnets, maxEndpointsPerSlice); flags win")
    p.add_argument("--health-port", type=int, help="serve the probes and metrics on 0.0.0.0:PORT (overrides --health-address)")
    p.add_argument("--metrics-port", type=int, help="serve the same endpoints on this port too")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: $KUBECONFIG, else in-cluster")
    p.add_argument("--namespace", default=_env("EGRESS_NAMESPACE", Config.namespace))
    p.add_argument("--identity", default=_env("POD_NAME", f"{socket.gethostname()}_{os.getpid()}"),
                   help="leader-election holder identity")
    p.add_argument("--leader-lease", default=Config.leader_lease)
    p.add_argument("--leader-lease-seconds", type=int, default=int(_env("EGRESS_LEADER_LEASE_SECONDS", "15")))
    p.add_argument("--agent-lease-prefix", default=Config.agent_lease_prefix)
    p.add_argument("--agent-lease-grace", type=float, default=float(_env("EGRESS_AGENT_LEASE_GRACE", "0")),
                   help="seconds an agent Lease may be late before its node's EIPs move")
    p.add_argument("--agent-stale-fraction", type=float, default=float(_env("EGRESS_AGENT_STALE_FRACTION", "0.5")),
                   help="when more than this fraction of live agents stop renewing together, hold their EIPs "
                        "(the control plane is the likely laggard); 1 disables the hold")
    p.add_argument("--agent-stale-hold", type=float, default=float(_env("EGRESS_AGENT_STALE_HOLD", "10")),
                   help="seconds such agents are held alive before their EIPs move anyway")
    p.add_argument("--tunnel-ipv4-subnet", default=_env("EGRESS_TUNNEL_IPV4_SUBNET", settings.get("tunnel_ipv4_subnet", Config.tunnel_ipv4_subnet)))
    p.add_argument("--tunnel-ipv6-subnet", default=_env("EGRESS_TUNNEL_IPV6_SUBNET", settings.get("tunnel_ipv6_subnet", Config.tunnel_ipv6_subnet)))
    p.add_argument("--max-endpoints-per-slice", type=int,
                   default=int(_env("EGRESS_MAX_ENDPOINTS_PER_SLICE", str(settings.get("max_endpoints_per_slice", 100)))))
    p.add_argument("--service-cidr", action="append", default=[],
                   help="service CIDR to report when the API has no ServiceCIDR objects (repeatable)")
    p.add_argument("--resync-seconds", type=float, default=float(_env("EGRESS_RESYNC_SECONDS", "60")))
    p.add_argument("--health-address", default=_env("EGRESS_HEALTH_ADDRESS", Config.health_address),
                   help="host:port serving /healthz, /readyz and /metrics")
    a = p.parse_args(argv)
    if a.max_endpoints_per_slice < 1:
        p.error(f"--max-endpoints-per-slice must be at least 1, got {a.max_endpoints_per_slice}")
    if not 0 <= a.agent_stale_fraction <= 1:
        p.error(f"--agent-stale-fraction must be between 0 and 1, got {a.agent_stale_fraction}")
    if a.agent_stale_hold < 0:
        p.error(f"--agent-stale-hold must not be negative, got {a.agent_stale_hold}")
    if a.leader_lease_seconds < 1:
        p.error(f"--leader-lease-seconds must be at least 1, got {a.leader_lease_seconds}")
    return Config(
        kubeconfig=a.kubeconfig, namespace=a.namespace, identity=a.identity, leader_lease=a.leader_lease,
        leader_lease_seconds=a.leader_lease_seconds, agent_lease_prefix=a.agent_lease_prefix,
        agent_lease_grace=a.agent_lease_grace, agent_stale_fraction=a.agent_stale_fraction,
        agent_stale_hold=a.agent_stale_hold, tunnel_ipv4_subnet=a.tunnel_ipv4_subnet,
        tunnel_ipv6_subnet=a.tunnel_ipv6_subnet, max_endpoints_per_slice=a.max_endpoints_per_slice,
        service_cidrs=tuple(a.service_cidr), resync_seconds=a.resync_seconds,
        health_address=f"0.0.0.0:{a.health_port}" if a.health_port else a.health_address,
        extra_addresses=(f"0.0.0.0:{a.metrics_port}",) if a.metrics_port else (),
    )
