"""EgressTunnel addresses per node (pure): tunnel IPv4/IPv6, MAC and mark.

Values already recorded in EgressTunnels are kept (so a controller restart changes nothing);
a value that is malformed, outside the configured range or held by another node is replaced.
New values are the lowest free ones: deterministic, so two controllers agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from egress_cni.api.model import TunnelStatus
from egress_cni.api.pools import IPPool, IPRange, pool_of

MARK_FIRST = 0x26000001
MARK_LAST = 0x26FFFFFE


@dataclass(frozen=True)
class TunnelAddress:
    ipv4: str
    ipv6: str
    mac: str
    mark: str


def tunnel_mac(node: str) -> str:
    """The reference's MAC: "66:" + the first 5 bytes of sha1(node + "egress") (locally administered)."""
    digest = hashlib.sha1((node + "egress").encode()).digest()[:5]
    return "66:" + ":".join(f"{b:02x}" for b in digest)


def subnet_pool(cidr: str, version: int) -> IPPool:
    """Usable tunnel addresses of a subnet: never the first (network) or the last (broadcast)."""
    if not cidr:
        return IPPool(version)
    pool = IPPool.parse([cidr], version, "tunnel subnet")
    if version == 6 and pool:  # IPPool.parse already drops both ends of IPv4 CIDRs up to /30
        ends = (pool.ranges[0].first, pool.ranges[-1].last)
        pool = pool.difference(IPPool.of(version, [IPRange(v, v, version) for v in ends]))
    return pool


def _our_mark(status: TunnelStatus) -> int | None:
    """The tunnel's mark if it is one of the range we hand out."""
    value = status.fwmark
    return value if value is not None and MARK_FIRST <= value <= MARK_LAST else None


def plan_tunnels(nodes: Iterable[str], existing: Mapping[str, TunnelStatus], v4_subnet: str, v6_subnet: str) -> dict[str, TunnelAddress]:
    """The tunnel addresses every node should have."""
    names = sorted(set(nodes))
    v4_pool, v6_pool = subnet_pool(v4_subnet, 4), subnet_pool(v6_subnet, 6)
    kept: dict[str, dict[str, str]] = {n: {} for n in names}
    taken4: set[str] = set()
    taken6: set[str] = set()
    marks: set[int] = set()
    for name in names:  # first pass: keep what is valid and unique, in name order
        status = existing.get(name)
        if status is None:
            continue
        if status.ipv4 and _member(v4_pool, status.ipv4) and status.ipv4 not in taken4:
            kept[name]["ipv4"] = status.ipv4
            taken4.add(status.ipv4)
        if status.ipv6 and _member(v6_pool, status.ipv6) and status.ipv6 not in taken6:
            kept[name]["ipv6"] = status.ipv6
            taken6.add(status.ipv6)
        mark = _our_mark(status)
        if mark is not None and mark not in marks:
            kept[name]["mark"] = f"{mark:#010x}"
            marks.add(mark)
    used4, used6 = pool_of(taken4, 4), pool_of(taken6, 6)
    next_mark = MARK_FIRST
    plan: dict[str, TunnelAddress] = {}
    for name in names:  # second pass: fill the gaps with the lowest free values
        values = kept[name]
        if "ipv4" not in values and v4_pool:
            free = v4_pool.first_free(used4)
            values["ipv4"] = str(free) if free else ""
            used4 = used4.union(pool_of([values["ipv4"]], 4)) if free else used4
        if "ipv6" not in values and v6_pool:
            free = v6_pool.first_free(used6)
            values["ipv6"] = str(free) if free else ""
            used6 = used6.union(pool_of([values["ipv6"]], 6)) if free else used6
        if "mark" not in values:
            while next_mark in marks:
                next_mark += 1
            marks.add(next_mark)
            values["mark"] = f"{next_mark:#010x}"
        plan[name] = TunnelAddress(values.get("ipv4", ""), values.get("ipv6", ""), tunnel_mac(name), values["mark"])
    return plan


def _member(pool: IPPool, ip: str) -> bool:
    try:
        return pool.contains(ip)
    except ValueError:
        return False


READY, INIT, HEARTBEAT_TIMEOUT, NODE_NOT_READY = "Ready", "Init", "HeartbeatTimeout", "NodeNotReady"
HEARTBEAT_REFRESH_SECONDS = 30.0  # lastHeartbeatTime is rewritten at most this often while the phase holds


def tunnel_phase(current: str, agent_reported: bool, node_ready: bool, gateway_agent: bool, agent_alive: bool) -> str:
    """EgressTunnel `status.phase` from node health (upstream's words): NodeNotReady for a NotReady
    node, HeartbeatTimeout for a gateway node whose agent neither renews its Lease nor is seen alive
    by a peer, else Ready once the agent reported its tunnel (Init before that). Only gateway agents
    hold a Lease: a worker's phase follows its Node."""
    if not node_ready:
        return NODE_NOT_READY
    if gateway_agent and not agent_alive:
        return HEARTBEAT_TIMEOUT
    if current in (NODE_NOT_READY, HEARTBEAT_TIMEOUT, ""):
        return READY if agent_reported else INIT
    return current
