"""CIDR list checks shared by destSubnet, podSubnet and extraCidr, on the model's parsed values.

The model parses these lists leniently (`api.meta.LENIENT`) and remembers how each entry was
written; here the installation's stricter rules turn that into denials that quote the original
text. Entries that do not parse at all were already refused by the model (see `schema_denial`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from egress_cni.api.errors import FieldError, join
from egress_cni.api.net import BITS, Cidr
from webhook.admission import Denial
from webhook.config import WebhookConfig

# A schema error at one of these paths is reported under the rule of the check it stands for.
_RULES_BY_PATH = (
    ("spec.destSubnet", "policy-dest-subnet"),
    ("spec.appliedTo.podSubnet", "policy-pod-subnet"),
    ("spec.egressIP.ipv", "policy-eip-syntax"),
    ("spec.ippools.ipv4DefaultEIP", "gateway-default-eip"),
    ("spec.ippools.ipv6DefaultEIP", "gateway-default-eip"),
    ("spec.ippools.ipv", "gateway-pool-syntax"),
    ("spec.extraCidr", "clusterinfo-extra-cidr"),
)


def schema_denial(default_rule: str, exc: FieldError) -> Denial:
    """The denial for an object the model cannot parse, under the rule its field belongs to."""
    rule = next((r for prefix, r in _RULES_BY_PATH if exc.path.startswith(prefix)), default_rule)
    return Denial(rule, exc.path, exc.value, exc.message)


def check_subnets(cidrs: Sequence[Cidr], path: str, rule: str, config: WebhookConfig, *, allow_bare_ip: bool) -> list[Denial]:
    """Host bits set is accepted with a warning naming the CIDR that is used (upstream's own YAML
    writes `192.168.1.1/24`, and every component reads the normalised network). A bare IP is a host
    route (/32 or /128) where `allow_bare_ip`, else the message suggests the CIDR to write. A family
    the installation has not enabled is refused."""
    denials: list[Denial] = []
    for i, cidr in enumerate(cidrs):
        where = join(path, i)
        if cidr.bare and not allow_bare_ip:
            denials.append(Denial(rule, where, cidr.given,
                                  f"is an address, not a CIDR; write {cidr.network}/{BITS[cidr.family]} for a single host"))
        elif cidr.normalised:
            denials.append(Denial(rule, where, cidr.given, f"has host bits set; it is used as {cidr}", warning=True))
            if not config.family_enabled(cidr.family):
                denials.append(_family_denial(where, cidr))
        elif not config.family_enabled(cidr.family):
            denials.append(_family_denial(where, cidr))
    return denials


def _family_denial(where: str, cidr: Cidr) -> Denial:
    return Denial("family-not-enabled", where, cidr.given,
                  f"is IPv{cidr.family}, which this installation has not enabled (EGRESS_ENABLE_IPV{cidr.family}=false); "
                  f"use IPv{10 - cidr.family} subnets")


@dataclass(frozen=True)
class Span:
    """A CIDR as an integer interval: overlap tests without parsing on the hot path."""

    version: int
    first: int
    last: int
    text: str


@functools.lru_cache(maxsize=1 << 16)
def spans(cidrs: tuple[Cidr, ...], family: int | None = None) -> tuple[Span, ...]:
    """The CIDRs (of `family` only, when given) as spans; cached: every review walks the same lists."""
    return tuple(Span(c.family, c.first, c.last, str(c)) for c in cidrs if family is None or c.family == family)


_PAIRWISE = 64  # up to this many pairs, comparing each is cheaper than sorting for a sweep


def any_overlap(a: Sequence[Span], b: Sequence[Span]) -> tuple[Span, Span] | None:
    """An overlapping pair (same family) of two span lists, if any. Short lists (the usual 1-4 CIDRs)
    are compared pair by pair; long ones in one sweep over both lists sorted by start,
    O((n + m) log(n + m)) rather than comparing every pair (lists may hold thousands)."""
    if len(a) * len(b) <= _PAIRWISE:
        for x in a:
            for y in b:
                if x.version == y.version and x.first <= y.last and y.first <= x.last:
                    return x, y
        return None
    events = sorted([(x.version, x.first, 0, x) for x in a] + [(y.version, y.first, 1, y) for y in b],
                    key=lambda e: (e[0], e[1], e[2]))
    reach: list[Span | None] = [None, None]  # per side: the span reaching furthest so far (this family)
    family = -1
    for version, first, side, span in events:
        if version != family:
            family, reach = version, [None, None]
        other = reach[1 - side]
        if other is not None and other.last >= first:
            return (span, other) if side == 0 else (other, span)
        mine = reach[side]
        if mine is None or span.last > mine.last:
            reach[side] = span
    return None
