"""The node's dataplane as plain, comparable data, and the diff between two of them.

`Dataplane` is what `compute.desired_dataplane` returns and what `apply.read_actual` reads back from
the kernel; `diff(desired, actual)` is the `Plan` the apply layer executes (adds before removes).
Everything here is pure and frozen, so golden tests and the bench compare values, not call logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import TypeVar

IPV4, IPV6 = 4, 6
TABLES = ("raw", "mangle", "nat", "filter")
DECIDING = (("mangle", "PREROUTING"), ("filter", "FORWARD"))  # the policies' first-match chains, written together


@dataclass(frozen=True, order=True)
class VxlanLink:
    name: str
    vni: int
    port: int
    parent: str
    local: str  # parent's underlay IP (the VTEP source)
    mac: str
    mtu: int
    up: bool = True  # administratively up (read back: a link set down differs, so the apply sets it up)


@dataclass(frozen=True, order=True)
class Address:
    dev: str
    cidr: str  # "172.31.0.3/32"
    eip: bool = False  # an EIP claimed on the parent link (owned through IFA_PROTO, announced on add)


@dataclass(frozen=True, order=True)
class Route:
    family: int
    table: int
    dst: str  # "default"
    via: str
    dev: str


@dataclass(frozen=True, order=True)
class Rule:
    family: int
    priority: int
    fwmark: int
    table: int  # 0 with `unreachable`
    unreachable: bool = False  # no lookup: the packet is refused (a steered packet whose table has no route)


@dataclass(frozen=True, order=True)
class Neighbour:
    family: int
    dev: str
    ip: str
    mac: str


@dataclass(frozen=True, order=True)
class Fdb:
    dev: str
    mac: str
    dst: str  # peer's underlay IP


@dataclass(frozen=True, order=True)
class IPSet:
    name: str
    family: int
    members: frozenset[str] = frozenset()


@dataclass(frozen=True, order=True)
class Chain:
    """One chain we own, written whole; `hook` is the built-in chain that jumps to it."""

    family: int
    table: str
    name: str
    hook: str
    rules: tuple[str, ...] = ()  # rule specs without "-A <chain>", each carrying its egw comment

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.family, self.table, self.name)


@dataclass(frozen=True, order=True)
class Sysctl:
    path: str  # relative to /proc/sys, e.g. "net/ipv4/conf/egress.vxlan/rp_filter"
    value: str


@dataclass(frozen=True)
class Dataplane:
    link: VxlanLink | None = None
    addresses: frozenset[Address] = frozenset()
    routes: frozenset[Route] = frozenset()
    rules: frozenset[Rule] = frozenset()
    neighbours: frozenset[Neighbour] = frozenset()
    fdb: frozenset[Fdb] = frozenset()
    ipsets: frozenset[IPSet] = frozenset()
    chains: frozenset[Chain] = frozenset()
    sysctls: frozenset[Sysctl] = frozenset()
    jumps_ok: frozenset[tuple[int, str, str]] = frozenset()  # chain keys whose jump sits at position 1

    @property
    def eips(self) -> frozenset[str]:
        return frozenset(a.cidr.split("/")[0] for a in self.addresses if a.eip)


T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """What to change; `empty` after a successful apply (apply twice = empty plan)."""

    link: VxlanLink | None = None  # create or replace
    delete_link: bool = False
    add_addresses: tuple[Address, ...] = ()
    del_addresses: tuple[Address, ...] = ()
    add_routes: tuple[Route, ...] = ()
    del_routes: tuple[Route, ...] = ()
    add_rules: tuple[Rule, ...] = ()
    del_rules: tuple[Rule, ...] = ()
    add_neighbours: tuple[Neighbour, ...] = ()
    del_neighbours: tuple[Neighbour, ...] = ()
    add_fdb: tuple[Fdb, ...] = ()
    del_fdb: tuple[Fdb, ...] = ()
    create_ipsets: tuple[IPSet, ...] = ()  # new sets with all members
    add_members: tuple[tuple[str, str], ...] = ()  # (set, member)
    del_members: tuple[tuple[str, str], ...] = ()
    destroy_ipsets: tuple[str, ...] = ()
    write_chains: tuple[Chain, ...] = ()  # rewritten whole (and their jump re-asserted)
    drop_chains: tuple[Chain, ...] = ()
    sysctls: tuple[Sysctl, ...] = ()
    prune: bool = field(default=True, compare=False)

    @property
    def empty(self) -> bool:
        return all(not getattr(self, f.name) for f in fields(self) if f.name != "prune")

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "prune" and value:
                out[f.name] = len(value) if isinstance(value, tuple) else 1
        return out


def _added(desired: Iterable[T], actual: Iterable[T]) -> tuple[T, ...]:
    have = set(actual)
    return tuple(sorted((x for x in set(desired) if x not in have), key=repr))


_TAG = re.compile(r"""--comment "?(egw:[0-9a-f]{10}:[^"\s]*)"?""")


def rule_tag(rule: str) -> str:
    """The ownership comment of a rule; a rule without one is foreign and forces a rewrite."""
    m = _TAG.search(rule)
    return m.group(1) if m else "?" + rule


def fingerprint(chain: Chain) -> tuple[str, ...]:
    """Chains compare by their rules' hash comments, immune to how iptables-save normalises specs."""
    return tuple(rule_tag(r) for r in chain.rules)


def diff(desired: Dataplane, actual: Dataplane, *, prune: bool = True, together: bool = False) -> Plan:
    """The changes that turn `actual` into `desired`. With prune=False nothing is removed
    (used until every source has synced, so a partial view never deletes live state). With
    `together`, a family's DECIDING chains are written together or not at all (the nftables
    engine's decision cache numbers the filter chain's slots after the mangle chain's:
    dataplane/nftcache.py)."""

    def removed(d: Iterable[T], a: Iterable[T]) -> tuple[T, ...]:
        return _added(a, d) if prune else ()

    link_changed = desired.link is not None and desired.link != actual.link
    have_sets = {s.name: s for s in actual.ipsets}
    want_sets = {s.name: s for s in desired.ipsets}
    create = tuple(s for n, s in sorted(want_sets.items()) if n not in have_sets or have_sets[n].family != s.family)
    recreated = {s.name for s in create}
    add_members, del_members = [], []
    for name, want in sorted(want_sets.items()):
        have = have_sets.get(name)
        if have is None or name in recreated:
            continue
        add_members += [(name, m) for m in sorted(want.members - have.members)]
        if prune:
            del_members += [(name, m) for m in sorted(have.members - want.members)]
    destroy = tuple(sorted(n for n in have_sets if n not in want_sets)) if prune else ()

    have_chains = {c.key: fingerprint(c) for c in actual.chains}
    # before every source has synced an existing chain is left alone: rewriting it from a partial
    # view would remove rules just as surely as a delete
    write = tuple(sorted(
        c for c in desired.chains
        if (have_chains.get(c.key) != fingerprint(c) or c.key not in actual.jumps_ok)
        and (prune or c.key not in have_chains)
    ))
    paired = {c.family for c in write if (c.table, c.hook) in DECIDING} if together else set()
    write = tuple(sorted({*write, *(c for c in desired.chains if c.family in paired and (c.table, c.hook) in DECIDING
                                    and (prune or c.key not in have_chains))}))
    want_keys = {c.key for c in desired.chains}
    drop = tuple(sorted(c for c in actual.chains if c.key not in want_keys)) if prune else ()
    # after recreating the link every address/neighbour/fdb entry/route on it is gone: add them all again
    gone = desired.link.name if link_changed and actual.link is not None and desired.link else None

    def kept(items: Iterable[T]) -> list[T]:
        return [x for x in items if getattr(x, "dev", None) != gone]

    return Plan(
        link=desired.link if link_changed else None,
        delete_link=prune and desired.link is None and actual.link is not None,
        add_addresses=_added(desired.addresses, kept(actual.addresses)),
        del_addresses=removed(desired.addresses, kept(actual.addresses)),
        add_routes=_added(desired.routes, kept(actual.routes)),
        del_routes=removed(desired.routes, kept(actual.routes)),
        add_rules=_added(desired.rules, actual.rules),
        del_rules=removed(desired.rules, actual.rules),
        add_neighbours=_added(desired.neighbours, kept(actual.neighbours)),
        del_neighbours=removed(desired.neighbours, kept(actual.neighbours)),
        add_fdb=_added(desired.fdb, kept(actual.fdb)),
        del_fdb=removed(desired.fdb, kept(actual.fdb)),
        create_ipsets=create,
        add_members=tuple(add_members),
        del_members=tuple(del_members),
        destroy_ipsets=destroy,
        write_chains=write,
        drop_chains=drop,
        sysctls=_added(desired.sysctls, actual.sysctls),
        prune=prune,
    )
