"""Controller settings: flags > environment variables > the installation file (--config) > defaults.

The installation file is read by `egress_cni.settings` (the same reader as the agent's and the
webhook's); this module takes the controller's part of it and layers the flags and variables over it.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from egress_cni import logs, settings
from egress_cni.api import limits

T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    kubeconfig: str | None = None
    namespace: str = "egressgateway-system"
    identity: str = ""
    leader_lease: str = "egressgateway-controller"
    leader_lease_seconds: int = 15
    leader_renew_deadline: float = 0.0  # 0: two thirds of the lease (client-go's 10 s of 15)
    agent_lease_prefix: str = "egress-agent-"
    agent_lease_grace: float = 0.0
    agent_stale_fraction: float = 0.5
    agent_stale_hold: float = 10.0
    tunnel_ipv4_subnet: str = settings.Tunnel.ipv4_subnet
    tunnel_ipv6_subnet: str = settings.Tunnel.ipv6_subnet
    max_endpoints_per_slice: int = settings.Controller.max_endpoints_per_slice
    service_cidrs: tuple[str, ...] = ()
    resync_seconds: float = 60.0
    health_address: str = "0.0.0.0:8788"
    extra_addresses: tuple[str, ...] = ()  # --metrics-port: the same endpoints on another port
    log_level: str = "INFO"
    log_format: str = logs.TEXT
    notes: tuple[str, ...] = ()  # settings-file keys that change nothing (logged at start)


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(prog="egress-controller", description="EgressGateway cluster controller")
    p.add_argument("--config", default=env.get(settings.CONFIG_ENV),
                   help="installation settings YAML (env EGRESS_CONFIG; docs/settings.md); flags and variables win over it")
    p.add_argument("--health-port", type=int, help="serve the probes and metrics on 0.0.0.0:PORT (overrides --health-address)")
    p.add_argument("--metrics-port", type=int, help="serve the same endpoints on this port too")
    p.add_argument("--kubeconfig", default=env.get("KUBECONFIG"), help="default: $KUBECONFIG, else in-cluster")
    p.add_argument("--namespace", default=env.get("EGRESS_NAMESPACE", Config.namespace))
    p.add_argument("--identity", default=env.get("POD_NAME", f"{socket.gethostname()}_{os.getpid()}"),
                   help="leader-election holder identity")
    p.add_argument("--leader-lease", default=Config.leader_lease)
    p.add_argument("--leader-lease-seconds", type=int, help="env EGRESS_LEADER_LEASE_SECONDS, default 15")
    p.add_argument("--leader-renew-deadline", type=float,
                   help="seconds the leader may go without renewing before it stops acting as leader; shorter than "
                        "the lease (env EGRESS_LEADER_RENEW_DEADLINE, default two thirds of the lease)")
    p.add_argument("--agent-lease-prefix", default=Config.agent_lease_prefix)
    p.add_argument("--agent-lease-grace", type=float,
                   help="seconds an agent Lease may be late before its node's EIPs move (env EGRESS_AGENT_LEASE_GRACE, default 0)")
    p.add_argument("--agent-stale-fraction", type=float,
                   help="when more than this fraction of live agents stop renewing together, hold their EIPs "
                        "(the control plane is the likely laggard); 1 disables the hold (env EGRESS_AGENT_STALE_FRACTION, default 0.5)")
    p.add_argument("--agent-stale-hold", type=float,
                   help="seconds such agents are held alive before their EIPs move anyway (env EGRESS_AGENT_STALE_HOLD, default 10)")
    p.add_argument("--tunnel-ipv4-subnet", help="env EGRESS_TUNNEL_IPV4_SUBNET, file tunnelIPv4Subnet/tunnelIpv4Subnet")
    p.add_argument("--tunnel-ipv6-subnet", help="env EGRESS_TUNNEL_IPV6_SUBNET, file tunnelIPv6Subnet/tunnelIpv6Subnet")
    p.add_argument("--max-endpoints-per-slice", type=int,
                   help="env EGRESS_MAX_ENDPOINTS_PER_SLICE, file maxEndpointsPerSlice/maxNumberEndpointPerSlice")
    p.add_argument("--service-cidr", action="append", default=[],
                   help="service CIDR to report when the API has no ServiceCIDR objects (repeatable)")
    p.add_argument("--resync-seconds", type=float, help="env EGRESS_RESYNC_SECONDS, default 60")
    p.add_argument("--health-address", default=env.get("EGRESS_HEALTH_ADDRESS", Config.health_address),
                   help="host:port serving /healthz, /readyz and /metrics")
    logs.add_arguments(p)
    a = p.parse_args(argv)
    try:
        installed = settings.load(a.config)
        config = _layered(a, env, installed)
        log_level, log_format = logs.resolve(a.log_level, a.log_format, env)
    except ValueError as exc:  # SettingsError included: the message names the key or variable
        p.error(str(exc))
    if not 1 <= config.max_endpoints_per_slice <= limits.ENDPOINTS_PER_SLICE:
        p.error(f"--max-endpoints-per-slice must be between 1 and {limits.ENDPOINTS_PER_SLICE} (the CRD's maxItems),"
                f" got {config.max_endpoints_per_slice}")
    if not 0 <= config.agent_stale_fraction <= 1:
        p.error(f"--agent-stale-fraction must be between 0 and 1, got {config.agent_stale_fraction}")
    if config.agent_stale_hold < 0:
        p.error(f"--agent-stale-hold must not be negative, got {config.agent_stale_hold}")
    if config.leader_lease_seconds < 1:
        p.error(f"--leader-lease-seconds must be at least 1, got {config.leader_lease_seconds}")
    if not config.leader_renew_deadline:
        config = replace(config, leader_renew_deadline=config.leader_lease_seconds * 2 / 3)
    if not 0 < config.leader_renew_deadline < config.leader_lease_seconds:
        p.error(f"--leader-renew-deadline ({config.leader_renew_deadline}) must be positive and shorter than "
                f"--leader-lease-seconds ({config.leader_lease_seconds})")
    return replace(config, log_level=log_level, log_format=log_format, notes=installed.notes)


def _layered(a: argparse.Namespace, env: Mapping[str, str], installed: settings.Settings) -> Config:
    """Each setting from its flag, else its variable, else the file, else the default."""
    def tier(flag: T | None, variable: str, parse: Callable[[str], T], configured: T) -> T:
        return settings.layered(flag, env, variable, parse, configured)

    families, tunnel = installed.families, installed.tunnel
    # A family the installation turns off gets no tunnel addresses (unless a flag or variable says otherwise).
    v4_subnet = "" if families.ipv4 is False else tunnel.ipv4_subnet
    v6_subnet = "" if families.ipv6 is False else tunnel.ipv6_subnet
    return Config(
        kubeconfig=a.kubeconfig, namespace=a.namespace, identity=a.identity, leader_lease=a.leader_lease,
        leader_lease_seconds=tier(a.leader_lease_seconds, "EGRESS_LEADER_LEASE_SECONDS", settings.parse_int, Config.leader_lease_seconds),
        leader_renew_deadline=tier(a.leader_renew_deadline, "EGRESS_LEADER_RENEW_DEADLINE", settings.parse_float,
                                   Config.leader_renew_deadline),
        agent_lease_prefix=a.agent_lease_prefix,
        agent_lease_grace=tier(a.agent_lease_grace, "EGRESS_AGENT_LEASE_GRACE", settings.parse_float, Config.agent_lease_grace),
        agent_stale_fraction=tier(a.agent_stale_fraction, "EGRESS_AGENT_STALE_FRACTION", settings.parse_float, Config.agent_stale_fraction),
        agent_stale_hold=tier(a.agent_stale_hold, "EGRESS_AGENT_STALE_HOLD", settings.parse_float, Config.agent_stale_hold),
        tunnel_ipv4_subnet=tier(a.tunnel_ipv4_subnet, "EGRESS_TUNNEL_IPV4_SUBNET", str, v4_subnet),
        tunnel_ipv6_subnet=tier(a.tunnel_ipv6_subnet, "EGRESS_TUNNEL_IPV6_SUBNET", str, v6_subnet),
        max_endpoints_per_slice=tier(a.max_endpoints_per_slice, "EGRESS_MAX_ENDPOINTS_PER_SLICE", settings.parse_int,
                                     installed.controller.max_endpoints_per_slice),
        service_cidrs=tuple(a.service_cidr),
        resync_seconds=tier(a.resync_seconds, "EGRESS_RESYNC_SECONDS", settings.parse_float, Config.resync_seconds),
        health_address=f"0.0.0.0:{a.health_port}" if a.health_port else a.health_address,
        extra_addresses=(f"0.0.0.0:{a.metrics_port}",) if a.metrics_port else (),
    )
