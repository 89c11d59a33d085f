"""CIDR list checks shared by destSubnet, podSubnet and extraCidr."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from egress_cni.api.errors import FieldError, join
from egress_cni.api.pools import IPPool
from webhook.admission import Denial
from webhook.config import WebhookConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Subnets:
    networks: tuple[Network, ...]
    denials: tuple[Denial, ...]


def parse_subnets(entries: Sequence[str], path: str, rule: str, config: WebhookConfig, *, allow_bare_ip: bool) -> Subnets:
    """Parse CIDRs strictly: host bits set is an error whose message carries the corrected CIDR.

    A bare IP is a host route (/32 or /128) where `allow_bare_ip`, else the message suggests the
    CIDR to write. A family the installation has not enabled is refused.
    """
    nets: list[Network] = []
    denials: list[Denial] = []
    for i, entry in enumerate(entries):
        where = join(path, i)
        text = entry.strip()
        if "/" not in text:
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                denials.append(Denial(rule, where, entry, "is not a CIDR; expected e.g. 10.6.0.0/16 or fd00::/64"))
                continue
            if not allow_bare_ip:
                host = 32 if ip.version == 4 else 128
                denials.append(Denial(rule, where, entry, f"is an address, not a CIDR; write {ip}/{host} for a single host"))
                continue
            net: Network = ipaddress.ip_network(text)
        else:
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                denials.append(Denial(rule, where, entry, "is not a CIDR; expected e.g. 10.6.0.0/16 or fd00::/64"))
                continue
            if str(ipaddress.ip_interface(text).ip) != str(net.network_address):
                denials.append(Denial(rule, where, entry, f"has host bits set; did you mean {net}?"))
                continue
        if not config.family_enabled(net.version):
            denials.append(Denial("family-not-enabled", where, entry,
                                  f"is IPv{net.version}, which this installation has not enabled (EGRESS_ENABLE_IPV{net.version}=false); "
                                  f"use IPv{10 - net.version} subnets"))
            continue
        nets.append(net)
    return Subnets(tuple(nets), tuple(denials))


@functools.lru_cache(maxsize=4096)
def cached_pool(entries: tuple[str, ...], version: int) -> IPPool | None:
    """A gateway pool parsed once per distinct spec rather than once per review (None: unparsable)."""
    try:
        return IPPool.parse(entries, version)
    except FieldError:
        return None


@dataclass(frozen=True)
class Span:
    """A CIDR as an integer interval: overlap tests without ipaddress objects on the hot path."""

    version: int
    first: int
    last: int
    text: str


@functools.lru_cache(maxsize=16384)
def spans(entries: tuple[str, ...]) -> tuple[Span, ...]:
    """Parsable CIDR/IP entries as spans (unparsable ones are skipped: validation reports them).

    Cached by the entries themselves, so the policies in the cache are parsed once, not per review.
    """
    out = []
    for entry in entries:
        try:
            net = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            continue
        out.append(Span(net.version, int(net.network_address), int(net.broadcast_address), str(net)))
    return tuple(out)


def any_overlap(a: Sequence[Span], b: Sequence[Span]) -> tuple[Span, Span] | None:
    """The first overlapping pair (same family) of two span lists, if any."""
    for x in a:
        for y in b:
            if x.version == y.version and x.first <= y.last and y.first <= x.last:
                return x, y
    return None
